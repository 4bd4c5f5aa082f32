//! DL/T 645-2007 data identifiers (appendix A) and the value codec.
//!
//! A DI is written DI3 DI2 DI1 DI0 (`00010000`) and sent DI0 first. The
//! table is computed from the DI's bytes rather than stored, because the
//! energy and demand families are a product of kind × tariff × settlement.
//! `FF` in DI1 is a block read of every tariff (or phase) of the family.

use std::fmt;
use std::sync::OnceLock;

use crate::bcd::{self, DateTime};
use crate::dlt645::{format_address, parse_address};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Number,
    Date,
    Time,
    DateTime,
    Demand,
    Status,
    Address,
    Raw,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Number => "number",
            Kind::Date => "date",
            Kind::Time => "time",
            Kind::DateTime => "datetime",
            Kind::Demand => "demand",
            Kind::Status => "status",
            Kind::Address => "address",
            Kind::Raw => "raw",
        }
    }
}

/// One table entry.
#[derive(Clone, Debug, PartialEq)]
pub struct DiInfo {
    pub di: u32,
    pub name: String,
    pub unit: &'static str,
    pub decimals: u8,
    pub signed: bool,
    /// Bytes of one element.
    pub length: u8,
    /// Elements in the reply (>1 for block DIs).
    pub count: u8,
    pub kind: Kind,
}

impl DiInfo {
    fn number(
        di: u32,
        name: String,
        unit: &'static str,
        decimals: u8,
        signed: bool,
        length: u8,
    ) -> Self {
        Self {
            di,
            name,
            unit,
            decimals,
            signed,
            length,
            count: 1,
            kind: Kind::Number,
        }
    }

    fn other(di: u32, name: &str, kind: Kind, length: u8) -> Self {
        Self {
            di,
            name: name.to_string(),
            unit: "",
            decimals: 0,
            signed: false,
            length,
            count: 1,
            kind,
        }
    }

    fn block(mut self, count: u8) -> Self {
        self.count = count;
        self
    }

    pub fn is_block(&self) -> bool {
        (self.di >> 8) & 0xFF == 0xFF || (self.di & 0xFF) == 0xFF
    }

    /// `XXXXXX.XX`-style picture of one element, for messages.
    pub fn picture(&self) -> String {
        match self.kind {
            Kind::Number | Kind::Demand => {
                let digits = usize::from(if self.kind == Kind::Demand {
                    3
                } else {
                    self.length
                }) * 2;
                let d = usize::from(self.decimals);
                let int = "X".repeat(digits - d);
                if d == 0 {
                    int
                } else {
                    format!("{int}.{}", "X".repeat(d))
                }
            }
            Kind::Date => "WW DD MM YY".into(),
            Kind::Time => "ss mm hh".into(),
            Kind::DateTime => "ss mm hh WW DD MM YY".into(),
            Kind::Status => "16-bit word".into(),
            Kind::Address => "12 BCD digits".into(),
            Kind::Raw => "raw bytes".into(),
        }
    }
}

pub fn format_di(di: u32) -> String {
    format!("{di:08X}")
}

/// `"0201FF00"` (case-insensitive) → 0x0201FF00.
pub fn parse_di(s: &str) -> std::result::Result<u32, String> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(s, 16).map_err(|e| e.to_string())
    } else {
        Err(format!(
            "di: expected 8 hex digits DI3 DI2 DI1 DI0 such as '00010000', got '{s}'"
        ))
    }
}

const TARIFF: [&str; 5] = ["total", "T1", "T2", "T3", "T4"];
const PHASE: [&str; 4] = ["total", "phase A", "phase B", "phase C"];

