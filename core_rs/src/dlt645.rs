//! DL/T 645-2007 frame codec and streaming deframer (sans-I/O, no PyO3).
//!
//! Frame (clause 6.1): `[FE×0..4] 68 A0..A5 68 C L DATA CS 16`. The address
//! is sent low byte first, DATA carries +0x33 per byte on the wire (so that a
//! run of zeros never looks like idle line), CS is the byte sum mod 256 from
//! the first 0x68 to the last data byte; the FE wake-up preamble is outside it.

use std::fmt;

use crate::bcd::{self, DateTime};

pub const START: u8 = 0x68;
pub const END: u8 = 0x16;
pub const PREAMBLE: u8 = 0xFE;
/// Data bytes are offset by 0x33 on the wire.
pub const DATA_OFFSET: u8 = 0x33;
/// Header (68 A×6 68 C L) + CS + 16.
pub const MIN_FRAME: usize = 12;
pub const MAX_DATA: usize = 255;
pub const MAX_FRAME: usize = MIN_FRAME + MAX_DATA;
pub const MAX_PREAMBLE: usize = 4;

/// Wire bytes of `999999999999`.
pub const BROADCAST: [u8; 6] = [0x99; 6];
/// Wire bytes of `AAAAAAAAAAAA`.
pub const WILDCARD: [u8; 6] = [0xAA; 6];
pub const WILDCARD_BYTE: u8 = 0xAA;

pub const FN_SECURITY: u8 = 0x03;
pub const FN_BROADCAST_TIME: u8 = 0x08;
pub const FN_READ: u8 = 0x11;
pub const FN_READ_FOLLOWUP: u8 = 0x12;
pub const FN_READ_ADDRESS: u8 = 0x13;
pub const FN_WRITE: u8 = 0x14;
pub const FN_WRITE_ADDRESS: u8 = 0x15;
pub const FN_FREEZE: u8 = 0x16;
pub const FN_CHANGE_BAUD: u8 = 0x17;
pub const FN_CHANGE_PASSWORD: u8 = 0x18;
pub const FN_DEMAND_RESET: u8 = 0x19;
pub const FN_METER_CLEAR: u8 = 0x1A;
pub const FN_EVENT_CLEAR: u8 = 0x1B;
pub const FN_CONTROL: u8 = 0x1C;
pub const FN_MULTI_OUTPUT: u8 = 0x1D;

/// Control code bits (clause 6.1.3).
pub const C_FROM_METER: u8 = 0x80;
pub const C_EXCEPTION: u8 = 0x40;
pub const C_FOLLOWUP: u8 = 0x20;
pub const C_FUNCTION: u8 = 0x1F;

pub const N1_TRIP: u8 = 0x1A;
pub const N1_CLOSE_ALLOWED: u8 = 0x1B;
pub const N1_DIRECT_CLOSE: u8 = 0x1C;
pub const N1_ALARM_ON: u8 = 0x2A;
pub const N1_ALARM_OFF: u8 = 0x2B;
pub const N1_KEEP_POWER_ON: u8 = 0x3A;
pub const N1_KEEP_POWER_OFF: u8 = 0x3B;

/// ERR byte of an exception reply (clause 6.4.2, table "错误信息字").
pub const ERR_BITS: [(u8, &str); 7] = [
    (0x01, "other"),
    (0x02, "no requested data"),
    (0x04, "password error or unauthorised"),
    (0x08, "baud rate cannot change"),
    (0x10, "too many time zones"),
    (0x20, "too many time periods"),
    (0x40, "too many tariffs"),
];

/// Baud rate → the one-bit feature word of function 17.
pub const BAUD_FEATURE: [(u32, u8); 5] = [
    (1200, 0x04),
    (2400, 0x08),
    (4800, 0x10),
    (9600, 0x20),
    (19200, 0x40),
];

/// Everything that can go wrong; the binding maps each variant to one
/// Python exception class. Messages name the field and the allowed range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Bad argument to an encoder.
    Encode(String),
    /// Not a frame (no start byte, second 0x68 missing).
    Frame(String),
    Length(String),
    Checksum {
        expected: u8,
        found: u8,
    },
    End {
        found: u8,
    },
    Address(String),
    /// A request to the broadcast or a wildcard address for a function
    /// that may not be sent there (its own exception: the bytes are fine,
    /// the addressing is not).
    AddressNotAllowed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Encode(m)
            | Error::Frame(m)
            | Error::Length(m)
            | Error::Address(m)
            | Error::AddressNotAllowed(m) => f.write_str(m),
            Error::Checksum { expected, found } => write!(
                f,
                "cs: expected 0x{expected:02X} (sum mod 256 from the first 0x68 to the last data byte), got 0x{found:02X}"
            ),
            Error::End { found } => write!(f, "end: expected 0x16, got 0x{found:02X}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn enc(msg: String) -> Error {
    Error::Encode(msg)
}

// ---------------------------------------------------------------------------
// Addresses and names
// ---------------------------------------------------------------------------

/// One address byte is valid when it is BCD or the AA wildcard.
#[inline]
fn address_byte_ok(b: u8) -> bool {
    b == WILDCARD_BYTE || bcd::from_bcd(b).is_some()
}

