//! Key, certificate and chain files on disk, written through directory fds.

pub(crate) mod tree;
