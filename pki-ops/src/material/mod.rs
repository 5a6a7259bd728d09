//! Key, certificate and chain files on disk, written by root into trees an unprivileged
//! user owns, every operation relative to directory fds.
//!
//! That user is the attacker: it can swap any file or directory of its tree for a
//! symlink at any moment. So nothing is ever read, written, chowned or renamed through a
//! path it controls:
//!
//! - [`tree`]: a [`Tree`](tree::Tree) is opened component by component from `/` with
//!   `O_DIRECTORY | O_NOFOLLOW`; directories are created with `mkdirat`, reopened the same
//!   way and chowned on the fd; files are read through `O_NOFOLLOW` fds, regular only.
//! - [`stage`]: a set of files is staged completely (temp files created `O_EXCL |
//!   O_NOFOLLOW` with their final mode, chowned on the fd, written and synced) before any
//!   target is touched, so a full disk fails with nothing replaced; the commit keeps each
//!   previous version as a hard link (`linkat` without `AT_SYMLINK_FOLLOW`: a symlink is
//!   kept as the symlink), then renames.
//! - [`undo`]: puts previous versions back (or removes files that did not exist), in any
//!   process, from the serialisable records the caller journaled before the commit.
//!
//! What is atomic and what is not:
//!
//! - Each file replacement is one `renameat`: a reader sees the old file or the new one,
//!   never a mix, and a crash leaves one or the other (directories are synced after).
//! - A set of renames (key, certificate, chain) is **not** atomic: a crash between two
//!   renames leaves a new key next to an old certificate. The previous versions are kept
//!   (and synced) before the first rename, and [`Staged::undo_records`] are known before
//!   it, so the caller journals them durably first and, on resume, repairs the set with
//!   [`undo_file`] (or moves forward and calls [`discard_prev`]).
//! - Staging is all or nothing; a failure before the first rename (including while
//!   keeping previous versions) replaces nothing.
//! - [`Tree::ensure_dir`] is not transactional across levels: it returns what it created
//!   so [`remove_created_dirs`] can take it back.
//!
//! [`Staged::undo_records`]: stage::Staged::undo_records
//! [`undo_file`]: undo::undo_file
//! [`discard_prev`]: undo::discard_prev
//! [`remove_created_dirs`]: undo::remove_created_dirs
//! [`Tree::ensure_dir`]: tree::Tree::ensure_dir

pub(crate) mod stage;
pub(crate) mod tree;
pub(crate) mod undo;