/// Energy families DI2 = 00..0A: (name, unit, signed).
const ENERGY: [(&str, &str, bool); 11] = [
    ("combined active energy", "kWh", true),
    ("forward active energy", "kWh", false),
    ("reverse active energy", "kWh", false),
    ("combined reactive 1 energy", "kvarh", true),
    ("combined reactive 2 energy", "kvarh", true),
    ("quadrant I reactive energy", "kvarh", false),
    ("quadrant II reactive energy", "kvarh", false),
    ("quadrant III reactive energy", "kvarh", false),
    ("quadrant IV reactive energy", "kvarh", false),
    ("forward apparent energy", "kVAh", false),
    ("reverse apparent energy", "kVAh", false),
];

/// Demand families DI2 = 01..0A (index 0 unused: there is no combined active demand).
const DEMAND: [(&str, &str, bool); 11] = [
    ("", "", false),
    ("forward active max demand", "kW", false),
    ("reverse active max demand", "kW", false),
    ("combined reactive 1 max demand", "kvar", true),
    ("combined reactive 2 max demand", "kvar", true),
    ("quadrant I reactive max demand", "kvar", false),
    ("quadrant II reactive max demand", "kvar", false),
    ("quadrant III reactive max demand", "kvar", false),
    ("quadrant IV reactive max demand", "kvar", false),
    ("forward apparent max demand", "kVA", false),
    ("reverse apparent max demand", "kVA", false),
];

fn settlement(d0: u8) -> String {
    if d0 == 0 {
        String::new()
    } else {
        format!(" (settlement -{d0})")
    }
}

/// Describe a DI; `None` when it is not in the table.
pub fn lookup(di: u32) -> Option<DiInfo> {
    let [d3, d2, d1, d0] = di.to_be_bytes();
    match d3 {
        0x00 if d2 == 0x90 => money(di, d1, d0),
        // DI0 00 = current, 01..0C = the 1st..12th previous settlement day.
        0x00 if usize::from(d2) < ENERGY.len() && d0 <= 0x0C => {
            let (name, unit, signed) = ENERGY[usize::from(d2)];
            let e = |tariff: &str| {
                DiInfo::number(
                    di,
                    format!("{name} {tariff}{}", settlement(d0)),
                    unit,
                    2,
                    signed,
                    4,
                )
            };
            match d1 {
                0..=4 => Some(e(TARIFF[usize::from(d1)])),
                0xFF => Some(e("block").block(5)),
                _ => None,
            }
        }
        0x01 if (1..DEMAND.len()).contains(&usize::from(d2)) && d0 <= 0x0C => {
            let (name, unit, signed) = DEMAND[usize::from(d2)];
            // XX.XXXX + YYMMDDhhmm (appendix A.2).
            let e = |tariff: &str| DiInfo {
                di,
                name: format!("{name} {tariff}{}", settlement(d0)),
                unit,
                decimals: 4,
                signed,
                length: 8,
                count: 1,
                kind: Kind::Demand,
            };
            match d1 {
                0..=4 => Some(e(TARIFF[usize::from(d1)])),
                0xFF => Some(e("block").block(5)),
                _ => None,
            }
        }
        0x02 => variable(di, d2, d1, d0),
        0x04 => parameter(di),
        _ => None,
    }
}

fn money(di: u32, d1: u8, d0: u8) -> Option<DiInfo> {
    let (name, unit) = match (d1, d0) {
        (0x01, 0x00) => ("remaining energy", "kWh"),
        (0x01, 0x01) => ("overdraft energy", "kWh"),
        (0x02, 0x00) => ("remaining money", "yuan"),
        (0x02, 0x01) => ("overdraft money", "yuan"),
        _ => return None,
    };
    Some(DiInfo::number(di, name.into(), unit, 2, false, 4))
}

