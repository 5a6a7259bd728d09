//! Agent/server version skew: parse `bao version` / `vault version` output
//! and compare (the write-up's watch item: agent 1.21.1 vs server 1.20.4).

use std::time::Duration;

use serde::Serialize;

use crate::CommandRunner;
use crate::error::{Error, Result};
use crate::runner::CommandSpec;

/// A `major.minor.patch` version, with the product name when the text had one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    /// `OpenBao`, `Vault`, or `None` for a bare `1.20.4` (as `sys/seal-status` gives).
    pub product: Option<String>,
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Patch.
    pub patch: u64,
    /// What followed the patch number (`-rc1`, `+ent`), if anything.
    pub suffix: Option<String>,
}

impl Version {
    /// Parses `OpenBao v2.7.2 (abc123), built 2025-...`, `Vault v1.21.1 (...)`,
    /// `v1.20.4` or `1.20.4`: the first word that is a version, with the
    /// word before it as the product.
    ///
    /// ```
    /// let v = hooks::Version::parse("Vault v1.21.1 (4f...), built 2025-11-18")?;
    /// assert_eq!((v.product.as_deref(), v.major, v.minor, v.patch), (Some("Vault"), 1, 21, 1));
    /// # Ok::<(), hooks::Error>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let words: Vec<&str> = text.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            if let Some(mut version) = parse_word(word) {
                version.product = i
                    .checked_sub(1)
                    .and_then(|p| words.get(p))
                    .filter(|w| w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                    .map(|w| (*w).to_owned());
                return Ok(version);
            }
        }
        let shown: String = text.trim().chars().take(80).collect();
        Err(Error::BadVersion { input: shown })
    }

    /// `(major, minor, patch)`.
    pub fn triple(&self) -> (u64, u64, u64) {
        (self.major, self.minor, self.patch)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(product) = &self.product {
            write!(f, "{product} ")?;
        }
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(suffix) = &self.suffix {
            f.write_str(suffix)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Version {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

fn parse_word(word: &str) -> Option<Version> {
    let core = word.strip_prefix('v').unwrap_or(word);
    let core = core.trim_end_matches([',', ';']);
    let end = core
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(core.len());
    let (numbers, suffix) = core.split_at(end);
    let mut parts = numbers.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(suffix.is_empty() || suffix.starts_with(['-', '+'])) {
        return None;
    }
    Some(Version {
        product: None,
        major,
        minor,
        patch,
        suffix: (!suffix.is_empty()).then(|| suffix.to_owned()),
    })
}

/// The outcome of [`compare_versions`]: not fatal, but worth reporting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionCheck {
    /// The agent's version.
    pub agent: Version,
    /// The server's version.
    pub server: Version,
    /// Major or minor differ: re-test auth, renewal and template rendering.
    pub mismatch: bool,
    /// A one-line explanation whenever anything differs (patch, product).
    pub note: Option<String>,
}

/// Compares agent and server versions.
///
/// ```
/// use hooks::{Version, compare_versions};
/// let check = compare_versions(&Version::parse("Vault v1.21.1")?, &Version::parse("1.20.4")?);
/// assert!(check.mismatch);
/// # Ok::<(), hooks::Error>(())
/// ```
pub fn compare_versions(agent: &Version, server: &Version) -> VersionCheck {
    let mismatch = (agent.major, agent.minor) != (server.major, server.minor);
    let mut notes = Vec::new();
    if mismatch {
        notes.push(format!(
            "agent {} and server {} differ in major.minor: not fatal, but re-test auth, renewal and template rendering",
            short(agent),
            short(server)
        ));
    } else if agent.triple() != server.triple() || agent.suffix != server.suffix {
        notes.push(format!(
            "agent {} and server {} differ in patch level",
            short(agent),
            short(server)
        ));
    }
    match (&agent.product, &server.product) {
        (Some(a), Some(s)) if !a.eq_ignore_ascii_case(s) => {
            notes.push(format!("agent is {a}, server is {s}"));
        }
        _ => {}
    }
    VersionCheck {
        agent: agent.clone(),
        server: server.clone(),
        mismatch,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

fn short(v: &Version) -> String {
    format!(
        "{}.{}.{}{}",
        v.major,
        v.minor,
        v.patch,
        v.suffix.as_deref().unwrap_or("")
    )
}

/// Runs `<program> version` (`bao`, `vault`) and parses its output.
pub async fn command_version(
    runner: &dyn CommandRunner,
    program: &str,
    timeout: Duration,
) -> Result<Version> {
    let out = runner
        .run(&CommandSpec::new(program).arg("version").timeout(timeout))
        .await?;
    Version::parse(&out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockCommandRunner;
    use crate::runner::CommandOutput;

    fn v(text: &str) -> Version {
        Version::parse(text).expect(text)
    }

    #[test]
    fn parses_real_outputs() {
        let bao = v("OpenBao v2.7.2 (f1b2c3d4), built 2025-12-01T10:00:00Z");
        assert_eq!(bao.product.as_deref(), Some("OpenBao"));
        assert_eq!(bao.triple(), (2, 7, 2));
        let vault = v(
            "Vault v1.21.1 (2453aac2638a6ae243341b4e0657fd8aea1cbf18), built 2025-11-18T13:04:32Z\n",
        );
        assert_eq!(vault.product.as_deref(), Some("Vault"));
        assert_eq!(vault.triple(), (1, 21, 1));
        assert_eq!(v("1.20.4").product, None);
        assert_eq!(v("Vault v1.20.4+ent").suffix.as_deref(), Some("+ent"));
        assert_eq!(
            v("OpenBao v2.0.0-beta20240618").suffix.as_deref(),
            Some("-beta20240618")
        );
        assert_eq!(vault.to_string(), "Vault v1.21.1");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "Vault",
            "Vault v1.21",
            "v1.x.2",
            "1.2.3.4",
            "vault version: command not found",
        ] {
            assert!(
                matches!(Version::parse(bad), Err(Error::BadVersion { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn compares() {
        let same = compare_versions(&v("OpenBao v2.7.2"), &v("2.7.2"));
        assert!(!same.mismatch);
        assert_eq!(same.note, None);

        let write_up = compare_versions(&v("Vault v1.21.1"), &v("Vault v1.20.4"));
        assert!(write_up.mismatch);
        let note = write_up.note.expect("noted");
        assert!(
            note.contains("1.21.1") && note.contains("1.20.4") && note.contains("not fatal"),
            "{note}"
        );

        let patch = compare_versions(&v("2.7.2"), &v("2.7.1"));
        assert!(!patch.mismatch);
        assert!(patch.note.expect("noted").contains("patch"));

        let product = compare_versions(&v("Vault v2.7.2"), &v("OpenBao v2.7.2"));
        assert!(!product.mismatch);
        assert!(
            product
                .note
                .expect("noted")
                .contains("agent is Vault, server is OpenBao")
        );
    }

    #[tokio::test]
    async fn runs_version_command() {
        let mut mock = MockCommandRunner::new();
        mock.expect_run()
            .withf(|cmd| cmd.program == "bao" && cmd.args == ["version"])
            .returning(|_| {
                Ok(CommandOutput::with_stdout(
                    "OpenBao v2.7.2 (abc), built x\n",
                ))
            });
        let got = command_version(&mock, "bao", Duration::from_secs(1))
            .await
            .expect("ok");
        assert_eq!(got.triple(), (2, 7, 2));
    }
}
