//! Integration tests: one binary, one OpenBao lab (see `rotate_tests::shared`), tests
//! isolated by mount, role and mapping names.

#![allow(clippy::unwrap_used)]

mod agents;
mod attacks;
mod cli;
mod client;
mod cluster;
mod crash;
mod faults;
mod interrupted;
mod kit;
mod leaf;
mod podman;
mod proxy;
mod scale;
mod support;
mod tls;
mod verify;