fn variable(di: u32, d2: u8, d1: u8, d0: u8) -> Option<DiInfo> {
    // (family, unit, decimals, signed, length, first DI1, last DI1)
    let fam = match d2 {
        0x01 => ("voltage", "V", 1, false, 2, 1, 3),
        0x02 => ("current", "A", 3, true, 3, 1, 3),
        0x03 => ("active power", "kW", 4, true, 3, 0, 3),
        0x04 => ("reactive power", "kvar", 4, true, 3, 0, 3),
        0x05 => ("apparent power", "kVA", 4, true, 3, 0, 3),
        0x06 => ("power factor", "", 3, true, 2, 0, 3),
        0x07 => ("phase angle", "°", 1, false, 2, 1, 3),
        0x80 => return instrument(di, d1, d0),
        _ => return None,
    };
    let (name, unit, dec, signed, len, first, last) = fam;
    if d0 != 0 {
        return None;
    }
    if d1 == 0xFF {
        return Some(
            DiInfo::number(di, format!("{name} block"), unit, dec, signed, len)
                .block(last - first + 1),
        );
    }
    if !(first..=last).contains(&d1) {
        return None;
    }
    Some(DiInfo::number(
        di,
        format!("{name} {}", PHASE[usize::from(d1)]),
        unit,
        dec,
        signed,
        len,
    ))
}

fn instrument(di: u32, d1: u8, d0: u8) -> Option<DiInfo> {
    if d1 != 0 {
        return None;
    }
    let (name, unit, dec, signed, len) = match d0 {
        0x01 => ("neutral current", "A", 3, true, 3),
        0x02 => ("frequency", "Hz", 2, false, 2),
        0x03 => ("one-minute average active power", "kW", 4, true, 3),
        0x04 => ("present active demand", "kW", 4, true, 3),
        0x05 => ("present reactive demand", "kvar", 4, true, 3),
        0x06 => ("present apparent demand", "kVA", 4, true, 3),
        0x07 => ("meter temperature", "°C", 1, true, 2),
        0x08 => ("clock battery voltage", "V", 2, false, 2),
        0x0B => ("present tariff price", "yuan", 4, false, 4),
        _ => return None,
    };
    Some(DiInfo::number(di, name.into(), unit, dec, signed, len))
}

fn parameter(di: u32) -> Option<DiInfo> {
    Some(match di {
        0x0400_0101 => DiInfo::other(di, "date", Kind::Date, 4),
        0x0400_0102 => DiInfo::other(di, "time", Kind::Time, 3),
        // Date and time in one read (DL/T 645-2007 amendment 1).
        0x0400_010C => DiInfo::other(di, "date and time", Kind::DateTime, 7),
        0x0400_0401 => DiInfo::other(di, "communication address", Kind::Address, 6),
        0x0400_0402 => DiInfo::other(di, "meter number", Kind::Address, 6),
        0x0400_0501..=0x0400_0507 => {
            let n = di & 0xFF;
            let mut i = DiInfo::other(di, "", Kind::Status, 2);
            i.name = format!("status word {n}");
            i
        }
        _ => return None,
    })
}

/// Every DI the codec knows, block DIs included, in DI order.
pub fn table() -> &'static [DiInfo] {
    static TABLE: OnceLock<Vec<DiInfo>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut v = Vec::new();
        let d1s: Vec<u8> = (0..=4).chain([0xFF]).collect();
        for d3 in [0x00u32, 0x01] {
            for d2 in 0..=0x0Au32 {
                for &d1 in &d1s {
                    for d0 in 0..=0x0Cu32 {
                        v.extend(lookup(d3 << 24 | d2 << 16 | u32::from(d1) << 8 | d0));
                    }
                }
            }
        }
        for di in [0x0090_0100, 0x0090_0101, 0x0090_0200, 0x0090_0201] {
            v.extend(lookup(di));
        }
        for d2 in (1..=7).chain([0x80]) {
            for d1 in (0..=3).chain([0xFF]) {
                for d0 in 0..=0x0Bu32 {
                    v.extend(lookup(0x0200_0000 | d2 << 16 | d1 << 8 | d0));
                }
            }
        }
        for di in [
            0x0400_0101,
            0x0400_0102,
            0x0400_010C,
            0x0400_0401,
            0x0400_0402,
        ] {
            v.extend(lookup(di));
        }
        for n in 1..=7 {
            v.extend(lookup(0x0400_0500 | n));
        }
        v.sort_by_key(|i| i.di);
        v
    })
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

