//! PyO3 wrappers for `bcd`, `di` and `dlt645`: argument conversion and
//! error mapping only. Integers arrive as `i64` so that an out-of-range
//! value gets our message naming the field instead of a bare OverflowError.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use super::errors::{codec_err, dlt645_err, EncodeError, ValueCodecError};
use crate::bcd::DateTime;
use crate::di::{self, DiInfo, Kind, Value};
use crate::dlt645::{self as d, Control, Deframer, Frame};

// ---------------------------------------------------------------------------
// Argument helpers
// ---------------------------------------------------------------------------

fn encode_error(msg: String) -> PyErr {
    EncodeError::new_err(msg)
}

fn int_in(field: &str, v: i64, lo: i64, hi: i64) -> PyResult<i64> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(encode_error(format!(
            "{field}: expected {lo}..={hi}, got {v}"
        )))
    }
}

fn byte(field: &str, v: i64) -> PyResult<u8> {
    int_in(field, v, 0, 255).map(|v| v as u8)
}

fn preamble(v: i64) -> PyResult<usize> {
    int_in("preamble", v, 0, d::MAX_PREAMBLE as i64).map(|v| v as usize)
}

fn address(s: &str) -> PyResult<[u8; 6]> {
    d::parse_address(s).map_err(|e| encode_error(e.to_string()))
}

/// DI as 8 hex digits or an int; the error message is the same for both callers.
fn di_value(obj: &Bound<'_, PyAny>) -> Result<u32, String> {
    if let Ok(s) = obj.cast::<PyString>() {
        return di::parse_di(&s.to_cow().map_err(|e| e.to_string())?);
    }
    if let Ok(v) = obj.extract::<i64>() {
        if let Ok(v) = u32::try_from(v) {
            return Ok(v);
        }
        return Err(format!("di: expected an int 0..=0xFFFFFFFF, got {v}"));
    }
    Err(format!(
        "di: expected 8 hex digits (str) or an int, got {}",
        obj.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default()
    ))
}

fn di_for_encode(obj: &Bound<'_, PyAny>) -> PyResult<u32> {
    di_value(obj).map_err(encode_error)
}

fn di_for_codec(obj: &Bound<'_, PyAny>) -> PyResult<u32> {
    di_value(obj).map_err(ValueCodecError::new_err)
}

type TimeTuple = (i64, i64, i64, i64, i64, i64);

fn datetime(field: &str, t: TimeTuple) -> PyResult<DateTime> {
    let (y, mo, dd, h, mi, s) = t;
    let small = |v: i64| u8::try_from(v).unwrap_or(u8::MAX);
    let year = u16::try_from(y).unwrap_or(u16::MAX);
    DateTime::new(year, small(mo), small(dd), small(h), small(mi), small(s))
        .map_err(|e| encode_error(format!("{field}: {e}")))
}

fn time_tuple(t: &DateTime) -> (u16, u8, u8, u8, u8, u8) {
    (t.year, t.month, t.day, t.hour, t.minute, t.second)
}

fn bytes_out<'py>(py: Python<'py>, frame: &Frame, preamble: usize) -> Bound<'py, PyBytes> {
    // Write straight into the Python bytes object: no intermediate Vec.
    let len = preamble + frame.wire_len();
    PyBytes::new_with(py, len, |buf| {
        frame.write_to(preamble, buf);
        Ok(())
    })
    .expect("allocating bytes")
}

fn built<'py>(py: Python<'py>, frame: d::Result<Frame>, pre: i64) -> PyResult<Bound<'py, PyBytes>> {
    let pre = preamble(pre)?;
    let frame = frame.map_err(dlt645_err)?;
    Ok(bytes_out(py, &frame, pre))
}

// ---------------------------------------------------------------------------
// Frame
// ---------------------------------------------------------------------------

/// One decoded DL/T 645 frame. `data` is the payload with the 0x33 offset removed.
#[pyclass(frozen, name = "Dlt645Frame", module = "controller._core_rs")]
pub struct PyFrame {
    inner: Frame,
}

