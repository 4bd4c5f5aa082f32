//! Modbus RTU: CRC-16/MODBUS, framing, inter-character timing and a streaming
//! deframer.
//!
//! RTU marks frame ends by 3.5 characters of silence, which a sans-I/O parser
//! never sees. The deframer therefore finds frame ends from the function code
//! and the length fields, and uses the CRC as the arbiter: a candidate whose
//! CRC fails costs exactly one byte, and scanning resumes at the next byte, so
//! a good frame behind garbage is always found.

use std::fmt;

/// Largest RTU ADU: address + 253-byte PDU + CRC.
pub const MAX_ADU: usize = 256;
/// Smallest RTU ADU: address + function + CRC.
pub const MIN_ADU: usize = 4;

/// Bad argument; the message names the field and the allowed range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgError {}

const fn crc_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC_TABLE: [u16; 256] = crc_table();

/// CRC-16/MODBUS: poly 0xA001 (0x8005 reflected), init 0xFFFF, no final xor.
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0xFFFF, |crc, &b| {
        (crc >> 8) ^ CRC_TABLE[((crc ^ b as u16) & 0xFF) as usize]
    })
}

/// Append the CRC (low byte first) to an ADU without CRC.
pub fn frame(adu_without_crc: &[u8]) -> Result<Vec<u8>, ArgError> {
    let n = adu_without_crc.len();
    if !(MIN_ADU - 2..=MAX_ADU - 2).contains(&n) {
        return Err(ArgError(format!(
            "adu_without_crc must be {}..{} bytes (address, function, data), got {n}",
            MIN_ADU - 2,
            MAX_ADU - 2
        )));
    }
    let mut out = Vec::with_capacity(n + 2);
    out.extend_from_slice(adu_without_crc);
    out.extend_from_slice(&crc16(adu_without_crc).to_le_bytes());
    Ok(out)
}

/// True when the last two bytes are the CRC of the rest.
pub fn check(frame: &[u8]) -> bool {
    if frame.len() < MIN_ADU {
        return false;
    }
    let (body, crc) = frame.split_at(frame.len() - 2);
    crc16(body).to_le_bytes() == [crc[0], crc[1]]
}

/// (t1.5, t3.5) in seconds. Above 19200 baud the spec fixes them at 750 µs
/// and 1750 µs, because per-character timing would be too short for UARTs and
/// operating systems to honour.
pub fn timing(baud: u32, bits_per_char: u32) -> Result<(f64, f64), ArgError> {
    if !(50..=10_000_000).contains(&baud) {
        return Err(ArgError(format!("baud must be 50..10000000, got {baud}")));
    }
    if !(10..=12).contains(&bits_per_char) {
        return Err(ArgError(format!(
            "bits_per_char must be 10..12 (start + 8 data + parity + stop bits), got {bits_per_char}"
        )));
    }
    if baud > 19_200 {
        return Ok((750e-6, 1750e-6));
    }
    let char_s = bits_per_char as f64 / baud as f64;
    Ok((1.5 * char_s, 3.5 * char_s))
}

/// Which side of the conversation the deframer listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Requests from a master (what a slave hears).
    Request,
    /// Replies from a slave (what a master hears).
    Response,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, ArgError> {
        match s {
            "request" => Ok(Role::Request),
            "response" => Ok(Role::Response),
            _ => Err(ArgError(format!(
                "role must be \"request\" or \"response\", got {s:?}"
            ))),
        }
    }
}

/// What the header at the start of a buffer says about the frame length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Len {
    /// Not a plausible frame start: skip one byte.
    Invalid,
    /// Plausible so far; more bytes needed to decide or complete.
    Need,
    /// A frame of this many bytes (CRC included), if the CRC agrees.
    Frame(usize),
}

fn be16(b: &[u8], i: usize) -> usize {
    ((b[i] as usize) << 8) | b[i + 1] as usize
}

