//! Modbus RTU: CRC, framing, timing and the streaming deframer.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::errors::EncodeError;
use crate::modbus_rtu::{self, ArgError, Deframer, Role};

fn encode_err(e: ArgError) -> PyErr {
    EncodeError::new_err(e.0)
}

/// An int argument as u32, with the field named when it does not fit.
fn to_u32(field: &str, v: i64, range: &str) -> PyResult<u32> {
    u32::try_from(v).map_err(|_| EncodeError::new_err(format!("{field} must be {range}, got {v}")))
}

/// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF).
#[pyfunction]
fn modbus_crc16(data: &[u8]) -> u16 {
    modbus_rtu::crc16(data)
}

/// Append the CRC, low byte first.
#[pyfunction]
fn modbus_rtu_frame<'py>(py: Python<'py>, adu_without_crc: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let f = modbus_rtu::frame(adu_without_crc).map_err(encode_err)?;
    Ok(PyBytes::new(py, &f))
}

/// True when the last two bytes are the CRC of the rest.
#[pyfunction]
fn modbus_rtu_check(frame: &[u8]) -> bool {
    modbus_rtu::check(frame)
}

/// (t1.5, t3.5) in seconds; fixed 0.75 ms / 1.75 ms above 19200 baud.
#[pyfunction]
#[pyo3(signature = (baud, bits_per_char = 11))]
fn modbus_rtu_timing(baud: i64, bits_per_char: i64) -> PyResult<(f64, f64)> {
    let baud = to_u32("baud", baud, "50..10000000")?;
    let bits = to_u32("bits_per_char", bits_per_char, "10..12")?;
    modbus_rtu::timing(baud, bits).map_err(encode_err)
}

/// Finds frame ends by function code and length fields.
#[pyclass(name = "ModbusRtuDeframer", module = "controller._core_rs")]
struct PyModbusRtuDeframer {
    inner: Deframer,
}

#[pymethods]
impl PyModbusRtuDeframer {
    #[new]
    #[pyo3(signature = (role = "response", max_buffer = 512))]
    fn new(role: &str, max_buffer: i64) -> PyResult<Self> {
        let role = Role::parse(role).map_err(encode_err)?;
        let max_buffer = usize::try_from(max_buffer).map_err(|_| {
            EncodeError::new_err(format!(
                "max_buffer must be a positive byte count, got {max_buffer}"
            ))
        })?;
        let inner = Deframer::new(role, max_buffer).map_err(encode_err)?;
        Ok(Self { inner })
    }

    /// Complete frames (CRC included and verified), in order.
    fn feed<'py>(&mut self, py: Python<'py>, chunk: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let mut err = None;
        self.inner.feed_with(chunk, |f| {
            if err.is_none() {
                if let Err(e) = out.append(PyBytes::new(py, f)) {
                    err = Some(e);
                }
            }
        });
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Drop any partial frame (e.g. after a timeout); counted as discarded bytes.
    fn reset(&mut self) {
        self.inner.reset();
    }

    #[getter]
    fn role(&self) -> &'static str {
        match self.inner.role() {
            Role::Request => "request",
            Role::Response => "response",
        }
    }

    #[getter]
    fn frames(&self) -> u64 {
        self.inner.frames()
    }

    #[getter]
    fn discarded_bytes(&self) -> u64 {
        self.inner.discarded_bytes()
    }

    #[getter]
    fn crc_errors(&self) -> u64 {
        self.inner.crc_errors()
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }

    fn __repr__(&self) -> String {
        format!(
            "ModbusRtuDeframer(role={:?}, frames={}, discarded_bytes={}, crc_errors={}, buffered={})",
            self.role(),
            self.inner.frames(),
            self.inner.discarded_bytes(),
            self.inner.crc_errors(),
            self.inner.buffered()
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(modbus_crc16, m)?)?;
    m.add_function(wrap_pyfunction!(modbus_rtu_frame, m)?)?;
    m.add_function(wrap_pyfunction!(modbus_rtu_check, m)?)?;
    m.add_function(wrap_pyfunction!(modbus_rtu_timing, m)?)?;
    m.add_class::<PyModbusRtuDeframer>()?;
    Ok(())
}
