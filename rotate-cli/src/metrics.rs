//! What expires when, for alerting: the local inventory (every certificate file rotate
//! manages, read without Vault) and the node_exporter textfile (Prometheus text format
//! 0.0.4) of an inventory and the last run, written atomically.
//!
//! Metrics (every series carries `env`):
//!
//! | metric | labels | value |
//! | --- | --- | --- |
//! | `rotate_certificate_expiry_timestamp_seconds` | `kind` (admin, listener, agent, leaf, proxy, ca), `app`, `node`, `serial`, `location` | not-after, unix seconds |
//! | `rotate_inventory_timestamp_seconds` | | when the inventory was taken |
//! | `rotate_verify_success` | | 1 when `verify` passed every check, else 0 (verify only) |
//! | `rotate_verify_checks_failed` | | how many checks failed (verify only) |
//! | `rotate_last_run_exit_code` | `mode` (run, run --resume, rollback) | the last run's exit code |
//! | `rotate_last_run_timestamp_seconds` | | when it ended |
//! | `rotate_last_success_timestamp_seconds` | | when a run last ended with exit 0 |

use std::fmt::Write as _;
use std::path::Path;

use crate::checks::{Labels, Material, MaterialKind};
use crate::config::{AppConfig, Config};
use crate::error::StepError;
use crate::host::{owner_of, read_root_file, vault_owner};
use crate::state::outcome::LastRun;
use crate::topology::rel;

/// Every certificate file rotate manages, soonest expiry first: the admin's, each
/// listener node's, each app's agent certificate and leaf, the proxy's client
/// certificate. Reads files only (no Vault, no network); a file that is missing or not a
/// certificate is in `unreadable` with why.
#[derive(Debug, Default, serde::Serialize)]
pub struct Inventory {
    /// Environment.
    pub env: String,
    /// The certificates, soonest expiry first.
    pub inventory: Vec<Material>,
    /// What could not be read, and why.
    pub unreadable: Vec<String>,
    /// When it was taken, unix seconds.
    pub taken_unix: i64,
    /// 0, or 11 when a file could not be read.
    pub exit_code: u8,
}

impl std::fmt::Display for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::text::escaped(f, |f| {
            writeln!(f, "rotate inventory ({})", self.env)?;
            for m in &self.inventory {
                writeln!(
                    f,
                    "  {:>6}  {}  {}  ({})",
                    crate::checks::left(m),
                    m.not_after_rfc3339,
                    m.what,
                    m.location
                )?;
            }
            for u in &self.unreadable {
                writeln!(f, "  UNREADABLE  {u}")?;
            }
            writeln!(
                f,
                "\n{} certificate(s){}",
                self.inventory.len(),
                match self.unreadable.len() {
                    0 => String::new(),
                    n => format!(", {n} UNREADABLE (exit 11)"),
                }
            )
        })
    }
}

/// Takes the inventory of `apps` and the deployment's own certificates at `now`.
pub fn inventory(cfg: &Config, apps: &[&AppConfig], now: i64) -> Inventory {
    let mut inv = Inventory {
        env: cfg.env.clone(),
        taken_unix: now,
        ..Inventory::default()
    };
    let mut add = |labels: Labels,
                   what: String,
                   location: String,
                   pem: Result<Option<Vec<u8>>, StepError>| {
        let parsed = match pem {
            Ok(Some(pem)) => {
                pki_ops::CertInfo::from_pem_labeled(&String::from_utf8_lossy(&pem), &what)
                    .map_err(|e| format!("{e:#}"))
            }
            Ok(None) => Err("missing".to_owned()),
            Err(e) => Err(format!("{e:#}")),
        };
        match parsed {
            Ok(c) => inv
                .inventory
                .push(Material::new(labels, what, location, &c, now)),
            Err(why) => inv.unreadable.push(format!("{what} ({location}): {why}")),
        }
    };
    let bytes = |r: Result<Option<zeroize::Zeroizing<Vec<u8>>>, StepError>| {
        r.map(|o| o.map(|z| z.to_vec()))
    };
    if let Some(cert) = &cfg.vault.client_cert {
        add(
            Labels::of(MaterialKind::Admin),
            "admin certificate".into(),
            cert.display().to_string(),
            bytes(read_root_file(cert, None)),
        );
    }
    if let Some(l) = &cfg.listener {
        let owner = vault_owner(cfg).ok().flatten();
        for n in l.servers() {
            add(
                Labels::node(MaterialKind::Listener, &n.name),
                format!("listener certificate of {}", n.name),
                n.cert_file.display().to_string(),
                bytes(read_root_file(&n.cert_file, owner)),
            );
        }
    }
    for app in apps {
        let tree = owner_of(app).and_then(|o| Ok(pki_ops::Tree::open(&app.home, Some(o))?));
        for (kind, what, file) in [
            (
                MaterialKind::Agent,
                format!("agent certificate of {}", app.name),
                rel::agent_cert(),
            ),
            (
                MaterialKind::Leaf,
                format!("leaf of {}", app.name),
                rel::fullchain(app),
            ),
        ] {
            let pem = match &tree {
                Ok(t) => t.read(&file).map_err(StepError::from),
                Err(e) => Err(StepError::Invalid {
                    what: app.home.display().to_string(),
                    reason: format!("{e:#}"),
                }),
            };
            add(
                Labels::app(kind, &app.name),
                what,
                app.home.join(&file).display().to_string(),
                bytes(pem),
            );
        }
    }
    if let Some(p) = &cfg.proxy
        && let (Some(home), Some(id)) = (&p.home, p.identity(&cfg.agents.domain))
    {
        let pem = crate::host::owner_of_user(&format!("[proxy] {}", p.name), p.user(), None)
            .and_then(|o| Ok(pki_ops::Tree::open(home, Some(o))?.read(&id.cert)?));
        add(
            Labels::of(MaterialKind::Proxy),
            "proxy client certificate".into(),
            home.join(&id.cert).display().to_string(),
            bytes(pem),
        );
    }
    inv.inventory.sort_by_key(|m| m.not_after_unix);
    inv
}