/// A frame whose total length is `fixed + b[at]`, accepted when the byte count
/// passes `ok`.
fn byte_count(b: &[u8], at: usize, fixed: usize, ok: impl Fn(usize) -> bool) -> Len {
    match b.get(at) {
        None => Len::Need,
        Some(&n) if ok(n as usize) && fixed + n as usize <= MAX_ADU => {
            Len::Frame(fixed + n as usize)
        }
        Some(_) => Len::Invalid,
    }
}

/// A fixed-size frame whose header fields are checked once `check_len` bytes
/// are present; plausibility checks let garbage be rejected without waiting
/// for a whole candidate frame to arrive.
fn fixed(b: &[u8], len: usize, check_len: usize, ok: impl Fn(&[u8]) -> bool) -> Len {
    if b.len() < check_len {
        Len::Need
    } else if ok(b) {
        Len::Frame(len)
    } else {
        Len::Invalid
    }
}

const EXCEPTION_CODES: [u8; 9] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x08, 0x0A, 0x0B];

fn response_len(b: &[u8]) -> Len {
    let fc = b[1];
    if fc & 0x80 != 0 {
        // Any function, known to us or not, may be answered with an exception.
        return fixed(b, 5, 3, |b| EXCEPTION_CODES.contains(&b[2]));
    }
    match fc {
        // read coils / discrete inputs: byte count 1..250 (2000 bits)
        0x01 | 0x02 => byte_count(b, 2, 5, |n| (1..=250).contains(&n)),
        // read registers, read/write multiple: whole registers, ≤ 125
        0x03 | 0x04 | 0x17 => {
            byte_count(b, 2, 5, |n| (2..=250).contains(&n) && n.is_multiple_of(2))
        }
        0x05 => fixed(b, 8, 6, |b| {
            matches!((b[4], b[5]), (0xFF, 0x00) | (0x00, 0x00))
        }),
        0x06 | 0x08 | 0x0B => Len::Frame(8),
        0x0F => fixed(b, 8, 6, |b| (1..=0x07B0).contains(&be16(b, 4))),
        0x10 => fixed(b, 8, 6, |b| (1..=0x007B).contains(&be16(b, 4))),
        0x07 => Len::Frame(5),
        // comm event log: status, event count, message count, 0..64 events
        0x0C => byte_count(b, 2, 5, |n| (6..=70).contains(&n)),
        0x11 => byte_count(b, 2, 5, |n| n >= 1),
        0x14 => byte_count(b, 2, 5, |n| (0x07..=0xF5).contains(&n)),
        0x15 => byte_count(b, 2, 5, |n| (0x09..=0xFB).contains(&n)),
        0x16 => Len::Frame(10),
        // read FIFO queue: 16-bit byte count, FIFO count + ≤ 31 registers
        0x18 => {
            if b.len() < 4 {
                Len::Need
            } else {
                let n = be16(b, 2);
                if (2..=64).contains(&n) && n.is_multiple_of(2) {
                    Len::Frame(6 + n)
                } else {
                    Len::Invalid
                }
            }
        }
        _ => Len::Invalid,
    }
}

