//! Integration tests: one binary, one OpenBao lab (see `rotate_tests::shared`), tests
//! isolated by mount, role and mapping names.

mod cli;
mod client;