/// A decoded value. Numbers keep `None` for elements that read all FF
/// (the meter has no such phase or item).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(Option<f64>),
    List(Vec<Option<f64>>),
    /// Date `YYYY-MM-DD`, time `HH:MM:SS`, date-time `YYYY-MM-DDTHH:MM:SS`, address.
    Text(String),
    Demand(Option<f64>, Option<String>),
    DemandList(Vec<(Option<f64>, Option<String>)>),
    Status(u16),
    Raw(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

type Result<T> = std::result::Result<T, CodecError>;

fn err<T>(msg: String) -> Result<T> {
    Err(CodecError(msg))
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decode the value bytes of a reply (after the DI, 0x33 removed).
pub fn decode(di: u32, data: &[u8]) -> Result<Value> {
    let Some(info) = lookup(di) else {
        return Ok(Value::Raw(data.to_vec()));
    };
    decode_with(&info, data)
}

pub fn decode_with(info: &DiInfo, data: &[u8]) -> Result<Value> {
    let len = usize::from(info.length);
    let block = info.count > 1;
    // Blocks: meters with more tariffs than the nominal four send more
    // elements, so any whole number of elements is accepted.
    let ok_len = if block {
        !data.is_empty() && data.len().is_multiple_of(len)
    } else {
        data.len() == len
    };
    if !ok_len {
        let want = if block {
            format!(
                "a multiple of {len} bytes ({} × {})",
                info.count,
                info.picture()
            )
        } else {
            format!("{len} bytes ({})", info.picture())
        };
        return err(format!(
            "data: DI {} ({}) expects {want}, got {}",
            format_di(info.di),
            info.name,
            data.len()
        ));
    }
    let elem = |i: usize| &data[i * len..(i + 1) * len];
    let n = data.len() / len;
    match info.kind {
        Kind::Number if block => (0..n)
            .map(|i| number(info, i, elem(i)))
            .collect::<Result<_>>()
            .map(Value::List),
        Kind::Number => number(info, 0, data).map(Value::Number),
        Kind::Demand if block => (0..n)
            .map(|i| demand(info, i, elem(i)))
            .collect::<Result<_>>()
            .map(Value::DemandList),
        Kind::Demand => demand(info, 0, data).map(|(v, t)| Value::Demand(v, t)),
        Kind::Status => Ok(Value::Status(u16::from_le_bytes([data[0], data[1]]))),
        Kind::Raw => Ok(Value::Raw(data.to_vec())),
        Kind::Address => {
            let a: [u8; 6] = data.try_into().expect("length checked");
            if !bcd::is_bcd(&a) {
                return err(format!(
                    "data: DI {} ({}) expects 12 BCD digits, got {}",
                    format_di(info.di),
                    info.name,
                    hex(data)
                ));
            }
            Ok(Value::Text(format_address(&a)))
        }
        Kind::Date | Kind::Time | Kind::DateTime => calendar(info, data).map(Value::Text),
    }
}

#[inline]
fn all_ff(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0xFF)
}

fn scale(decimals: u8) -> f64 {
    10f64.powi(i32::from(decimals))
}

fn not_bcd<T>(info: &DiInfo, i: usize, b: &[u8]) -> Result<T> {
    err(format!(
        "data: DI {} ({}) element {i} is not BCD {}: {}",
        format_di(info.di),
        info.name,
        info.picture(),
        hex(b)
    ))
}

fn number(info: &DiInfo, i: usize, b: &[u8]) -> Result<Option<f64>> {
    if all_ff(b) {
        return Ok(None);
    }
    let v = if info.signed {
        bcd::decode_signed_le(b).map(|v| v as f64)
    } else {
        bcd::decode_unsigned_le(b).map(|v| v as f64)
    };
    match v {
        // Integer / power of ten: the correctly rounded double, so 501/1000 == 0.501.
        Some(v) => Ok(Some(v / scale(info.decimals))),
        None => not_bcd(info, i, b),
    }
}

fn demand(info: &DiInfo, i: usize, b: &[u8]) -> Result<(Option<f64>, Option<String>)> {
    let value_info = DiInfo {
        length: 3,
        ..info.clone()
    };
    let v = number(&value_info, i, &b[..3])?;
    let t = &b[3..8];
    // No demand recorded yet: meters send zeros (or FF) for the time.
    if all_ff(t) || t.iter().all(|&x| x == 0) {
        return Ok((v, None));
    }
    let d: Vec<u8> = match t.iter().map(|&x| bcd::from_bcd(x)).collect::<Option<_>>() {
        Some(d) => d,
        None => return not_bcd(info, i, b),
    };
    // mm hh DD MM YY, least significant first.
    match DateTime::new(2000 + u16::from(d[4]), d[3], d[2], d[1], d[0], 0) {
        Ok(dt) => Ok((v, Some(dt.iso()[..16].to_string()))),
        Err(e) => err(format!(
            "data: DI {} element {i} demand time: {e}",
            format_di(info.di)
        )),
    }
}

fn calendar(info: &DiInfo, data: &[u8]) -> Result<String> {
    let d: Vec<u8> = match data
        .iter()
        .map(|&x| bcd::from_bcd(x))
        .collect::<Option<_>>()
    {
        Some(d) => d,
        None => return not_bcd(info, 0, data),
    };
    let bad = |e: String| {
        err(format!(
            "data: DI {} ({}): {e}",
            format_di(info.di),
            info.name
        ))
    };
    match info.kind {
        // WW DD MM YY
        Kind::Date => match DateTime::new(2000 + u16::from(d[3]), d[2], d[1], 0, 0, 0) {
            Ok(t) => Ok(t.iso()[..10].to_string()),
            Err(e) => bad(e),
        },
        // ss mm hh
        Kind::Time => match DateTime::new(2000, 1, 1, d[2], d[1], d[0]) {
            Ok(t) => Ok(t.iso()[11..].to_string()),
            Err(e) => bad(e),
        },
        // ss mm hh WW DD MM YY
        _ => match DateTime::new(2000 + u16::from(d[6]), d[5], d[4], d[2], d[1], d[0]) {
            Ok(t) => Ok(t.iso()),
            Err(e) => bad(e),
        },
    }
}

/// The WW byte of a 04000101 reply value (`WW DD MM YY`), 0 = Sunday.
pub fn weekday_of(data: &[u8]) -> Option<u8> {
    let b = match data.len() {
        4 => data[0],
        // With the DI in front.
        8 if data[..4] == 0x0400_0101u32.to_le_bytes() => data[4],
        _ => return None,
    };
    bcd::from_bcd(b).filter(|&w| w <= 6)
}

/// Encode a value for `di` (the inverse of [`decode`]).
pub fn encode(di: u32, value: &Value) -> Result<Vec<u8>> {
    if let Value::Raw(b) = value {
        return Ok(b.clone());
    }
    let Some(info) = lookup(di) else {
        return err(format!(
            "value: DI {} is not in the table; pass the raw bytes",
            format_di(di)
        ));
    };
    encode_with(&info, value)
}

fn wrong_type<T>(info: &DiInfo, want: &str) -> Result<T> {
    err(format!(
        "value: DI {} ({}) expects {want}",
        format_di(info.di),
        info.name
    ))
}

pub fn encode_with(info: &DiInfo, value: &Value) -> Result<Vec<u8>> {
    let block = info.count > 1;
    let mut out = Vec::with_capacity(usize::from(info.length) * usize::from(info.count));
    match (info.kind, value) {
        (_, Value::Raw(b)) => out.extend_from_slice(b),
        (Kind::Number, Value::Number(v)) if !block => encode_number(info, 0, *v, &mut out)?,
        (Kind::Number, Value::List(vs)) if block => {
            if vs.is_empty() {
                return wrong_type(info, "a non-empty list");
            }
            for (i, v) in vs.iter().enumerate() {
                encode_number(info, i, *v, &mut out)?;
            }
        }
        (Kind::Number, _) if block => {
            return wrong_type(info, &format!("a list of {} numbers or None", info.count))
        }
        (Kind::Number, _) => return wrong_type(info, "a number or None"),
        (Kind::Demand, Value::Demand(v, t)) if !block => encode_demand(info, 0, *v, t, &mut out)?,
        (Kind::Demand, Value::DemandList(vs)) if block => {
            if vs.is_empty() {
                return wrong_type(info, "a non-empty list");
            }
            for (i, (v, t)) in vs.iter().enumerate() {
                encode_demand(info, i, *v, t, &mut out)?;
            }
        }
        (Kind::Demand, _) => {
            return wrong_type(
                info,
                "(value, 'YYYY-MM-DDTHH:MM') (a list of them for blocks)",
            )
        }
        (Kind::Status, Value::Status(w)) => out.extend_from_slice(&w.to_le_bytes()),
        (Kind::Status, _) => return wrong_type(info, "an int 0..=65535"),
        (Kind::Address, Value::Text(s)) => {
            let a = parse_address(s).map_err(|e| CodecError(format!("value: {e}")))?;
            if a.contains(&0xAA) {
                return wrong_type(info, "12 decimal digits (no wildcards)");
            }
            out.extend_from_slice(&a);
        }
        (Kind::Date | Kind::Time | Kind::DateTime, Value::Text(s)) => {
            encode_calendar(info, s, &mut out)?
        }
        (Kind::Date, _) => return wrong_type(info, "'YYYY-MM-DD'"),
        (Kind::Time, _) => return wrong_type(info, "'HH:MM:SS'"),
        (Kind::DateTime, _) => return wrong_type(info, "'YYYY-MM-DDTHH:MM:SS'"),
        (Kind::Address, _) => return wrong_type(info, "a 12-digit address string"),
        (Kind::Raw, _) => return wrong_type(info, "bytes"),
    }
    Ok(out)
}

fn encode_number(info: &DiInfo, i: usize, v: Option<f64>, out: &mut Vec<u8>) -> Result<()> {
    let len = usize::from(info.length);
    let start = out.len();
    out.resize(start + len, 0xFF);
    let Some(v) = v else { return Ok(()) };
    let max = bcd::max_magnitude(len, info.signed);
    let range = || {
        let m = max as f64 / scale(info.decimals);
        let lo = if info.signed { -m } else { 0.0 };
        format!(
            "value: DI {} ({}) element {i} must be within {lo}..={m} ({}), got {v}",
            format_di(info.di),
            info.name,
            info.picture()
        )
    };
    let scaled = (v * scale(info.decimals)).round();
    if !scaled.is_finite() || scaled.abs() > max as f64 || (!info.signed && scaled < 0.0) {
        return err(range());
    }
    let slot = &mut out[start..];
    let ok = if info.signed {
        bcd::encode_signed_le(scaled as i64, slot)
    } else {
        bcd::encode_unsigned_le(scaled as u64, slot)
    };
    ok.ok_or_else(|| CodecError(range()))
}

fn parse_fields(s: &str, seps: &[u8], widths: &[usize]) -> Option<Vec<u16>> {
    // e.g. "2018-05-12T15:41" with seps "--T:" and widths 4,2,2,2,2
    let b = s.as_bytes();
    let mut pos = 0;
    let mut out = Vec::with_capacity(widths.len());
    for (k, &w) in widths.iter().enumerate() {
        let field = b.get(pos..pos + w)?;
        if !field.iter().all(u8::is_ascii_digit) {
            return None;
        }
        out.push(std::str::from_utf8(field).ok()?.parse().ok()?);
        pos += w;
        if k < seps.len() {
            if b.get(pos) != Some(&seps[k]) {
                return None;
            }
            pos += 1;
        }
    }
    (pos == b.len()).then_some(out)
}

fn u8s(v: &[u16]) -> Option<Vec<u8>> {
    v.iter().map(|&x| u8::try_from(x).ok()).collect()
}

/// `"YYYY-MM-DD"`, `"HH:MM:SS"` or `"YYYY-MM-DDTHH:MM:SS"` (also accepts a space for T).
pub fn parse_iso(s: &str, want: Kind) -> std::result::Result<DateTime, String> {
    let norm = s.replacen(' ', "T", 1);
    let (seps, widths, picture): (&[u8], &[usize], &str) = match want {
        Kind::Date => (b"--", &[4, 2, 2], "YYYY-MM-DD"),
        Kind::Time => (b"::", &[2, 2, 2], "HH:MM:SS"),
        Kind::Demand => (b"--T:", &[4, 2, 2, 2, 2], "YYYY-MM-DDTHH:MM"),
        _ => (b"--T::", &[4, 2, 2, 2, 2, 2], "YYYY-MM-DDTHH:MM:SS"),
    };
    let f = parse_fields(&norm, seps, widths)
        .ok_or_else(|| format!("expected {picture}, got '{s}'"))?;
    let (year, rest) = match want {
        Kind::Time => (2000, u8s(&f)),
        _ => (f[0], u8s(&f[1..])),
    };
    let r = rest.ok_or_else(|| format!("expected {picture}, got '{s}'"))?;
    match want {
        Kind::Date => DateTime::new(year, r[0], r[1], 0, 0, 0),
        Kind::Time => DateTime::new(2000, 1, 1, r[0], r[1], r[2]),
        Kind::Demand => DateTime::new(year, r[0], r[1], r[2], r[3], 0),
        _ => DateTime::new(year, r[0], r[1], r[2], r[3], r[4]),
    }
}

fn encode_calendar(info: &DiInfo, s: &str, out: &mut Vec<u8>) -> Result<()> {
    let t = parse_iso(s, info.kind).map_err(|e| {
        CodecError(format!(
            "value: DI {} ({}): {e}",
            format_di(info.di),
            info.name
        ))
    })?;
    let b = |v: u8| bcd::to_bcd(v).expect("validated");
    let yy = b((t.year % 100) as u8);
    let ww = b(bcd::weekday(t.year, t.month, t.day));
    match info.kind {
        Kind::Date => out.extend_from_slice(&[ww, b(t.day), b(t.month), yy]),
        Kind::Time => out.extend_from_slice(&[b(t.second), b(t.minute), b(t.hour)]),
        _ => out.extend_from_slice(&[
            b(t.second),
            b(t.minute),
            b(t.hour),
            ww,
            b(t.day),
            b(t.month),
            yy,
        ]),
    }
    Ok(())
}

fn encode_demand(
    info: &DiInfo,
    i: usize,
    v: Option<f64>,
    t: &Option<String>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let value_info = DiInfo {
        length: 3,
        ..info.clone()
    };
    encode_number(&value_info, i, v, out)?;
    match t {
        None => out.extend_from_slice(&[0; 5]),
        Some(s) => {
            let t = parse_iso(s, Kind::Demand).map_err(|e| {
                CodecError(format!(
                    "value: DI {} element {i} demand time: {e}",
                    format_di(info.di)
                ))
            })?;
            let b = |v: u8| bcd::to_bcd(v).expect("validated");
            out.extend_from_slice(&[
                b(t.minute),
                b(t.hour),
                b(t.day),
                b(t.month),
                b((t.year % 100) as u8),
            ]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_examples() {
        let i = lookup(0x0001_0000).unwrap();
        assert_eq!(
            (i.unit, i.decimals, i.signed, i.length, i.count),
            ("kWh", 2, false, 4, 1)
        );
        assert!(lookup(0x0000_0000).unwrap().signed);
        assert_eq!(lookup(0x0001_FF00).unwrap().count, 5);
        assert_eq!(lookup(0x0201_FF00).unwrap().count, 3);
        assert_eq!(lookup(0x0203_FF00).unwrap().count, 4);
        assert_eq!(lookup(0x0206_0000).unwrap().decimals, 3);
        assert_eq!(lookup(0x0101_0000).unwrap().kind, Kind::Demand);
        assert_eq!(lookup(0x0400_0503).unwrap().name, "status word 3");
        assert!(lookup(0x0201_0000).is_none());
        assert!(lookup(0x1234_5678).is_none());
        assert!(table().len() > 1000);
        assert!(table().iter().all(|i| lookup(i.di).as_ref() == Some(i)));
    }

    #[test]
    fn decode_vectors() {
        assert_eq!(
            decode(0x0206_0000, &[0x01, 0x05]).unwrap(),
            Value::Number(Some(0.501))
        );
        assert_eq!(
            decode(0x0201_FF00, &[0x56, 0x22, 0xFF, 0xFF, 0xFF, 0xFF]).unwrap(),
            Value::List(vec![Some(225.6), None, None])
        );
        assert_eq!(
            decode(0x0202_0100, &[0x99, 0x49, 0x80]).unwrap(),
            Value::Number(Some(-4.999))
        );
        assert_eq!(
            decode(0x0400_0101, &[0x01, 0x11, 0x01, 0x16]).unwrap(),
            Value::Text("2016-01-11".into())
        );
        assert_eq!(
            decode(0x0400_0102, &[0x55, 0x53, 0x21]).unwrap(),
            Value::Text("21:53:55".into())
        );
        assert_eq!(
            decode(0x1234_5678, &[1, 2]).unwrap(),
            Value::Raw(vec![1, 2])
        );
        assert!(decode(0x0201_0100, &[0x1A, 0x22]).is_err());
        assert!(decode(0x0201_0100, &[0x22]).is_err());
    }

    #[test]
    fn round_trips() {
        let cases: Vec<(u32, Value)> = vec![
            (0x0001_0000, Value::Number(Some(0.26))),
            (0x0000_0000, Value::Number(Some(-12.34))),
            (0x0201_FF00, Value::List(vec![Some(225.6), None, None])),
            (0x0400_0101, Value::Text("2016-01-11".into())),
            (0x0400_010C, Value::Text("2024-02-29T23:59:58".into())),
            (0x0400_0401, Value::Text("181226034194".into())),
            (0x0400_0503, Value::Status(0x1050)),
            (
                0x0101_0000,
                Value::Demand(Some(12.3456), Some("2018-05-12T15:41".into())),
            ),
            (0x0101_0000, Value::Demand(None, None)),
        ];
        for (di, v) in cases {
            let b = encode(di, &v).unwrap();
            assert_eq!(decode(di, &b).unwrap(), v, "DI {di:08X}");
        }
        assert_eq!(
            encode(0x0400_0101, &Value::Text("2016-01-11".into())).unwrap()[0],
            0x01
        );
    }

    #[test]
    fn encode_range() {
        let e = encode(0x0201_0100, &Value::Number(Some(1000.0))).unwrap_err();
        assert!(e.0.contains("0..=999.9"), "{}", e.0);
        assert!(encode(0x0001_0000, &Value::Number(Some(-1.0))).is_err());
        assert!(encode(0x0202_0100, &Value::Number(Some(-799.999))).is_ok());
        assert!(encode(0x0202_0100, &Value::Number(Some(800.0))).is_err());
    }
}