/// `"000000000161"` → wire bytes `61 01 00 00 00 00`. Pairs of `A` are
/// wildcard bytes (clause 6.1.2: 缩位寻址 uses AAH in the high bytes).
pub fn parse_address(s: &str) -> Result<[u8; 6]> {
    let bad = || {
        Error::Address(format!(
            "address: expected 12 decimal digits (AA pairs allowed as wildcards), got '{s}'"
        ))
    };
    let b = s.as_bytes();
    if b.len() != 12 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let byte = match (pair[0], pair[1]) {
            (h @ b'0'..=b'9', l @ b'0'..=b'9') => ((h - b'0') << 4) | (l - b'0'),
            (b'A' | b'a', b'A' | b'a') => WILDCARD_BYTE,
            _ => return Err(bad()),
        };
        out[5 - i] = byte;
    }
    Ok(out)
}

/// Wire bytes → the 12-character string printed on the meter.
pub fn format_address(a: &[u8; 6]) -> String {
    let mut s = String::with_capacity(12);
    for &b in a.iter().rev() {
        if b == WILDCARD_BYTE {
            s.push_str("AA");
        } else {
            s.push(char::from(b'0' + (b >> 4)));
            s.push(char::from(b'0' + (b & 0x0F)));
        }
    }
    s
}

fn check_address_bytes(a: &[u8; 6]) -> Result<()> {
    for (i, &b) in a.iter().enumerate() {
        if !address_byte_ok(b) {
            return Err(Error::Address(format!(
                "address: byte A{i} = 0x{b:02X} is not BCD (00..99) or the AA wildcard"
            )));
        }
    }
    Ok(())
}

/// Functions a request may send to the broadcast address 999999999999:
/// broadcast time sync and freeze. No meter answers them.
pub const BROADCAST_FUNCTIONS: [u8; 2] = [FN_BROADCAST_TIME, FN_FREEZE];
/// Functions a request may send to a wildcard (AA) address: read address
/// and write address, which work point to point with one meter
/// on the line; anything else would reach every meter the wildcard matches.
pub const WILDCARD_FUNCTIONS: [u8; 2] = [FN_READ_ADDRESS, FN_WRITE_ADDRESS];

/// Refuse a request (D7 = 0) to the broadcast or a wildcard address unless its
/// function is legal there. Replies (D7 = 1) carry the meter's own address and
/// pass. A read, write or 1C sent to 999999999999 or AA… would act on every
/// meter on the line (or collide their replies), so it is never encoded.
pub fn check_request_address(address: &[u8; 6], control: u8) -> Result<()> {
    if control & C_FROM_METER != 0 {
        return Ok(());
    }
    let function = control & C_FUNCTION;
    if *address == BROADCAST && !BROADCAST_FUNCTIONS.contains(&function) {
        return Err(Error::AddressNotAllowed(format!(
            "address: 999999999999 (broadcast) is only for 0x08 broadcast time sync and 0x16 freeze, got a 0x{function:02X} {} request; address one meter",
            function_name(function)
        )));
    }
    if address.contains(&WILDCARD_BYTE) && !WILDCARD_FUNCTIONS.contains(&function) {
        return Err(Error::AddressNotAllowed(format!(
            "address: AA wildcards ('{}') are only for 0x13 read address and 0x15 write address, got a 0x{function:02X} {} request; address one meter",
            format_address(address),
            function_name(function)
        )));
    }
    Ok(())
}

pub fn function_name(function: u8) -> &'static str {
    match function {
        FN_SECURITY => "security",
        FN_BROADCAST_TIME => "broadcast_time",
        FN_READ => "read",
        FN_READ_FOLLOWUP => "read_followup",
        FN_READ_ADDRESS => "read_address",
        FN_WRITE => "write",
        FN_WRITE_ADDRESS => "write_address",
        FN_FREEZE => "freeze",
        FN_CHANGE_BAUD => "change_baud",
        FN_CHANGE_PASSWORD => "change_password",
        FN_DEMAND_RESET => "demand_reset",
        FN_METER_CLEAR => "meter_clear",
        FN_EVENT_CLEAR => "event_clear",
        FN_CONTROL => "control",
        FN_MULTI_OUTPUT => "multi_output",
        _ => "unknown",
    }
}

pub fn is_known_function(function: u8) -> bool {
    function_name(function) != "unknown"
}

pub fn n1_name(n1: u8) -> &'static str {
    match n1 {
        N1_TRIP => "trip",
        N1_CLOSE_ALLOWED => "close_allowed",
        N1_DIRECT_CLOSE => "direct_close",
        N1_ALARM_ON => "alarm_on",
        N1_ALARM_OFF => "alarm_off",
        N1_KEEP_POWER_ON => "keep_power_on",
        N1_KEEP_POWER_OFF => "keep_power_off",
        _ => "unknown",
    }
}

pub fn n1_from_name(name: &str) -> Option<u8> {
    [
        N1_TRIP,
        N1_CLOSE_ALLOWED,
        N1_DIRECT_CLOSE,
        N1_ALARM_ON,
        N1_ALARM_OFF,
        N1_KEEP_POWER_ON,
        N1_KEEP_POWER_OFF,
    ]
    .into_iter()
    .find(|&n| n1_name(n) == name)
}

