//! Key, certificate and chain files on disk.

pub(crate) mod write;