/// What a textfile reports besides the inventory.
#[derive(Debug, Default)]
pub struct Extra<'a> {
    /// `verify`'s verdict: how many checks failed.
    pub verify_failed: Option<usize>,
    /// The last run, resume or rollback.
    pub last_run: Option<&'a LastRun>,
}

/// The textfile: every metric of the table above, each series once.
pub fn textfile(env: &str, inventory: &[Material], taken: i64, extra: &Extra<'_>) -> String {
    let mut out = String::new();
    let env = format!("env=\"{}\"", escape(env));
    let mut family = |name: &str, help: &str, samples: &[(String, i64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    let certs: Vec<(String, i64)> = inventory
        .iter()
        .map(|m| {
            let labels = format!(
                "{env},kind=\"{}\",app=\"{}\",node=\"{}\",serial=\"{}\",location=\"{}\"",
                m.kind.as_str(),
                escape(m.app.as_deref().unwrap_or_default()),
                escape(m.node.as_deref().unwrap_or_default()),
                escape(&m.serial_hex),
                escape(&m.location)
            );
            (labels, m.not_after_unix)
        })
        .filter(|(labels, _)| seen.insert(labels.clone()))
        .collect();
    family(
        "rotate_certificate_expiry_timestamp_seconds",
        "Not-after of each certificate rotate manages, unix seconds.",
        &certs,
    );
    family(
        "rotate_inventory_timestamp_seconds",
        "When the inventory was taken, unix seconds.",
        &[(env.clone(), taken)],
    );
    if let Some(failed) = extra.verify_failed {
        family(
            "rotate_verify_success",
            "1 when rotate verify passed every check, else 0.",
            &[(env.clone(), i64::from(failed == 0))],
        );
        family(
            "rotate_verify_checks_failed",
            "How many checks rotate verify failed.",
            &[(env.clone(), failed as i64)],
        );
    }
    if let Some(last) = extra.last_run {
        family(
            "rotate_last_run_exit_code",
            "Exit code of the last rotate run, resume or rollback.",
            &[(
                format!("{env},mode=\"{}\"", escape(&last.mode)),
                i64::from(last.exit_code),
            )],
        );
        family(
            "rotate_last_run_timestamp_seconds",
            "When the last rotate run, resume or rollback ended, unix seconds.",
            &[(env.clone(), last.finished_unix)],
        );
        if let Some(ok) = last.last_success_unix {
            family(
                "rotate_last_success_timestamp_seconds",
                "When a rotate run last ended with exit 0, unix seconds.",
                &[(env.clone(), ok)],
            );
        }
    }
    out
}

/// A label value as the text format wants it: `\`, `"` and line feeds escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes `text` to `path` atomically (a temp file in the same directory, synced, then
/// renamed over it; mode 0644, as the collector reads it), never following a symlink.
/// The directory must be root's (or the caller's).
pub fn write_textfile(path: &Path, text: &str) -> Result<(), StepError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(StepError::Invalid {
            what: path.display().to_string(),
            reason: "not a file path".into(),
        });
    };
    if !name.to_string_lossy().ends_with(".prom") {
        return Err(StepError::Invalid {
            what: path.display().to_string(),
            reason: "node_exporter's textfile collector reads only files ending in .prom".into(),
        });
    }
    let tree = pki_ops::Tree::open(dir, Some(pki_ops::Owner::current()))?;
    let set = pki_ops::MaterialSet::new().with(
        pki_ops::FileSpec::new(Path::new(name), 0o644),
        text.as_bytes().to_vec(),
    );
    let staged = set.stage(&tree, "metrics")?;
    let undo = staged.undo_records();
    staged.commit()?;
    for u in &undo {
        pki_ops::discard_prev(u, Some(pki_ops::Owner::current()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text format's grammar, strictly: `# HELP`/`# TYPE` lines, then samples
    /// `name{label="value",...} number` with every family's samples after its TYPE.
    /// One sample: metric name, labels in order, value.
    type Sample = (String, Vec<(String, String)>, f64);

    pub(crate) fn parse(text: &str) -> Vec<Sample> {
        let mut typed = std::collections::BTreeSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                assert!(rest.split_once(' ').is_some(), "HELP without text: {line}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert_eq!(kind, "gauge", "{line}");
                assert!(typed.insert(name.to_owned()), "TYPE twice: {line}");
                continue;
            }
            let (name, rest) = line.split_once('{').expect("name{labels} value");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "metric name {name}"
            );
            assert!(typed.contains(name), "sample before its TYPE: {line}");
            let mut labels = Vec::new();
            let mut chars = rest.chars().peekable();
            loop {
                let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{key}"
                );
                assert_eq!(chars.next(), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("unterminated value") {
                        '\\' => match chars.next() {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.push((key, value));
                match chars.next() {
                    Some(',') => continue,
                    Some('}') => break,
                    other => panic!("{other:?} after a label in {line}"),
                }
            }
            let value: String = chars.collect();
            let value = value.strip_prefix(' ').expect("one space before the value");
            samples.push((
                name.to_owned(),
                labels,
                value.parse::<f64>().expect("a number"),
            ));
        }
        samples
    }

    #[test]
    fn the_textfile_follows_the_exposition_format_and_escapes_label_values() {
        let (_, pem) = crate::testing::ca_and_leaf("Test CA");
        let leaf = pki_ops::CertInfo::from_pem_labeled(&pem, "leaf").unwrap();
        let m = Material::new(
            Labels::app(MaterialKind::Leaf, "a\"b"),
            "leaf of a\"b",
            "/srv/a\"b\\x/tls/\nleaf.pem",
            &leaf,
            1_700_000_000,
        );
        let last = LastRun {
            run_id: Some("r1".into()),
            mode: "run".into(),
            exit_code: 5,
            finished_unix: 1_700_000_100,
            last_success_unix: Some(1_699_000_000),
        };
        let text = textfile(
            "prod",
            &[m.clone(), m],
            1_700_000_200,
            &Extra {
                verify_failed: Some(2),
                last_run: Some(&last),
            },
        );
        let samples = parse(&text);
        let cert: Vec<_> = samples
            .iter()
            .filter(|s| s.0 == "rotate_certificate_expiry_timestamp_seconds")
            .collect();
        assert_eq!(cert.len(), 1, "one series per certificate: {text}");
        let labels: std::collections::BTreeMap<_, _> = cert[0].1.iter().cloned().collect();
        assert_eq!(labels["app"], "a\"b");
        assert_eq!(labels["location"], "/srv/a\"b\\x/tls/\nleaf.pem");
        assert_eq!(labels["kind"], "leaf");
        assert_eq!(cert[0].2, leaf.not_after as f64);
        assert_eq!(cert[0].2, 1_769_817_600.0, "2026-01-31T00:00:00Z");
        let value = |n: &str| samples.iter().find(|s| s.0 == n).map(|s| s.2);
        assert_eq!(value("rotate_verify_success"), Some(0.0));
        assert_eq!(value("rotate_verify_checks_failed"), Some(2.0));
        assert_eq!(value("rotate_last_run_exit_code"), Some(5.0));
        assert_eq!(
            value("rotate_last_success_timestamp_seconds"),
            Some(1_699_000_000.0)
        );
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(crate::checks::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(crate::checks::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(
            crate::checks::rfc3339(1_798_761_599),
            "2026-12-31T23:59:59Z"
        );
        assert_eq!(crate::checks::rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn the_textfile_is_replaced_atomically_and_only_as_a_prom_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rotate.prom");
        write_textfile(&path, "a 1\n").unwrap();
        write_textfile(&path, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            [std::ffi::OsString::from("rotate.prom")],
            "no temp or previous copy left"
        );
        assert!(write_textfile(&dir.path().join("rotate.txt"), "").is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(
            write_textfile(&link.join("x.prom"), "").is_err(),
            "a symlinked directory is refused"
        );
    }
}