#[pymethods]
impl PyFrame {
    #[new]
    #[pyo3(signature = (address, control, data = b"".as_slice()))]
    #[pyo3(text_signature = "(address, control, data=b'')")]
    fn new(address: &str, control: i64, data: &[u8]) -> PyResult<Self> {
        let a = self::address(address)?;
        let c = byte("control", control)?;
        Frame::new(a, c, data.to_vec())
            .map(|inner| Self { inner })
            .map_err(dlt645_err)
    }

    #[getter]
    fn address(&self) -> String {
        d::format_address(&self.inner.address)
    }

    #[getter]
    fn control(&self) -> u8 {
        self.inner.control
    }

    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.data)
    }

    /// Control code D4..D0.
    #[getter]
    fn function(&self) -> u8 {
        self.inner.function()
    }

    /// e.g. ``"read"``, ``"control"``, ``"broadcast_time"``; ``"unknown"`` for reserved codes.
    #[getter]
    fn function_name(&self) -> &'static str {
        d::function_name(self.inner.function())
    }

    /// D7: reply direction.
    #[getter]
    #[allow(clippy::wrong_self_convention)]
    fn from_meter(&self) -> bool {
        self.inner.from_meter()
    }

    /// D6: exception reply; ``data[0]`` is the ERR byte.
    #[getter]
    fn is_exception(&self) -> bool {
        self.inner.is_exception()
    }

    /// D5: more frames follow (read with 0x12).
    #[getter]
    fn has_followup(&self) -> bool {
        self.inner.has_followup()
    }

    /// The DI as 8 hex digits for read/write/follow-up frames that carry one, else None.
    #[getter]
    fn di(&self) -> Option<String> {
        self.inner.di().map(di::format_di)
    }

    /// The ERR byte of an exception reply, else None.
    #[getter]
    fn error_code(&self) -> Option<u8> {
        self.inner.error_code()
    }

    /// Frame bytes with ``preamble`` leading 0xFE (0..4).
    #[pyo3(signature = (preamble = 0))]
    fn encode<'py>(&self, py: Python<'py>, preamble: i64) -> PyResult<Bound<'py, PyBytes>> {
        Ok(bytes_out(py, &self.inner, self::preamble(preamble)?))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyFrame>()
            .is_ok_and(|o| o.get().inner == self.inner)
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner.hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        let data: String = self.inner.data.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "Dlt645Frame(address='{}', control=0x{:02X}, data=bytes.fromhex('{data}'))",
            d::format_address(&self.inner.address),
            self.inner.control
        )
    }
}

/// Encode a frame. ``data`` is plain (the +0x33 offset is applied here).
#[pyfunction]
#[pyo3(signature = (address, control, data = b"".as_slice(), preamble = 0))]
#[pyo3(text_signature = "(address, control, data=b'', preamble=0)")]
fn dlt645_encode<'py>(
    py: Python<'py>,
    address: &str,
    control: i64,
    data: &[u8],
    preamble: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    let a = self::address(address)?;
    let c = byte("control", control)?;
    let pre = self::preamble(preamble)?;
    d::check_control(c).map_err(dlt645_err)?;
    d::check_request_address(&a, c).map_err(dlt645_err)?;
    d::check_data_len(data.len()).map_err(dlt645_err)?;
    let len = pre + d::MIN_FRAME + data.len();
    PyBytes::new_with(py, len, |buf| {
        d::write_frame(&a, c, data, pre, buf);
        Ok(())
    })
}

/// Decode exactly one frame (leading 0xFE allowed, nothing after 0x16).
#[pyfunction]
fn dlt645_decode(frame: PyBackedBytes) -> PyResult<PyFrame> {
    d::decode(&frame)
        .map(|inner| PyFrame { inner })
        .map_err(dlt645_err)
}

/// Names of the bits set in an exception ERR byte, e.g. ``["no requested data"]``.
#[pyfunction]
fn dlt645_error_names(err: i64) -> PyResult<Vec<&'static str>> {
    Ok(d::error_names(byte("err", err)?))
}

/// The ERR byte for bit names (inverse of ``dlt645_error_names``).
#[pyfunction]
fn dlt645_error_bits(names: Vec<String>) -> PyResult<u8> {
    d::error_bits(names.iter().map(String::as_str)).map_err(dlt645_err)
}

