//! Text from outside on its way to a terminal: an app's post-hook status and files,
//! Vault's errors, config strings. [`escaped`] is what every human report writes through;
//! [`escape_controls`] the same for one string.

use std::fmt;

/// Writes what `render` writes to `f` with [`escape_controls`] applied: the top-level
/// reports' `Display` goes through it.
pub(crate) fn escaped(
    f: &mut fmt::Formatter<'_>,
    render: impl FnOnce(&mut dyn fmt::Write) -> fmt::Result,
) -> fmt::Result {
    render(&mut Escaping(f))
}

struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if needs_escape(c) {
                write!(self.0, "{}", c.escape_unicode())?;
            } else {
                fmt::Write::write_char(self.0, c)?;
            }
        }
        Ok(())
    }
}

/// Control characters other than a line break (ESC, CR, BEL, backspace, C1 controls)
/// and the Unicode bidirectional overrides, which reorder what a terminal shows.
fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with control characters (but line breaks) and bidi overrides escaped as
/// `\u{1b}`: for text from outside on its way to a terminal.
///
/// ```
/// assert_eq!(rotate_cli::report::escape_controls("ok\x1b[2J\rdone"), "ok\\u{1b}[2J\\u{d}done");
/// ```
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A UTC timestamp `YYYY-MM-DD HH:MM:SS UTC` for unix seconds (for messages).
pub(crate) fn utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_766_391_140), "2025-12-22 08:12:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