/// Names of the bits set in an ERR byte, low bit first; bit 7 is reserved.
pub fn error_names(err: u8) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = ERR_BITS
        .iter()
        .filter(|(bit, _)| err & bit != 0)
        .map(|&(_, n)| n)
        .collect();
    if err & 0x80 != 0 {
        v.push("reserved bit 7");
    }
    v
}

/// The ERR byte for a set of bit names (inverse of [`error_names`]).
pub fn error_bits<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<u8> {
    let mut err = 0u8;
    for name in names {
        let bit = ERR_BITS
            .iter()
            .find(|(_, n)| *n == name)
            .map(|&(b, _)| b)
            .ok_or_else(|| {
                let known: Vec<&str> = ERR_BITS.iter().map(|&(_, n)| n).collect();
                enc(format!(
                    "err: unknown bit name '{name}', expected one of {known:?}"
                ))
            })?;
        err |= bit;
    }
    Ok(err)
}

pub fn baud_feature(baud: u32) -> Result<u8> {
    BAUD_FEATURE
        .iter()
        .find(|(b, _)| *b == baud)
        .map(|&(_, f)| f)
        .ok_or_else(|| {
            enc(format!(
                "baud: expected one of 1200, 2400, 4800, 9600, 19200, got {baud}"
            ))
        })
}

pub fn baud_from_feature(feature: u8) -> Option<u32> {
    BAUD_FEATURE
        .iter()
        .find(|(_, f)| *f == feature)
        .map(|&(b, _)| b)
}

// ---------------------------------------------------------------------------
// Frame
// ---------------------------------------------------------------------------

/// One frame; `data` is plain (0x33 offset removed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub address: [u8; 6],
    pub control: u8,
    pub data: Vec<u8>,
}

impl Frame {
    /// A frame that is known to encode: checks the address bytes, the
    /// control code and the data length.
    pub fn new(address: [u8; 6], control: u8, data: Vec<u8>) -> Result<Self> {
        check_address_bytes(&address).map_err(|e| match e {
            Error::Address(m) => Error::Encode(m),
            other => other,
        })?;
        check_control(control)?;
        check_request_address(&address, control)?;
        check_data_len(data.len())?;
        Ok(Self {
            address,
            control,
            data,
        })
    }

    #[inline]
    pub fn function(&self) -> u8 {
        self.control & C_FUNCTION
    }
    #[inline]
    pub fn from_meter(&self) -> bool {
        self.control & C_FROM_METER != 0
    }
    #[inline]
    pub fn is_exception(&self) -> bool {
        self.control & C_EXCEPTION != 0
    }
    #[inline]
    pub fn has_followup(&self) -> bool {
        self.control & C_FOLLOWUP != 0
    }

    /// DI carried first in the data of read, follow-up and write frames.
    pub fn di(&self) -> Option<u32> {
        if self.is_exception() || self.data.len() < 4 {
            return None;
        }
        match self.function() {
            FN_READ | FN_READ_FOLLOWUP | FN_WRITE => Some(u32::from_le_bytes([
                self.data[0],
                self.data[1],
                self.data[2],
                self.data[3],
            ])),
            _ => None,
        }
    }

    pub fn error_code(&self) -> Option<u8> {
        if self.is_exception() {
            self.data.first().copied()
        } else {
            None
        }
    }

    /// Number of bytes `encode` produces without a preamble.
    #[inline]
    pub fn wire_len(&self) -> usize {
        MIN_FRAME + self.data.len()
    }

    /// Append the wire bytes to `out`. The frame must satisfy [`Frame::new`]'s checks.
    #[inline]
    pub fn encode_into(&self, preamble: usize, out: &mut Vec<u8>) {
        encode_parts_into(&self.address, self.control, &self.data, preamble, out);
    }

    /// Write the wire bytes into `out` (exactly `preamble + wire_len()` long).
    #[inline]
    pub fn write_to(&self, preamble: usize, out: &mut [u8]) {
        write_frame(&self.address, self.control, &self.data, preamble, out);
    }

    pub fn encode(&self, preamble: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(preamble + self.wire_len());
        self.encode_into(preamble, &mut out);
        out
    }
}

pub fn check_control(control: u8) -> Result<()> {
    let function = control & C_FUNCTION;
    if !is_known_function(function) {
        return Err(enc(format!(
            "control: function 0x{function:02X} (D4..D0 of 0x{control:02X}) is not a DL/T 645-2007 function; expected 03, 08 or 11..1D"
        )));
    }
    if control & C_EXCEPTION != 0 && control & C_FROM_METER == 0 {
        return Err(enc(format!(
            "control: 0x{control:02X} sets D6 (exception) without D7 (reply); exception replies are C | 0xC0"
        )));
    }
    Ok(())
}

pub fn check_data_len(n: usize) -> Result<()> {
    if n > MAX_DATA {
        Err(enc(format!(
            "data: expected at most 255 bytes (L is one byte), got {n}"
        )))
    } else {
        Ok(())
    }
}

