//! Packed BCD helpers.
//!
//! DL/T 645-2007 carries numbers as packed BCD, least significant byte first
//! (clause 7.1: every multi-byte field is sent low byte first). Signed items
//! use the top bit of the most significant byte as the sign (clause 6.4.2,
//! "最高位表示方向"), so their magnitude has one bit less.

/// The value of one packed BCD byte, or `None` when a nibble is over 9.
#[inline]
pub fn from_bcd(b: u8) -> Option<u8> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    if hi > 9 || lo > 9 {
        None
    } else {
        Some(hi * 10 + lo)
    }
}

/// One packed BCD byte for `v` (0..=99); `None` above 99.
#[inline]
pub fn to_bcd(v: u8) -> Option<u8> {
    if v > 99 {
        None
    } else {
        Some(((v / 10) << 4) | (v % 10))
    }
}

/// True when every nibble of `bytes` is a decimal digit.
#[inline]
pub fn is_bcd(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| from_bcd(b).is_some())
}

/// Unsigned integer from BCD bytes, least significant byte first.
pub fn decode_unsigned_le(bytes: &[u8]) -> Option<u64> {
    // 19 digits fit in u64; DL/T 645 items are at most 8 bytes of digits.
    if bytes.len() > 9 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in bytes.iter().rev() {
        v = v * 100 + u64::from(from_bcd(b)?);
    }
    Some(v)
}

/// Signed integer from BCD bytes, least significant byte first, sign in the
/// top bit of the last (most significant) byte.
pub fn decode_signed_le(bytes: &[u8]) -> Option<i64> {
    let (&msb, rest) = bytes.split_last()?;
    let negative = msb & 0x80 != 0;
    let mut v: i64 = i64::from(from_bcd(msb & 0x7F)?);
    for &b in rest.iter().rev() {
        v = v * 100 + i64::from(from_bcd(b)?);
    }
    Some(if negative { -v } else { v })
}

/// Largest magnitude that fits `len` bytes (signed: the top bit is the sign,
/// so the leading digit can only reach 7).
pub fn max_magnitude(len: usize, signed: bool) -> u64 {
    if len == 0 {
        return 0;
    }
    let all = 10u64.pow(2 * len as u32) - 1;
    if signed {
        // 7 in the top digit, 9s below it.
        all - 2 * 10u64.pow(2 * len as u32 - 1)
    } else {
        all
    }
}

/// Write `v` as `out.len()` BCD bytes, least significant first; `None` when it does not fit.
pub fn encode_unsigned_le(mut v: u64, out: &mut [u8]) -> Option<()> {
    for slot in out.iter_mut() {
        *slot = to_bcd((v % 100) as u8)?;
        v /= 100;
    }
    if v == 0 {
        Some(())
    } else {
        None
    }
}

/// Write `v` as signed BCD (sign in the top bit of the last byte); `None` when it does not fit.
pub fn encode_signed_le(v: i64, out: &mut [u8]) -> Option<()> {
    let mag = v.unsigned_abs();
    if out.is_empty() || mag > max_magnitude(out.len(), true) {
        return None;
    }
    encode_unsigned_le(mag, out)?;
    if v < 0 {
        *out.last_mut()? |= 0x80;
    }
    Some(())
}

/// A calendar time as DL/T 645 carries it: two-digit years (20YY), no zone
/// (meters keep local standard time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

