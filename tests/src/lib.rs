//! The OpenBao lab.