pub fn check_preamble(n: usize) -> Result<()> {
    if n > MAX_PREAMBLE {
        Err(enc(format!(
            "preamble: expected 0..=4 bytes of 0xFE, got {n}"
        )))
    } else {
        Ok(())
    }
}

/// Write one frame without building a [`Frame`]: the caller has validated
/// the parts. Keeps the encoders allocation-free apart from `out`.
#[inline]
pub fn encode_parts_into(
    address: &[u8; 6],
    control: u8,
    data: &[u8],
    preamble: usize,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.resize(start + preamble + MIN_FRAME + data.len(), 0);
    write_frame(address, control, data, preamble, &mut out[start..]);
}

/// Write one frame into `out`, which is exactly `preamble + 12 + data.len()` long.
#[inline]
pub fn write_frame(address: &[u8; 6], control: u8, data: &[u8], preamble: usize, out: &mut [u8]) {
    debug_assert!(data.len() <= MAX_DATA);
    debug_assert_eq!(out.len(), preamble + MIN_FRAME + data.len());
    let (pre, f) = out.split_at_mut(preamble);
    pre.fill(PREAMBLE);
    f[0] = START;
    f[1..7].copy_from_slice(address);
    f[7] = START;
    f[8] = control;
    f[9] = data.len() as u8;
    let n = data.len();
    for (o, b) in f[10..10 + n].iter_mut().zip(data) {
        *o = b.wrapping_add(DATA_OFFSET);
    }
    f[10 + n] = checksum(&f[..10 + n]);
    f[11 + n] = END;
}

#[inline]
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

/// Encode with full argument checks.
pub fn encode(address: &[u8; 6], control: u8, data: &[u8], preamble: usize) -> Result<Vec<u8>> {
    check_address_bytes(address).map_err(|e| enc(e.to_string()))?;
    check_control(control)?;
    check_request_address(address, control)?;
    check_data_len(data.len())?;
    check_preamble(preamble)?;
    let mut out = Vec::with_capacity(preamble + MIN_FRAME + data.len());
    encode_parts_into(address, control, data, preamble, &mut out);
    Ok(out)
}

/// Decode exactly one frame: leading FE allowed, nothing after the 0x16.
pub fn decode(bytes: &[u8]) -> Result<Frame> {
    let skip = bytes.iter().take_while(|&&b| b == PREAMBLE).count();
    let f = &bytes[skip..];
    if f.len() < MIN_FRAME {
        return Err(Error::Length(format!(
            "length: a frame is at least 12 bytes from the first 0x68, got {}",
            f.len()
        )));
    }
    if f[0] != START {
        return Err(Error::Frame(format!(
            "start: expected 0x68 at offset {skip} (after {skip} FE), got 0x{:02X}",
            f[0]
        )));
    }
    if f[7] != START {
        return Err(Error::Frame(format!(
            "start: expected the second 0x68 at offset {}, got 0x{:02X}",
            skip + 7,
            f[7]
        )));
    }
    let l = usize::from(f[9]);
    let need = MIN_FRAME + l;
    if f.len() != need {
        return Err(Error::Length(format!(
            "length: L = {l} means {need} bytes from the first 0x68, got {}",
            f.len()
        )));
    }
    if f[need - 1] != END {
        return Err(Error::End { found: f[need - 1] });
    }
    let expected = checksum(&f[..need - 2]);
    if f[need - 2] != expected {
        return Err(Error::Checksum {
            expected,
            found: f[need - 2],
        });
    }
    let address: [u8; 6] = f[1..7].try_into().expect("six bytes");
    check_address_bytes(&address)?;
    Ok(frame_from_wire(f, l))
}

/// Build a frame from a verified wire slice starting at the first 0x68.
#[inline]
fn frame_from_wire(f: &[u8], l: usize) -> Frame {
    let mut address = [0u8; 6];
    address.copy_from_slice(&f[1..7]);
    Frame {
        address,
        control: f[8],
        data: f[10..10 + l]
            .iter()
            .map(|b| b.wrapping_sub(DATA_OFFSET))
            .collect(),
    }
}

// ---------------------------------------------------------------------------
// Request and reply builders (every function of DESIGN §5)
// ---------------------------------------------------------------------------