/// Name of a 1C N1 code (``"trip"``, ``"close_allowed"``, …; ``"unknown"``).
#[pyfunction]
fn dlt645_n1_name(n1: i64) -> PyResult<&'static str> {
    Ok(d::n1_name(byte("n1", n1)?))
}

/// 0x11 read request for one DI (block DIs with FF are ordinary DIs here).
#[pyfunction]
#[pyo3(signature = (address, di, preamble = 0))]
fn dlt645_read<'py>(
    py: Python<'py>,
    address: &str,
    di: &Bound<'_, PyAny>,
    preamble: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    let a = self::address(address)?;
    let di = di_for_encode(di)?;
    let pre = self::preamble(preamble)?;
    d::check_request_address(&a, d::FN_READ).map_err(dlt645_err)?;
    // Hot path for pollers: no Frame, one buffer.
    let len = pre + d::MIN_FRAME + 4;
    PyBytes::new_with(py, len, |buf| {
        d::write_frame(&a, d::FN_READ, &di.to_le_bytes(), pre, buf);
        Ok(())
    })
}

/// 0x12 read follow-up request, frame sequence number ``seq`` (0..255).
#[pyfunction]
#[pyo3(signature = (address, di, seq, preamble = 0))]
fn dlt645_read_followup<'py>(
    py: Python<'py>,
    address: &str,
    di: &Bound<'_, PyAny>,
    seq: i64,
    preamble: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    let f = d::read_followup(
        self::address(address)?,
        di_for_encode(di)?,
        byte("seq", seq)?,
    );
    built(py, f, preamble)
}

/// 0x13 wildcard read-address request.
#[pyfunction]
#[pyo3(signature = (preamble = 0))]
fn dlt645_read_address(py: Python<'_>, preamble: i64) -> PyResult<Bound<'_, PyBytes>> {
    built(py, Ok(d::read_address()), preamble)
}

/// 0x14 write: DI, PA P0 P1 P2 (password: 6 hex digits), operator code (8 hex digits), value bytes.
#[pyfunction]
#[pyo3(signature = (address, di, password_level, password, operator, value, preamble = 0))]
#[allow(clippy::too_many_arguments)]
fn dlt645_write<'py>(
    py: Python<'py>,
    address: &str,
    di: &Bound<'_, PyAny>,
    password_level: i64,
    password: &str,
    operator: &str,
    value: &[u8],
    preamble: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    let f = d::write(
        self::address(address)?,
        di_for_encode(di)?,
        byte("password_level", password_level)?,
        d::parse_hex_le::<3>("password", password).map_err(dlt645_err)?,
        d::parse_hex_le::<4>("operator", operator).map_err(dlt645_err)?,
        value,
    );
    built(py, f, preamble)
}

/// 0x08 broadcast time sync; ``when`` = (year, month, day, hour, minute, second).
#[pyfunction]
#[pyo3(signature = (when, preamble = 0))]
fn dlt645_time_sync(
    py: Python<'_>,
    when: TimeTuple,
    preamble: i64,
) -> PyResult<Bound<'_, PyBytes>> {
    built(py, Ok(d::time_sync(datetime("when", when)?)), preamble)
}

/// The (year, month, day, hour, minute, second) of a time-sync frame's data.
#[pyfunction]
fn dlt645_parse_time_sync(data: &[u8]) -> PyResult<(u16, u8, u8, u8, u8, u8)> {
    d::parse_time_sync(data)
        .map(|t| time_tuple(&t))
        .map_err(dlt645_err)
}

/// 0x16 freeze; ``pattern`` mmhhDDMM as 8 digits (99 = every).
#[pyfunction]
#[pyo3(signature = (address, pattern = "99999999", preamble = 0))]
fn dlt645_freeze<'py>(
    py: Python<'py>,
    address: &str,
    pattern: &str,
    preamble: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    built(py, d::freeze(self::address(address)?, pattern), preamble)
}

