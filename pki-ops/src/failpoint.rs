//! Crash-test failpoints: with the `failpoints` feature, `ROTATE_FAILPOINT=<name>` makes
//! the process die at the first [`failpoint`]`(name)` it reaches, and `<name>#<n>` at the
//! n-th, as under SIGKILL (no unwinding, nothing flushed), so tests can aim a kill between
//! two writes. Without the feature, or without the variable, a failpoint does nothing.

/// Dies here, as under SIGKILL, when the `failpoints` feature is on and
/// `ROTATE_FAILPOINT` names this point (and, with `#<n>`, this is its n-th hit).
#[inline]
pub fn failpoint(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static HITS: AtomicUsize = AtomicUsize::new(0);
        let Ok(spec) = std::env::var("ROTATE_FAILPOINT") else {
            return;
        };
        let (point, nth) = match spec.split_once('#') {
            Some((p, n)) => (p.to_owned(), n.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