/// Hex digits, most significant first, to bytes least significant first
/// (passwords and operator codes are sent low byte first like every field).
pub fn parse_hex_le<const N: usize>(field: &str, s: &str) -> Result<[u8; N]> {
    let bad = || enc(format!("{field}: expected {} hex digits, got '{s}'", 2 * N));
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let txt = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[N - 1 - i] = u8::from_str_radix(txt, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Bytes least significant first → hex digits most significant first.
pub fn format_hex_le(b: &[u8]) -> String {
    b.iter().rev().map(|x| format!("{x:02X}")).collect()
}

pub fn read(address: [u8; 6], di: u32) -> Result<Frame> {
    Frame::new(address, FN_READ, di.to_le_bytes().to_vec())
}

/// 0x12: the DI plus the frame sequence number SEQ (clause 7.2.2).
pub fn read_followup(address: [u8; 6], di: u32, seq: u8) -> Result<Frame> {
    let mut data = di.to_le_bytes().to_vec();
    data.push(seq);
    Frame::new(address, FN_READ_FOLLOWUP, data)
}

/// 0x13 only works point to point, so the address is all wildcards.
pub fn read_address() -> Frame {
    Frame {
        address: WILDCARD,
        control: FN_READ_ADDRESS,
        data: Vec::new(),
    }
}

/// 0x14: DI, PA P0 P1 P2, C0..C3, value (clause 7.4).
pub fn write(
    address: [u8; 6],
    di: u32,
    password_level: u8,
    password: [u8; 3],
    operator: [u8; 4],
    value: &[u8],
) -> Result<Frame> {
    if value.len() > MAX_DATA - 12 {
        return Err(enc(format!(
            "value: expected at most 243 bytes (255 minus DI, password and operator), got {}",
            value.len()
        )));
    }
    let mut data = Vec::with_capacity(12 + value.len());
    data.extend_from_slice(&di.to_le_bytes());
    data.push(password_level);
    data.extend_from_slice(&password);
    data.extend_from_slice(&operator);
    data.extend_from_slice(value);
    Frame::new(address, FN_WRITE, data)
}

/// 0x08 broadcast time sync: `ss mm hh DD MM YY` to 999999999999; meters do not reply.
pub fn time_sync(when: DateTime) -> Frame {
    Frame {
        address: BROADCAST,
        control: FN_BROADCAST_TIME,
        data: when.to_bcd_ssmmhhddmmyy().to_vec(),
    }
}

/// Parse the `ss mm hh DD MM YY` payload of a time sync.
pub fn parse_time_sync(data: &[u8]) -> Result<DateTime> {
    DateTime::from_bcd_ssmmhhddmmyy(data).ok_or_else(|| {
        Error::Frame(format!(
            "data: expected 6 BCD bytes ss mm hh DD MM YY of a real time, got {}",
            hex(data)
        ))
    })
}

/// 0x16 freeze: `mm hh DD MM` in wire order, 99 = every (clause 7.6).
pub fn freeze(address: [u8; 6], pattern: &str) -> Result<Frame> {
    let bad = || {
        enc(format!(
            "pattern: expected 8 digits mmhhDDMM (mm 00..59, hh 00..23, DD 01..31, MM 01..12, 99 = every), got '{pattern}'"
        ))
    };
    let b = pattern.as_bytes();
    if b.len() != 8 || !b.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let ranges = [(0u8, 59u8), (0, 23), (1, 31), (1, 12)];
    let mut data = Vec::with_capacity(4);
    for (pair, (lo, hi)) in b.chunks_exact(2).zip(ranges) {
        let v = (pair[0] - b'0') * 10 + (pair[1] - b'0');
        if v != 99 && !(lo..=hi).contains(&v) {
            return Err(bad());
        }
        data.push(bcd::to_bcd(v).ok_or_else(bad)?);
    }
    Frame::new(address, FN_FREEZE, data)
}

/// 0x17 change baud: one feature-word byte with one bit set.
pub fn change_baud(address: [u8; 6], baud: u32) -> Result<Frame> {
    Frame::new(address, FN_CHANGE_BAUD, vec![baud_feature(baud)?])
}

/// The 16-byte payload of a 1C command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    pub password_level: u8,
    pub password: [u8; 3],
    pub operator: [u8; 4],
    pub n1: u8,
    pub n2: u8,
    pub valid_until: DateTime,
}

impl Control {
    pub fn to_data(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(16);
        d.push(self.password_level);
        d.extend_from_slice(&self.password);
        d.extend_from_slice(&self.operator);
        d.push(self.n1);
        d.push(self.n2);
        d.extend_from_slice(&self.valid_until.to_bcd_ssmmhhddmmyy());
        d
    }

    /// Parse `PA P0 P1 P2 | C0..C3 | N1 | N2 | ss mm hh DD MM YY`.
    pub fn parse(data: &[u8]) -> Result<Self> {
        if data.len() != 16 {
            return Err(Error::Length(format!(
                "data: a 1C control payload is 16 bytes, got {}",
                data.len()
            )));
        }
        let valid_until = DateTime::from_bcd_ssmmhhddmmyy(&data[10..16]).ok_or_else(|| {
            Error::Frame(format!(
                "valid_until: expected BCD ss mm hh DD MM YY of a real time, got {}",
                hex(&data[10..16])
            ))
        })?;
        Ok(Self {
            password_level: data[0],
            password: [data[1], data[2], data[3]],
            operator: [data[4], data[5], data[6], data[7]],
            n1: data[8],
            n2: data[9],
            valid_until,
        })
    }
}

/// 0x1C trip / close / alarm / keep-power with an expiry time.
pub fn control(address: [u8; 6], cmd: &Control) -> Result<Frame> {
    if n1_name(cmd.n1) == "unknown" {
        return Err(enc(format!(
            "n1: expected 0x1A trip, 0x1B close allowed, 0x1C direct close, 0x2A/0x2B alarm on/off or 0x3A/0x3B keep-power on/off, got 0x{:02X}",
            cmd.n1
        )));
    }
    Frame::new(address, FN_CONTROL, cmd.to_data())
}

fn check_reply_function(function: u8) -> Result<()> {
    if function & !C_FUNCTION != 0 || !is_known_function(function) {
        return Err(enc(format!(
            "function: expected a DL/T 645-2007 function code (03, 08, 11..1D), got 0x{function:02X}"
        )));
    }
    Ok(())
}

/// Normal reply: C = function | 0x80 (| 0x20 when more frames follow).
pub fn reply(address: [u8; 6], function: u8, data: &[u8], followup: bool) -> Result<Frame> {
    check_reply_function(function)?;
    let c = function | C_FROM_METER | if followup { C_FOLLOWUP } else { 0 };
    Frame::new(address, c, data.to_vec())
}

/// Exception reply: C = function | 0xC0, data = the ERR byte.
pub fn exception(address: [u8; 6], function: u8, err: u8) -> Result<Frame> {
    check_reply_function(function)?;
    Frame::new(address, function | C_FROM_METER | C_EXCEPTION, vec![err])
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// Streaming deframer
// ---------------------------------------------------------------------------

/// What the bytes at a candidate 0x68 are.
enum Candidate {
    Frame(usize),
    NeedMore,
    /// Not a frame; `checksum` says whether only the CS was wrong.
    Reject {
        checksum: bool,
    },
}

/// Judge the bytes starting at a 0x68. Address bytes and the second 0x68 are
/// checked as soon as they arrive, so a false start in noise is dropped
/// without waiting for L bytes that may never come.
#[inline]
fn candidate(s: &[u8]) -> Candidate {
    let have = s.len();
    let head = have.min(7);
    if !s[1..head].iter().all(|&b| address_byte_ok(b)) {
        return Candidate::Reject { checksum: false };
    }
    if have < 8 {
        return Candidate::NeedMore;
    }
    if s[7] != START {
        return Candidate::Reject { checksum: false };
    }
    if have < 10 {
        return Candidate::NeedMore;
    }
    let l = usize::from(s[9]);
    let total = MIN_FRAME + l;
    if have < total {
        return Candidate::NeedMore;
    }
    // End byte first: a false start in noise rarely has 0x16 in the right
    // place, and should not be counted as a checksum error.
    if s[total - 1] != END {
        return Candidate::Reject { checksum: false };
    }
    if checksum(&s[..total - 2]) != s[total - 2] {
        return Candidate::Reject { checksum: true };
    }
    Candidate::Frame(total)
}

/// Counters kept by a [`Deframer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeframerStats {
    pub frames: u64,
    /// Bytes that were not part of a frame; FE wake-up bytes are never counted.
    pub discarded_bytes: u64,
    pub checksum_errors: u64,
}

/// Scan `data`, push complete frames, return where the unresolved tail starts.
fn scan(data: &[u8], stats: &mut DeframerStats, out: &mut Vec<Frame>) -> usize {
    let mut i = 0;
    loop {
        let Some(p) = data[i..].iter().position(|&b| b == START) else {
            stats.discarded_bytes += count_non_fe(&data[i..]);
            return data.len();
        };
        stats.discarded_bytes += count_non_fe(&data[i..i + p]);
        let s = i + p;
        match candidate(&data[s..]) {
            Candidate::Frame(total) => {
                out.push(frame_from_wire(&data[s..], total - MIN_FRAME));
                stats.frames += 1;
                i = s + total;
            }
            Candidate::NeedMore => {
                // A truncated frame (bytes lost on the line) would otherwise
                // hold back a complete good frame behind it until L bytes
                // arrive. A complete valid frame inside the pending region
                // wins over the incomplete candidate.
                if complete_frame_within(&data[s + 1..]) {
                    stats.discarded_bytes += 1;
                    i = s + 1;
                    continue;
                }
                return s;
            }
            Candidate::Reject { checksum } => {
                // Drop only this 0x68: a good frame may start inside the
                // rejected region (a truncated frame followed by a good one).
                stats.checksum_errors += u64::from(checksum);
                stats.discarded_bytes += 1;
                i = s + 1;
            }
        }
    }
}

/// True when a complete, valid frame starts at some 0x68 in `d`.
fn complete_frame_within(d: &[u8]) -> bool {
    let mut j = 0;
    while let Some(p) = d[j..].iter().position(|&b| b == START) {
        if let Candidate::Frame(_) = candidate(&d[j + p..]) {
            return true;
        }
        j += p + 1;
    }
    false
}

#[inline]
fn count_non_fe(b: &[u8]) -> u64 {
    b.iter().filter(|&&x| x != PREAMBLE).count() as u64
}

/// Streaming deframer: feed any chunks, get every valid frame in order.
///
/// Rules: bytes before a 0x68 are skipped; a 0x68 whose header cannot be a
/// frame (non-BCD address byte, no second 0x68), whose end byte or CS is
/// wrong, is dropped alone and the scan resumes at the next byte, so a good
/// frame that starts inside a rejected region is still found. An incomplete
/// candidate is kept until its L bytes arrive, unless a complete valid frame
/// already starts inside it (a truncated frame must not hold back the reply
/// behind it until the next feed or a timeout).
///
/// The buffer only ever holds one unresolved candidate (< 267 bytes) between
/// feeds; `max_buffer` bounds the working copy while a feed is processed.
#[derive(Clone, Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    max_buffer: usize,
    stats: DeframerStats,
}