/// 0x17 change baud; ``baud`` one of 1200, 2400, 4800, 9600, 19200 (sent as the feature word).
#[pyfunction]
#[pyo3(signature = (address, baud, preamble = 0))]
fn dlt645_change_baud<'py>(
    py: Python<'py>,
    address: &str,
    baud: i64,
    preamble: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    let baud = u32::try_from(baud).unwrap_or(0);
    built(py, d::change_baud(self::address(address)?, baud), preamble)
}

/// 0x1C trip/close/alarm/keep-power; ``valid_until`` = (year, month, day, hour, minute, second).
#[pyfunction]
#[pyo3(signature = (
    address, n1, valid_until, password_level = 0, password = "000000",
    operator = "00000000", preamble = 0
))]
#[allow(clippy::too_many_arguments)]
fn dlt645_control<'py>(
    py: Python<'py>,
    address: &str,
    n1: i64,
    valid_until: TimeTuple,
    password_level: i64,
    password: &str,
    operator: &str,
    preamble: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    let cmd = Control {
        password_level: byte("password_level", password_level)?,
        password: d::parse_hex_le::<3>("password", password).map_err(dlt645_err)?,
        operator: d::parse_hex_le::<4>("operator", operator).map_err(dlt645_err)?,
        n1: byte("n1", n1)?,
        n2: 0,
        valid_until: datetime("valid_until", valid_until)?,
    };
    built(py, d::control(self::address(address)?, &cmd), preamble)
}

/// The payload of a 1C control command.
#[pyclass(frozen, name = "Dlt645Control", module = "controller._core_rs")]
pub struct PyControl {
    inner: Control,
}

#[pymethods]
impl PyControl {
    #[getter]
    fn password_level(&self) -> u8 {
        self.inner.password_level
    }
    /// P2 P1 P0 as 6 hex digits (most significant first).
    #[getter]
    fn password(&self) -> String {
        d::format_hex_le(&self.inner.password)
    }
    /// C3..C0 as 8 hex digits (most significant first).
    #[getter]
    fn operator(&self) -> String {
        d::format_hex_le(&self.inner.operator)
    }
    #[getter]
    fn n1(&self) -> u8 {
        self.inner.n1
    }
    #[getter]
    fn n1_name(&self) -> &'static str {
        d::n1_name(self.inner.n1)
    }
    #[getter]
    fn n2(&self) -> u8 {
        self.inner.n2
    }
    /// (year, month, day, hour, minute, second).
    #[getter]
    fn valid_until(&self) -> (u16, u8, u8, u8, u8, u8) {
        time_tuple(&self.inner.valid_until)
    }
    fn __repr__(&self) -> String {
        format!(
            "Dlt645Control(n1=0x{:02X} {}, password_level={}, operator='{}', valid_until='{}')",
            self.inner.n1,
            d::n1_name(self.inner.n1),
            self.inner.password_level,
            d::format_hex_le(&self.inner.operator),
            self.inner.valid_until.iso()
        )
    }
}

/// Parse the 16-byte data of a 1C command (0x33 already removed).
#[pyfunction]
fn dlt645_parse_control(data: &[u8]) -> PyResult<PyControl> {
    Control::parse(data)
        .map(|inner| PyControl { inner })
        .map_err(dlt645_err)
}

/// Normal reply (C = function | 0x80, | 0x20 with follow-up) — for simulators.
#[pyfunction]
#[pyo3(signature = (address, function, data = b"".as_slice(), followup = false))]
#[pyo3(text_signature = "(address, function, data=b'', followup=False)")]
fn dlt645_reply<'py>(
    py: Python<'py>,
    address: &str,
    function: i64,
    data: &[u8],
    followup: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let f = d::reply(
        self::address(address)?,
        byte("function", function)?,
        data,
        followup,
    );
    built(py, f, 0)
}

/// Exception reply (C = function | 0xC0) with one ERR byte — for simulators.
#[pyfunction]
fn dlt645_exception<'py>(
    py: Python<'py>,
    address: &str,
    function: i64,
    err: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    let f = d::exception(
        self::address(address)?,
        byte("function", function)?,
        byte("err", err)?,
    );
    built(py, f, 0)
}

// ---------------------------------------------------------------------------
// Deframer
// ---------------------------------------------------------------------------

