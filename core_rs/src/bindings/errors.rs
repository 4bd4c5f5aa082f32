//! One exception hierarchy for the whole core, rooted at `CoreError(ValueError)`.
//!
//! The module path is the dotted import name so that `__module__` reads
//! `controller._core_rs` (stubtest and pickling look the classes up there).

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

create_exception!(
    controller._core_rs,
    CoreError,
    PyValueError,
    "Base of every error raised by the core."
);
create_exception!(
    controller._core_rs,
    EncodeError,
    CoreError,
    "Bad argument to an encoder."
);
create_exception!(
    controller._core_rs,
    AddressNotAllowedError,
    EncodeError,
    "A request to the broadcast or a wildcard address for a function not allowed there."
);
create_exception!(
    controller._core_rs,
    FrameError,
    CoreError,
    "A byte string is not a valid frame."
);
create_exception!(
    controller._core_rs,
    ChecksumError,
    FrameError,
    "DL/T 645 CS or Modbus CRC mismatch."
);
create_exception!(
    controller._core_rs,
    FrameLengthError,
    FrameError,
    "Frame too short or length field inconsistent."
);
create_exception!(
    controller._core_rs,
    FrameEndError,
    FrameError,
    "The DL/T 645 end byte 0x16 is missing."
);
create_exception!(
    controller._core_rs,
    AddressError,
    FrameError,
    "An address that is not 12 BCD digits."
);
create_exception!(
    controller._core_rs,
    ValueCodecError,
    CoreError,
    "Data bytes that do not fit the DI's format."
);
create_exception!(
    controller._core_rs,
    SchedulerError,
    CoreError,
    "Bad scheduler argument."
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("CoreError", py.get_type::<CoreError>())?;
    m.add("EncodeError", py.get_type::<EncodeError>())?;
    m.add(
        "AddressNotAllowedError",
        py.get_type::<AddressNotAllowedError>(),
    )?;
    m.add("FrameError", py.get_type::<FrameError>())?;
    m.add("ChecksumError", py.get_type::<ChecksumError>())?;
    m.add("FrameLengthError", py.get_type::<FrameLengthError>())?;
    m.add("FrameEndError", py.get_type::<FrameEndError>())?;
    m.add("AddressError", py.get_type::<AddressError>())?;
    m.add("ValueCodecError", py.get_type::<ValueCodecError>())?;
    m.add("SchedulerError", py.get_type::<SchedulerError>())?;
    Ok(())
}

/// Map a pure-Rust DL/T 645 error to its Python exception class.
pub(crate) fn dlt645_err(e: crate::dlt645::Error) -> PyErr {
    use crate::dlt645::Error as E;
    let msg = e.to_string();
    match e {
        E::Encode(_) => EncodeError::new_err(msg),
        E::Frame(_) => FrameError::new_err(msg),
        E::Length(_) => FrameLengthError::new_err(msg),
        E::Checksum { .. } => ChecksumError::new_err(msg),
        E::End { .. } => FrameEndError::new_err(msg),
        E::Address(_) => AddressError::new_err(msg),
        E::AddressNotAllowed(_) => AddressNotAllowedError::new_err(msg),
    }
}

pub(crate) fn codec_err(e: crate::di::CodecError) -> PyErr {
    ValueCodecError::new_err(e.0)
}
