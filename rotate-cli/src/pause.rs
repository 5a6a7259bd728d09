//! Pauses between polls.

/// Pauses between polls of something that will change soon (a file an agent renders, a
/// token it writes): 10 ms, doubling up to 100 ms, so a fast change is seen at once and
/// a slow one costs a few reads a second.
#[derive(Debug)]
pub(crate) struct Pause(std::time::Duration);

impl Pause {
    pub(crate) fn new() -> Self {
        Pause(std::time::Duration::from_millis(10))
    }

    /// The next pause.
    pub(crate) fn next(&mut self) -> std::time::Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(std::time::Duration::from_millis(100));
        now
    }
}