fn is_leap(year: u16) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Days in `month` of `year`; 0 for a month outside 1..=12.
pub fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Day of the week, 0 = Sunday (the WW byte of 04000101 uses the same numbering).
pub fn weekday(year: u16, month: u8, day: u8) -> u8 {
    // Sakamoto's method.
    const T: [u16; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
    let y = if month < 3 { year - 1 } else { year };
    let m = usize::from(month.clamp(1, 12)) - 1;
    ((y + y / 4 - y / 100 + y / 400 + T[m] + u16::from(day)) % 7) as u8
}

impl DateTime {
    /// Checked constructor; the error names the first field out of range.
    pub fn new(
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
    ) -> Result<Self, String> {
        if !(2000..=2099).contains(&year) {
            return Err(format!(
                "year: expected 2000..=2099 (sent as two digits), got {year}"
            ));
        }
        if !(1..=12).contains(&month) {
            return Err(format!("month: expected 1..=12, got {month}"));
        }
        let dim = days_in_month(year, month);
        if day < 1 || day > dim {
            return Err(format!(
                "day: expected 1..={dim} for {year}-{month:02}, got {day}"
            ));
        }
        if hour > 23 {
            return Err(format!("hour: expected 0..=23, got {hour}"));
        }
        if minute > 59 {
            return Err(format!("minute: expected 0..=59, got {minute}"));
        }
        if second > 59 {
            return Err(format!("second: expected 0..=59, got {second}"));
        }
        Ok(Self {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }

    /// `ss mm hh DD MM YY`, the wire order of 08 time sync and the 1C expiry.
    pub fn to_bcd_ssmmhhddmmyy(&self) -> [u8; 6] {
        [
            to_bcd_unchecked(self.second),
            to_bcd_unchecked(self.minute),
            to_bcd_unchecked(self.hour),
            to_bcd_unchecked(self.day),
            to_bcd_unchecked(self.month),
            to_bcd_unchecked((self.year % 100) as u8),
        ]
    }

    /// Parse `ss mm hh DD MM YY`; `None` when not BCD or not a real time.
    pub fn from_bcd_ssmmhhddmmyy(b: &[u8]) -> Option<Self> {
        if b.len() != 6 {
            return None;
        }
        let v: Vec<u8> = b.iter().map(|&x| from_bcd(x)).collect::<Option<_>>()?;
        Self::new(2000 + u16::from(v[5]), v[4], v[3], v[2], v[1], v[0]).ok()
    }

    /// `YYYY-MM-DDTHH:MM:SS`.
    pub fn iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[inline]
fn to_bcd_unchecked(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_round_trip() {
        for v in 0..=99u8 {
            assert_eq!(from_bcd(to_bcd(v).unwrap()), Some(v));
        }
        assert_eq!(to_bcd(100), None);
        assert_eq!(from_bcd(0x1A), None);
        assert_eq!(from_bcd(0xA1), None);
    }

    #[test]
    fn unsigned_le() {
        assert_eq!(decode_unsigned_le(&[0x26, 0x00, 0x00, 0x00]), Some(26));
        assert_eq!(decode_unsigned_le(&[0x56, 0x22]), Some(2256));
        assert_eq!(decode_unsigned_le(&[0xFF, 0xFF]), None);
        let mut out = [0u8; 3];
        encode_unsigned_le(123456, &mut out).unwrap();
        assert_eq!(out, [0x56, 0x34, 0x12]);
        assert!(encode_unsigned_le(1_000_000, &mut out).is_none());
    }

    #[test]
    fn signed_le() {
        assert_eq!(decode_signed_le(&[0x99, 0x49, 0x80]), Some(-4999));
        assert_eq!(decode_signed_le(&[0x99, 0x49, 0x00]), Some(4999));
        let mut out = [0u8; 3];
        encode_signed_le(-4999, &mut out).unwrap();
        assert_eq!(out, [0x99, 0x49, 0x80]);
        assert_eq!(max_magnitude(3, true), 799_999);
        assert_eq!(max_magnitude(2, false), 9999);
        assert!(encode_signed_le(800_000, &mut out).is_none());
        encode_signed_le(799_999, &mut out).unwrap();
        assert_eq!(decode_signed_le(&out), Some(799_999));
    }

    #[test]
    fn datetime() {
        let t = DateTime::new(2018, 5, 12, 15, 41, 24).unwrap();
        let b = t.to_bcd_ssmmhhddmmyy();
        assert_eq!(b, [0x24, 0x41, 0x15, 0x12, 0x05, 0x18]);
        assert_eq!(DateTime::from_bcd_ssmmhhddmmyy(&b), Some(t));
        assert_eq!(t.iso(), "2018-05-12T15:41:24");
        assert!(DateTime::new(2019, 2, 29, 0, 0, 0)
            .unwrap_err()
            .starts_with("day:"));
        assert!(DateTime::new(2020, 2, 29, 0, 0, 0).is_ok());
        assert_eq!(weekday(2016, 1, 11), 1);
        assert_eq!(weekday(2024, 3, 3), 0);
    }
}
