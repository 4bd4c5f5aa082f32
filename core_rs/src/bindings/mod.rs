//! The one PyO3 binding module: `controller._core_rs`.
//!
//! Thin wrappers only; conversions and error mapping live here, logic does not.

use pyo3::prelude::*;

mod dlt645;
mod errors;
mod modbus;
mod scheduler;

#[pymodule]
fn _core_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    dlt645::register(m)?;
    modbus::register(m)?;
    scheduler::register(m)?;
    Ok(())
}
