//! The tabby CNI plugin as a library: the protocol (environment,
//! configuration, results, errors), IPAM, and pod wiring. `main.rs` is a
//! thin shell around [`cmd`].

pub mod cmd;
pub mod config;
pub mod error;
pub mod ipam;
pub mod result;
pub mod timing;
pub mod wiring;