fn request_len(b: &[u8]) -> Len {
    match b[1] {
        0x01 | 0x02 => fixed(b, 8, 6, |b| (1..=2000).contains(&be16(b, 4))),
        0x03 | 0x04 => fixed(b, 8, 6, |b| (1..=125).contains(&be16(b, 4))),
        0x05 => fixed(b, 8, 6, |b| {
            matches!((b[4], b[5]), (0xFF, 0x00) | (0x00, 0x00))
        }),
        0x06 | 0x08 => Len::Frame(8),
        0x07 | 0x0B | 0x0C | 0x11 => Len::Frame(4),
        0x0F => {
            if b.len() < 7 {
                return Len::Need;
            }
            let qty = be16(b, 4);
            let n = b[6] as usize;
            if (1..=0x07B0).contains(&qty) && n == qty.div_ceil(8) {
                Len::Frame(9 + n)
            } else {
                Len::Invalid
            }
        }
        0x10 => {
            if b.len() < 7 {
                return Len::Need;
            }
            let qty = be16(b, 4);
            let n = b[6] as usize;
            if (1..=0x7B).contains(&qty) && n == 2 * qty {
                Len::Frame(9 + n)
            } else {
                Len::Invalid
            }
        }
        0x17 => {
            if b.len() < 11 {
                return Len::Need;
            }
            let read_qty = be16(b, 4);
            let write_qty = be16(b, 8);
            let n = b[10] as usize;
            if (1..=0x7D).contains(&read_qty)
                && (1..=0x79).contains(&write_qty)
                && n == 2 * write_qty
            {
                Len::Frame(13 + n)
            } else {
                Len::Invalid
            }
        }
        0x14 => byte_count(b, 2, 5, |n| (0x07..=0xF5).contains(&n)),
        0x15 => byte_count(b, 2, 5, |n| (0x09..=0xFB).contains(&n)),
        0x16 => Len::Frame(10),
        0x18 => Len::Frame(6),
        _ => Len::Invalid,
    }
}

fn frame_len(role: Role, b: &[u8]) -> Len {
    if b.len() < 2 {
        return Len::Need;
    }
    match role {
        Role::Request => request_len(b),
        Role::Response => response_len(b),
    }
}

/// Streaming RTU deframer: feed any chunks, get every complete frame whose
/// CRC checks, in order.
#[derive(Debug, Clone)]
pub struct Deframer {
    role: Role,
    buf: Vec<u8>,
    max_buffer: usize,
    frames: u64,
    discarded: u64,
    crc_errors: u64,
}

impl Deframer {
    pub fn new(role: Role, max_buffer: usize) -> Result<Deframer, ArgError> {
        if !(MAX_ADU..=1 << 20).contains(&max_buffer) {
            return Err(ArgError(format!(
                "max_buffer must be {MAX_ADU}..{} bytes (room for one whole frame), got {max_buffer}",
                1 << 20
            )));
        }
        Ok(Deframer {
            role,
            buf: Vec::with_capacity(MAX_ADU),
            max_buffer,
            frames: 0,
            discarded: 0,
            crc_errors: 0,
        })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Append `chunk` and return the frames it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.feed_with(chunk, |f| out.push(f.to_vec()));
        out
    }

    /// Like [`feed`](Self::feed) without allocating a vector per frame.
    pub fn feed_with(&mut self, chunk: &[u8], mut emit: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(chunk);
        let mut i = 0;
        // Below this offset a candidate that runs past the end of the buffer
        // is garbage: a good frame has been found ending there.
        let mut garbage_until = 0;
        while i < self.buf.len() {
            let rest = &self.buf[i..];
            match frame_len(self.role, rest) {
                Len::Invalid => {
                    i += 1;
                    self.discarded += 1;
                }
                Len::Frame(n) if n <= rest.len() => {
                    if check(&rest[..n]) {
                        emit(&rest[..n]);
                        self.frames += 1;
                        i += n;
                    } else {
                        self.crc_errors += 1;
                        self.discarded += 1;
                        i += 1;
                    }
                }
                Len::Frame(_) | Len::Need if i < garbage_until => {
                    i += 1;
                    self.discarded += 1;
                }
                Len::Frame(_) | Len::Need => {
                    // Half duplex: the last bytes heard are the reply. If they
                    // already form a good frame, a plausible-looking header in
                    // the garbage before it must not hold that frame back until
                    // the bus owner times out and resets. The bytes in between
                    // are rescanned, so a good frame there is not lost either.
                    match rescue_tail(self.role, rest) {
                        Some(skip) => garbage_until = i + skip,
                        None => break,
                    }
                }
            }
        }
        self.buf.drain(..i);
        if self.buf.len() > self.max_buffer {
            let excess = self.buf.len() - self.max_buffer;
            self.buf.drain(..excess);
            self.discarded += excess as u64;
        }
    }

