//! gridctl real-time core.
//!
//! Pure, sans-I/O protocol and scheduling logic. Only `bindings` touches PyO3;
//! every other module is plain Rust so it can be tested and fuzzed with cargo.

pub mod bcd;
pub mod di;
pub mod dlt645;
pub mod modbus_rtu;
pub mod planner;
pub mod scheduler;

mod bindings;