/// Streaming deframer: feed any chunks, get every complete valid frame in order.
#[pyclass(name = "Dlt645Deframer", module = "controller._core_rs")]
pub struct PyDeframer {
    inner: Deframer,
    /// Reused between feeds so that parsing does not allocate a new Vec each time.
    scratch: Vec<Frame>,
}

#[pymethods]
impl PyDeframer {
    #[new]
    #[pyo3(signature = (max_buffer = 4096))]
    fn new(max_buffer: i64) -> PyResult<Self> {
        let max_buffer = usize::try_from(max_buffer).unwrap_or(0);
        Ok(Self {
            inner: Deframer::new(max_buffer).map_err(dlt645_err)?,
            scratch: Vec::new(),
        })
    }

    fn feed<'py>(&mut self, py: Python<'py>, chunk: PyBackedBytes) -> PyResult<Bound<'py, PyList>> {
        self.inner.feed(&chunk, &mut self.scratch);
        PyList::new(py, self.scratch.drain(..).map(|inner| PyFrame { inner }))
    }

    /// Drop any partial frame (e.g. after a timeout); counted as discarded bytes.
    fn reset(&mut self) {
        self.inner.reset();
    }

    #[getter]
    fn frames(&self) -> u64 {
        self.inner.stats().frames
    }

    #[getter]
    fn discarded_bytes(&self) -> u64 {
        self.inner.stats().discarded_bytes
    }

    #[getter]
    fn checksum_errors(&self) -> u64 {
        self.inner.stats().checksum_errors
    }

    /// Bytes held waiting for the rest of a frame.
    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }
}

// ---------------------------------------------------------------------------
// Value codec
// ---------------------------------------------------------------------------

#[pyclass(frozen, name = "DiInfo", module = "controller._core_rs")]
pub struct PyDiInfo {
    inner: DiInfo,
}

#[pymethods]
impl PyDiInfo {
    #[getter]
    fn di(&self) -> String {
        di::format_di(self.inner.di)
    }
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }
    #[getter]
    fn unit(&self) -> &'static str {
        self.inner.unit
    }
    #[getter]
    fn decimals(&self) -> u8 {
        self.inner.decimals
    }
    #[getter]
    fn signed(&self) -> bool {
        self.inner.signed
    }
    #[getter]
    fn length(&self) -> u8 {
        self.inner.length
    }
    #[getter]
    fn count(&self) -> u8 {
        self.inner.count
    }
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind.as_str()
    }
    fn __repr__(&self) -> String {
        let i = &self.inner;
        format!(
            "DiInfo(di='{}', name='{}', unit='{}', decimals={}, signed={}, length={}, count={}, kind='{}')",
            di::format_di(i.di),
            i.name,
            i.unit,
            i.decimals,
            if i.signed { "True" } else { "False" },
            i.length,
            i.count,
            i.kind.as_str()
        )
    }
}

/// The table entry for a DI, or None when the DI is not in the table.
#[pyfunction]
fn di_info(di: &Bound<'_, PyAny>) -> PyResult<Option<PyDiInfo>> {
    Ok(di::lookup(di_for_codec(di)?).map(|inner| PyDiInfo { inner }))
}

/// Every concrete DI the codec knows (block DIs included).
#[pyfunction]
fn di_table() -> Vec<PyDiInfo> {
    di::table()
        .iter()
        .map(|i| PyDiInfo { inner: i.clone() })
        .collect()
}

fn opt_float(py: Python<'_>, v: Option<f64>) -> PyResult<Bound<'_, PyAny>> {
    Ok(v.into_pyobject(py)?.into_any())
}

fn demand_tuple<'py>(
    py: Python<'py>,
    v: Option<f64>,
    t: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyTuple::new(py, [opt_float(py, v)?, t.into_pyobject(py)?.into_any()])?.into_any())
}

