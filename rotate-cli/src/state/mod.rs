//! A run's durable state: the journal (every event fsynced before the write it guards),
//! the undo actions it records, and the lock that keeps one run at a time.

pub(crate) mod journal;
pub(crate) mod lock;
pub(crate) mod outcome;
pub(crate) mod undo;