    /// Drop any partial frame (e.g. after a response timeout); counted as discarded.
    pub fn reset(&mut self) {
        self.discarded += self.buf.len() as u64;
        self.buf.clear();
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    pub fn discarded_bytes(&self) -> u64 {
        self.discarded
    }

    pub fn crc_errors(&self) -> u64 {
        self.crc_errors
    }

    /// Bytes held waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Offset of the first good frame that ends exactly at the end of `b`, if any.
///
/// Only frames ending at the buffer end are accepted: a CRC matches random
/// bytes once in 65536, so accepting any embedded frame would split long
/// frames still arriving; requiring the exact end keeps that to the rare
/// case where the header, the length and the CRC all line up.
fn rescue_tail(role: Role, b: &[u8]) -> Option<usize> {
    let start = b.len().saturating_sub(MAX_ADU).max(1);
    (start..=b.len().saturating_sub(MIN_ADU)).find(|&s| {
        let tail = &b[s..];
        frame_len(role, tail) == Len::Frame(tail.len()) && check(tail)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    const REQUESTS: [&str; 8] = [
        "11 03 00 6b 00 03 76 87",
        "11 01 00 13 00 25 0e 84",
        "11 02 00 c4 00 16 ba a9",
        "11 04 00 08 00 01 b2 98",
        "01 03 00 00 00 0a c5 cd",
        "11 05 00 ac ff 00 4e 8b",
        "11 06 00 01 00 03 9a 9b",
        "11 10 00 01 00 02 04 00 0a 01 02 c6 f0",
    ];
    const RESPONSES: [&str; 6] = [
        "11 03 06 ae 41 56 52 43 40 49 ad",
        "11 02 03 ac db 35 20 18",
        "11 05 00 ac ff 00 4e 8b",
        "11 06 00 01 00 03 9a 9b",
        "11 10 00 01 00 02 12 98",
        "01 83 02 c0 f1",
    ];

    #[test]
    fn crc_check_value() {
        assert_eq!(crc16(b"123456789"), 0x4B37);
        assert_eq!(crc16(b""), 0xFFFF);
    }

    #[test]
    fn vectors_check_and_reframe() {
        for v in REQUESTS.iter().chain(RESPONSES.iter()) {
            let f = hex(v);
            assert!(check(&f), "{v}");
            assert_eq!(frame(&f[..f.len() - 2]).unwrap(), f);
            let mut bad = f.clone();
            bad[2] ^= 1;
            assert!(!check(&bad));
        }
        assert!(!check(&[0x01, 0x02, 0x03]));
        assert!(frame(&[1]).is_err());
        assert!(frame(&[0; 255]).is_err());
    }

    #[test]
    fn timing_values() {
        let (t15, t35) = timing(9600, 11).unwrap();
        assert!((t15 - 1.71875e-3).abs() < 1e-9);
        assert!((t35 - 4.0104e-3).abs() < 1e-6);
        assert_eq!(timing(38400, 11).unwrap(), (750e-6, 1750e-6));
        assert!(timing(19200, 11).unwrap().1 > 1.75e-3);
        assert!(timing(0, 11).is_err());
        let e = timing(9600, 8).unwrap_err();
        assert!(e.0.contains("bits_per_char") && e.0.contains("10..12"));
    }

    fn split_all(role: Role, vectors: &[&str]) {
        let frames: Vec<Vec<u8>> = vectors.iter().map(|v| hex(v)).collect();
        let stream: Vec<u8> = frames.concat();
        // one shot
        let mut d = Deframer::new(role, 512).unwrap();
        assert_eq!(d.feed(&stream), frames);
        assert_eq!(d.discarded_bytes(), 0);
        // byte by byte
        let mut d = Deframer::new(role, 512).unwrap();
        let got: Vec<Vec<u8>> = stream.iter().flat_map(|b| d.feed(&[*b])).collect();
        assert_eq!(got, frames);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn splits_requests_and_responses() {
        split_all(Role::Request, &REQUESTS);
        split_all(Role::Response, &RESPONSES);
    }

    #[test]
    fn garbage_before_frame_is_skipped() {
        let good = hex("11 03 06 ae 41 56 52 43 40 49 ad");
        let mut d = Deframer::new(Role::Response, 512).unwrap();
        // "01 03 F0": a plausible header announcing 240 data bytes.
        let mut stream = vec![0x00, 0x01, 0x03, 0xF0, 0x55];
        stream.extend_from_slice(&good);
        assert_eq!(d.feed(&stream), vec![good.clone()]);
        assert_eq!(d.discarded_bytes(), 5);
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.frames(), 1);
    }

    #[test]
    fn frame_between_bogus_header_and_tail_frame_is_kept() {
        let a = hex("11 06 00 01 00 03 9a 9b");
        let b = hex("01 83 02 c0 f1");
        let mut stream = vec![0x01, 0x03, 0xFA];
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&[0x42, 0x42]);
        stream.extend_from_slice(&b);
        let mut d = Deframer::new(Role::Response, 512).unwrap();
        assert_eq!(d.feed(&stream), vec![a, b]);
        assert_eq!(d.discarded_bytes(), 5);
    }

    #[test]
    fn crc_error_costs_one_byte() {
        let good = hex("11 06 00 01 00 03 9a 9b");
        let mut bad = good.clone();
        bad[7] ^= 0xFF;
        let mut d = Deframer::new(Role::Response, 512).unwrap();
        let mut stream = bad.clone();
        stream.extend_from_slice(&good);
        assert_eq!(d.feed(&stream), vec![good]);
        assert!(d.crc_errors() >= 1);
        assert_eq!(d.discarded_bytes(), 8);
    }

    #[test]
    fn unknown_function_resyncs() {
        let good = hex("01 83 02 c0 f1");
        let mut d = Deframer::new(Role::Response, 512).unwrap();
        let mut stream = vec![0x01, 0x42, 0x42];
        stream.extend_from_slice(&good);
        assert_eq!(d.feed(&stream), vec![good]);
        assert_eq!(d.discarded_bytes(), 3);
    }

    #[test]
    fn partial_kept_and_reset_counts() {
        let mut d = Deframer::new(Role::Request, 512).unwrap();
        assert!(d.feed(&hex("11 03 00 6b")).is_empty());
        assert_eq!(d.buffered(), 4);
        d.reset();
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.discarded_bytes(), 4);
    }

    #[test]
    fn read_write_multiple() {
        // 0x17: read 6 at 3, write 3 at 14 (example from the spec).
        let req = frame(&hex("11 17 00 03 00 06 00 0e 00 03 06 00 ff 00 ff 00 ff")).unwrap();
        let resp = frame(&hex("11 17 0c 00 fe 0a cd 00 01 00 03 00 0d 00 ff")).unwrap();
        let mut d = Deframer::new(Role::Request, 512).unwrap();
        assert_eq!(d.feed(&req), vec![req.clone()]);
        let mut d = Deframer::new(Role::Response, 512).unwrap();
        assert_eq!(d.feed(&resp), vec![resp.clone()]);
    }

    #[test]
    fn buffer_bounded() {
        assert!(Deframer::new(Role::Response, 10).is_err());
        let mut d = Deframer::new(Role::Response, 256).unwrap();
        for _ in 0..100 {
            d.feed(&[0x01, 0x03, 0xFA]);
            assert!(d.buffered() <= 256);
        }
    }

    #[test]
    fn role_parse() {
        assert_eq!(Role::parse("request").unwrap(), Role::Request);
        assert!(Role::parse("master").unwrap_err().0.contains("role"));
    }
}