/// The smallest useful buffer: one maximal frame.
pub const MIN_BUFFER: usize = MAX_FRAME;

impl Deframer {
    pub fn new(max_buffer: usize) -> Result<Self> {
        if max_buffer < MIN_BUFFER {
            return Err(enc(format!(
                "max_buffer: expected at least {MIN_BUFFER} bytes (one maximal frame), got {max_buffer}"
            )));
        }
        Ok(Self {
            buf: Vec::with_capacity(max_buffer),
            max_buffer,
            stats: DeframerStats::default(),
        })
    }

    pub fn stats(&self) -> DeframerStats {
        self.stats
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forget a partial frame (e.g. after the inter-byte timeout).
    pub fn reset(&mut self) {
        self.stats.discarded_bytes += count_non_fe(&self.buf);
        self.buf.clear();
    }

    /// Feed bytes; complete frames are appended to `out` in stream order.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Frame>) {
        while !chunk.is_empty() {
            if self.buf.is_empty() {
                // Fast path: parse straight from the caller's bytes and keep
                // only the unresolved tail.
                let tail = scan(chunk, &mut self.stats, out);
                self.buf.extend_from_slice(&chunk[tail..]);
                return;
            }
            let take = chunk.len().min(self.max_buffer - self.buf.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            let tail = scan(&self.buf, &mut self.stats, out);
            self.buf.drain(..tail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|x| u8::from_str_radix(x, 16).unwrap())
            .collect()
    }

    const READ_RESP: &str = "68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8a 16";

    #[test]
    fn address_round_trip() {
        let a = parse_address("000000000161").unwrap();
        assert_eq!(a, [0x61, 0x01, 0, 0, 0, 0]);
        assert_eq!(format_address(&a), "000000000161");
        assert_eq!(parse_address("AAAAAAAAAAAA").unwrap(), WILDCARD);
        assert_eq!(format_address(&WILDCARD), "AAAAAAAAAAAA");
        let e = parse_address("12345").unwrap_err().to_string();
        assert_eq!(
            e,
            "address: expected 12 decimal digits (AA pairs allowed as wildcards), got '12345'"
        );
        assert!(parse_address("00000000016x").is_err());
        assert!(parse_address("A00000000161").is_err());
    }

    #[test]
    fn encode_decode_vectors() {
        let a = parse_address("000000000161").unwrap();
        let req = read(a, 0x0001_0000).unwrap();
        assert_eq!(
            req.encode(0),
            h("68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16")
        );
        assert_eq!(
            read_address().encode(4),
            h("fe fe fe fe 68 aa aa aa aa aa aa 68 13 00 df 16")
        );
        let f = decode(&h(READ_RESP)).unwrap();
        assert_eq!(f.control, 0x91);
        assert_eq!(f.di(), Some(0x0001_0000));
        assert_eq!(f.data, vec![0, 0, 1, 0, 0x26, 0, 0, 0]);
        assert_eq!(f.encode(0), h(READ_RESP));
    }

    #[test]
    fn control_vector() {
        let cmd = Control {
            password_level: 0,
            password: [0; 3],
            operator: [0; 4],
            n1: N1_TRIP,
            n2: 0,
            valid_until: DateTime::new(2018, 5, 12, 15, 41, 24).unwrap(),
        };
        let f = control(parse_address("111111111111").unwrap(), &cmd).unwrap();
        assert_eq!(
            f.encode(0),
            h("68 11 11 11 11 11 11 68 1c 10 33 33 33 33 33 33 33 33 4d 33 57 74 48 45 38 4b 55 16")
        );
        assert_eq!(Control::parse(&f.data).unwrap(), cmd);
    }

    #[test]
    fn decode_errors() {
        let good = h(READ_RESP);
        let mut bad_cs = good.clone();
        bad_cs[18] ^= 1;
        assert!(matches!(decode(&bad_cs), Err(Error::Checksum { .. })));
        let mut bad_end = good.clone();
        bad_end[19] = 0x17;
        assert!(matches!(decode(&bad_end), Err(Error::End { found: 0x17 })));
        assert!(matches!(decode(&good[..15]), Err(Error::Length(_))));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(Error::Length(_))));
        let mut bad_addr = good.clone();
        bad_addr[1] = 0x6A;
        let cs = checksum(&bad_addr[..18]);
        bad_addr[18] = cs;
        assert!(matches!(decode(&bad_addr), Err(Error::Address(_))));
        assert!(matches!(
            decode(&h("00 00 00 00 00 00 00 00 00 00 00 00")),
            Err(Error::Frame(_))
        ));
    }