fn value_to_py(py: Python<'_>, v: Value) -> PyResult<Bound<'_, PyAny>> {
    Ok(match v {
        Value::Number(x) => opt_float(py, x)?,
        Value::List(xs) => PyList::new(py, xs)?.into_any(),
        Value::Text(s) => PyString::new(py, &s).into_any(),
        Value::Demand(v, t) => demand_tuple(py, v, t)?,
        Value::DemandList(items) => {
            let items: Vec<_> = items
                .into_iter()
                .map(|(v, t)| demand_tuple(py, v, t))
                .collect::<PyResult<_>>()?;
            PyList::new(py, items)?.into_any()
        }
        Value::Status(w) => w.into_pyobject(py)?.into_any(),
        Value::Raw(b) => PyBytes::new(py, &b).into_any(),
    })
}

fn wrong(info: &DiInfo, want: &str, got: &Bound<'_, PyAny>) -> PyErr {
    let ty = got
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    ValueCodecError::new_err(format!(
        "value: DI {} ({}) expects {want}, got {ty}",
        di::format_di(info.di),
        info.name
    ))
}

fn py_number(info: &DiInfo, obj: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
    if obj.is_none() {
        return Ok(None);
    }
    // bool is an int in Python but never a meter reading.
    if obj.is_instance_of::<pyo3::types::PyBool>() {
        return Err(wrong(info, "a number or None", obj));
    }
    obj.extract::<f64>()
        .map(Some)
        .map_err(|_| wrong(info, "a number or None", obj))
}

fn py_demand(info: &DiInfo, obj: &Bound<'_, PyAny>) -> PyResult<(Option<f64>, Option<String>)> {
    let want = "(value, 'YYYY-MM-DDTHH:MM' or None)";
    let t = obj.cast::<PyTuple>().map_err(|_| wrong(info, want, obj))?;
    if t.len() != 2 {
        return Err(wrong(info, want, obj));
    }
    let v = py_number(info, &t.get_item(0)?)?;
    let time = t.get_item(1)?;
    let time = if time.is_none() {
        None
    } else {
        Some(
            time.extract::<String>()
                .map_err(|_| wrong(info, want, &time))?,
        )
    };
    Ok((v, time))
}

fn py_list<'py>(info: &DiInfo, obj: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if obj.is_instance_of::<PyString>() {
        return Err(wrong(info, "a list", obj));
    }
    obj.try_iter()
        .map_err(|_| wrong(info, "a list", obj))?
        .collect::<PyResult<Vec<_>>>()
}

fn py_to_value(info: Option<&DiInfo>, obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::Raw(b.as_bytes().to_vec()));
    }
    let Some(info) = info else {
        return Err(ValueCodecError::new_err(
            "value: DI not in the table; pass the raw bytes".to_string(),
        ));
    };
    let block = info.count > 1;
    Ok(match info.kind {
        Kind::Number if block => Value::List(
            py_list(info, obj)?
                .iter()
                .map(|o| py_number(info, o))
                .collect::<PyResult<_>>()?,
        ),
        Kind::Number => Value::Number(py_number(info, obj)?),
        Kind::Demand if block => Value::DemandList(
            py_list(info, obj)?
                .iter()
                .map(|o| py_demand(info, o))
                .collect::<PyResult<_>>()?,
        ),
        Kind::Demand => {
            let (v, t) = py_demand(info, obj)?;
            Value::Demand(v, t)
        }
        Kind::Status => {
            let w = obj
                .extract::<i64>()
                .map_err(|_| wrong(info, "an int 0..=65535", obj))?;
            let w = u16::try_from(w).map_err(|_| {
                ValueCodecError::new_err(format!(
                    "value: DI {} ({}) expects an int 0..=65535, got {w}",
                    di::format_di(info.di),
                    info.name
                ))
            })?;
            Value::Status(w)
        }
        Kind::Date | Kind::Time | Kind::DateTime | Kind::Address => Value::Text(
            obj.extract::<String>()
                .map_err(|_| wrong(info, "a str", obj))?,
        ),
        Kind::Raw => return Err(wrong(info, "bytes", obj)),
    })
}

/// Decode a reply's value bytes (after the 4 DI bytes, 0x33 already removed).
#[pyfunction]
fn decode_value<'py>(
    py: Python<'py>,
    di: &Bound<'_, PyAny>,
    data: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let v = di::decode(di_for_codec(di)?, data).map_err(codec_err)?;
    value_to_py(py, v)
}

