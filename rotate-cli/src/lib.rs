//! The rotation workflow as a library: configuration, plan, ordered steps and their gates.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