    #[test]
    fn encode_errors() {
        let a = parse_address("000000000161").unwrap();
        assert!(encode(&a, 0x11, &[0; 256], 0)
            .unwrap_err()
            .to_string()
            .starts_with("data:"));
        assert!(encode(&a, 0x1F, &[], 0)
            .unwrap_err()
            .to_string()
            .starts_with("control:"));
        assert!(encode(&a, 0x51, &[], 0)
            .unwrap_err()
            .to_string()
            .starts_with("control:"));
        assert!(encode(&a, 0x11, &[], 5)
            .unwrap_err()
            .to_string()
            .starts_with("preamble:"));
        assert!(encode(&[0x1F, 0, 0, 0, 0, 0], 0x11, &[], 0).is_err());
    }

    #[test]
    fn broadcast_and_wildcard_only_where_legal() {
        let refused = |r: Result<Vec<u8>>| matches!(r, Err(Error::AddressNotAllowed(_)));
        let partial = parse_address("AAAAAAAA0161").unwrap();
        for function in [
            FN_READ,
            FN_READ_FOLLOWUP,
            FN_WRITE,
            FN_CONTROL,
            FN_CHANGE_BAUD,
        ] {
            assert!(
                refused(encode(&BROADCAST, function, &[0; 4], 0)),
                "{function:02X}"
            );
            assert!(
                refused(encode(&WILDCARD, function, &[0; 4], 0)),
                "{function:02X}"
            );
            assert!(
                refused(encode(&partial, function, &[0; 4], 0)),
                "{function:02X}"
            );
        }
        // the legal ones
        assert!(encode(&BROADCAST, FN_BROADCAST_TIME, &[0; 6], 0).is_ok());
        assert!(encode(&BROADCAST, FN_FREEZE, &[0x99; 4], 0).is_ok());
        assert!(encode(&WILDCARD, FN_READ_ADDRESS, &[], 0).is_ok());
        assert!(encode(&WILDCARD, FN_WRITE_ADDRESS, &[0x01; 6], 0).is_ok());
        // ...but not swapped: a time sync to AA, a read address to 99
        assert!(refused(encode(&WILDCARD, FN_BROADCAST_TIME, &[0; 6], 0)));
        assert!(refused(encode(&BROADCAST, FN_READ_ADDRESS, &[], 0)));
        // the builders: read and 1C to the broadcast address are refused
        assert!(matches!(
            read(BROADCAST, 0x0201_0100),
            Err(Error::AddressNotAllowed(_))
        ));
        assert!(matches!(
            read(WILDCARD, 0x0201_0100),
            Err(Error::AddressNotAllowed(_))
        ));
        let msg = read(BROADCAST, 0x0201_0100).unwrap_err().to_string();
        assert!(
            msg.starts_with("address: 999999999999 (broadcast) is only for"),
            "{msg}"
        );
        assert!(freeze(BROADCAST, "99999999").is_ok());
        assert_eq!(
            time_sync(DateTime::new(2024, 1, 2, 3, 4, 5).unwrap()).address,
            BROADCAST
        );
        // replies are the meter's: a reply from an AA-addressed read-address passes
        assert!(reply(WILDCARD, FN_READ, &[0; 4], false).is_ok());
        // decoding is not encoding: a received broadcast read still decodes
        let frame = Frame {
            address: BROADCAST,
            control: FN_READ,
            data: vec![0; 4],
        };
        assert_eq!(decode(&frame.encode(0)).unwrap(), frame);
    }