/// The inverse of decode_value (for simulators and writes).
#[pyfunction]
fn encode_value<'py>(
    py: Python<'py>,
    di: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let di = di_for_codec(di)?;
    let info = di::lookup(di);
    let v = py_to_value(info.as_ref(), value)?;
    let b = match &info {
        Some(i) => di::encode_with(i, &v),
        None => di::encode(di, &v),
    }
    .map_err(codec_err)?;
    Ok(PyBytes::new(py, &b))
}

/// The WW byte of a 04000101 date reply (0 = Sunday).
#[pyfunction]
fn weekday_of(data: &[u8]) -> Option<u8> {
    di::weekday_of(data)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("BROADCAST_ADDRESS", d::format_address(&d::BROADCAST))?;
    m.add("WILDCARD_ADDRESS", d::format_address(&d::WILDCARD))?;
    for (name, v) in [
        ("FN_BROADCAST_TIME", d::FN_BROADCAST_TIME),
        ("FN_READ", d::FN_READ),
        ("FN_READ_FOLLOWUP", d::FN_READ_FOLLOWUP),
        ("FN_READ_ADDRESS", d::FN_READ_ADDRESS),
        ("FN_WRITE", d::FN_WRITE),
        ("FN_WRITE_ADDRESS", d::FN_WRITE_ADDRESS),
        ("FN_FREEZE", d::FN_FREEZE),
        ("FN_CHANGE_BAUD", d::FN_CHANGE_BAUD),
        ("FN_CHANGE_PASSWORD", d::FN_CHANGE_PASSWORD),
        ("FN_DEMAND_RESET", d::FN_DEMAND_RESET),
        ("FN_METER_CLEAR", d::FN_METER_CLEAR),
        ("FN_EVENT_CLEAR", d::FN_EVENT_CLEAR),
        ("FN_CONTROL", d::FN_CONTROL),
        ("FN_MULTI_OUTPUT", d::FN_MULTI_OUTPUT),
        ("FN_SECURITY", d::FN_SECURITY),
        ("N1_TRIP", d::N1_TRIP),
        ("N1_CLOSE_ALLOWED", d::N1_CLOSE_ALLOWED),
        ("N1_DIRECT_CLOSE", d::N1_DIRECT_CLOSE),
        ("N1_ALARM_ON", d::N1_ALARM_ON),
        ("N1_ALARM_OFF", d::N1_ALARM_OFF),
        ("N1_KEEP_POWER_ON", d::N1_KEEP_POWER_ON),
        ("N1_KEEP_POWER_OFF", d::N1_KEEP_POWER_OFF),
        ("ERR_OTHER", 0x01),
        ("ERR_NO_DATA", 0x02),
        ("ERR_UNAUTHORISED", 0x04),
        ("ERR_BAUD", 0x08),
        ("ERR_TOO_MANY_ZONES", 0x10),
        ("ERR_TOO_MANY_PERIODS", 0x20),
        ("ERR_TOO_MANY_TARIFFS", 0x40),
    ] {
        m.add(name, v)?;
    }
    m.add_class::<PyFrame>()?;
    m.add_class::<PyControl>()?;
    m.add_class::<PyDeframer>()?;
    m.add_class::<PyDiInfo>()?;
    m.add_function(wrap_pyfunction!(dlt645_encode, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_decode, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_error_names, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_error_bits, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_n1_name, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_read, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_read_followup, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_read_address, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_write, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_time_sync, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_parse_time_sync, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_freeze, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_change_baud, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_control, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_parse_control, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_reply, m)?)?;
    m.add_function(wrap_pyfunction!(dlt645_exception, m)?)?;
    m.add_function(wrap_pyfunction!(di_info, m)?)?;
    m.add_function(wrap_pyfunction!(di_table, m)?)?;
    m.add_function(wrap_pyfunction!(decode_value, m)?)?;
    m.add_function(wrap_pyfunction!(encode_value, m)?)?;
    m.add_function(wrap_pyfunction!(weekday_of, m)?)?;
    Ok(())
}