    #[test]
    fn deframer_split_noise_and_resync() {
        let good = h(READ_RESP);
        let mut stream = vec![0x00, 0x68, 0x16, 0xFE, 0xFE];
        stream.extend_from_slice(&good);
        // truncated frame followed by a good one
        stream.extend_from_slice(&good[..9]);
        stream.extend_from_slice(&[0xFE, 0xFE]);
        stream.extend_from_slice(&good);
        // bad checksum frame
        let mut bad = good.clone();
        bad[18] ^= 0xFF;
        stream.extend_from_slice(&bad);
        stream.extend_from_slice(&good);
        for chunk in 1..stream.len() {
            let mut d = Deframer::new(4096).unwrap();
            let mut out = Vec::new();
            for c in stream.chunks(chunk) {
                d.feed(c, &mut out);
            }
            assert_eq!(out.len(), 3, "chunk size {chunk}");
            assert!(out.iter().all(|f| f.encode(0) == good));
            assert_eq!(d.stats().checksum_errors, 1, "chunk size {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn deframer_keeps_partial_and_bounds_buffer() {
        let good = h(READ_RESP);
        let mut d = Deframer::new(MIN_BUFFER).unwrap();
        let mut out = Vec::new();
        d.feed(&good[..10], &mut out);
        assert!(out.is_empty());
        assert_eq!(d.buffered(), 10);
        d.feed(&good[10..], &mut out);
        assert_eq!(out.len(), 1);
        // a false header announcing 255 bytes, then lots of frames in one feed
        let mut big = h("68 11 11 11 11 11 11 68 11 ff");
        for _ in 0..100 {
            big.extend_from_slice(&good);
        }
        d.feed(&big, &mut out);
        assert_eq!(out.len(), 101);
        assert!(d.buffered() < MAX_FRAME);
        d.reset();
        assert_eq!(d.buffered(), 0);
        assert!(Deframer::new(100).is_err());
    }
}
