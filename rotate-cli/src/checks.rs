//! What step 0 (preflight) and `rotate verify` report: named checks, each passed or
//! failed with what was seen, and verify's expiry inventory.

use serde::Serialize;

use crate::exit::Exit;
use crate::served::Served;

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `vault unsealed`, `home of ncprd1`.
    pub name: String,
    /// Passed?
    pub ok: bool,
    /// What was seen, or why it failed and what to do.
    pub detail: String,
    /// Exit class when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<u8>,
}

/// The preflight's findings.
#[derive(Debug, Clone, Serialize)]
pub struct PreflightReport {
    /// The checks, in the order made.
    pub checks: Vec<Check>,
    /// The PKI mount's CA chain, once verified (the steps use it).
    #[serde(skip)]
    pub ca_chain: Option<String>,
}

impl PreflightReport {
    /// Every check passed.
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The exit code of the first failure (`Ok` when ready).
    pub fn exit(&self) -> Exit {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .filter_map(|c| c.class.and_then(Exit::from_code))
            .fold(Exit::Ok, Exit::worst)
    }

    pub(crate) fn push(
        &mut self,
        name: impl Into<String>,
        r: Result<String, (Exit, String)>,
    ) -> bool {
        let ok = r.is_ok();
        let (class, detail) = match r {
            Ok(d) => (None, d),
            Err((e, d)) => (Some(e.code()), d),
        };
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail,
            class,
        });
        ok
    }
}

/// Which certificate of the order a [`Material`] is (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaterialKind {
    /// The admin's client certificate (step 1).
    Admin,
    /// A listener's certificate, as served or on disk (step 2).
    Listener,
    /// An agent's login certificate (step 3).
    Agent,
    /// An app's leaf (step 4).
    Leaf,
    /// The proxy's client certificate (step 5).
    Proxy,
    /// A CA of the PKI mount's chain.
    Ca,
}

impl MaterialKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MaterialKind::Admin => "admin",
            MaterialKind::Listener => "listener",
            MaterialKind::Agent => "agent",
            MaterialKind::Leaf => "leaf",
            MaterialKind::Proxy => "proxy",
            MaterialKind::Ca => "ca",
        }
    }
}

/// What a [`Material`] belongs to: its kind, and the app or node it is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// Which certificate of the order.
    pub kind: MaterialKind,
    /// The app (agent and leaf certificates).
    pub app: Option<String>,
    /// The node (a cluster's listeners).
    pub node: Option<String>,
}

impl Labels {
    /// A certificate of the deployment as a whole.
    pub fn of(kind: MaterialKind) -> Labels {
        Labels {
            kind,
            app: None,
            node: None,
        }
    }

    /// A certificate of app `app`.
    pub fn app(kind: MaterialKind, app: &str) -> Labels {
        Labels {
            app: Some(app.to_owned()),
            ..Labels::of(kind)
        }
    }

    /// A certificate of node `node`.
    pub fn node(kind: MaterialKind, node: &str) -> Labels {
        Labels {
            node: Some(node.to_owned()),
            ..Labels::of(kind)
        }
    }
}

/// One managed certificate and when it expires.
#[derive(Debug, Clone, Serialize)]
pub struct Material {
    /// Which certificate of the order.
    pub kind: MaterialKind,
    /// The app it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The node it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What it is (`admin certificate`, `leaf of ncprd1`, ...).
    pub what: String,
    /// Where it lives (a file, or `served by the listener`).
    pub location: String,
    /// Serial, `aa:bb` hex.
    pub serial_hex: String,
    /// Not after, as openssl prints it (`Jan  2 03:04:05 2027 GMT`).
    pub not_after: String,
    /// Not after, unix seconds.
    pub not_after_unix: i64,
    /// Not after, RFC 3339 (UTC).
    pub not_after_rfc3339: String,
    /// Days left (negative: expired).
    pub days_left: i64,
    /// Hours left (negative: expired).
    pub hours_left: i64,
}

impl Material {
    /// Certificate `c` as `what` at `location`, its time left counted from `now`.
    pub fn new(
        labels: Labels,
        what: impl Into<String>,
        location: impl Into<String>,
        c: &pki_ops::CertInfo,
        now: i64,
    ) -> Material {
        Material {
            not_after: c.not_after_human.clone(),
            ..Material::at(labels, what, location, &c.serial_hex, c.not_after, now)
        }
    }

    fn at(
        labels: Labels,
        what: impl Into<String>,
        location: impl Into<String>,
        serial_hex: &str,
        not_after: i64,
        now: i64,
    ) -> Material {
        Material {
            kind: labels.kind,
            app: labels.app,
            node: labels.node,
            what: what.into(),
            location: location.into(),
            serial_hex: serial_hex.to_owned(),
            not_after: String::new(),
            not_after_unix: not_after,
            not_after_rfc3339: rfc3339(not_after),
            days_left: (not_after - now).div_euclid(86_400),
            hours_left: (not_after - now).div_euclid(3600),
        }
    }
}

/// Unix seconds as RFC 3339 in UTC (`2027-01-02T03:04:05Z`), proleptic Gregorian.
pub(crate) fn rfc3339(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Civil from days (H. Hinnant's algorithm), days since 1970-01-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// What `rotate verify` found.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    /// Environment.
    pub env: String,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Every managed certificate, soonest expiry first.
    pub inventory: Vec<Material>,
    /// 0 when every check passed, 11 otherwise.
    pub exit_code: u8,
    /// One line.
    pub summary: String,
}

impl VerifyReport {
    /// The exit code.
    pub fn exit(&self) -> Exit {
        Exit::from_code(self.exit_code).unwrap_or(Exit::Failure)
    }

    pub(crate) fn check(&mut self, name: impl Into<String>, r: Result<String, String>) {
        let ok = r.is_ok();
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail: r.unwrap_or_else(|e| e),
            class: (!ok).then_some(Exit::VerifyFailed.code()),
        });
    }

    pub(crate) fn material(
        &mut self,
        labels: Labels,
        what: impl Into<String>,
        location: impl Into<String>,
        c: &pki_ops::CertInfo,
        now: i64,
    ) {
        self.inventory
            .push(Material::new(labels, what, location, c, now));
    }

    /// The listener certificate as `served`, into the inventory.
    pub(crate) fn served(
        &mut self,
        labels: Labels,
        what: &str,
        location: &str,
        s: &Served,
        now: i64,
    ) {
        let not_after = pki_ops::parse_bundle(&s.chain_pem, "served")
            .ok()
            .and_then(|c| c.first().map(|c| c.not_after))
            .unwrap_or_default();
        self.inventory.push(Material {
            not_after: s.not_after.clone(),
            ..Material::at(labels, what, location, &s.serial_hex, not_after, now)
        });
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "ok" } else { "FAIL" };
        write!(f, "[{mark}] {}: {}", self.name, self.detail)
    }
}

impl std::fmt::Display for PreflightReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Step 0: preflight")?;
        for c in &self.checks {
            writeln!(f, "  {c}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::text::escaped(f, |f| {
            writeln!(f, "rotate verify ({})", self.env)?;
            for c in &self.checks {
                writeln!(f, "  {c}")?;
            }
            writeln!(f, "\nExpiry inventory (soonest first):")?;
            for m in &self.inventory {
                writeln!(
                    f,
                    "  {:>5} d  {}  {}  ({})",
                    m.days_left, m.not_after, m.what, m.location
                )?;
            }
            writeln!(f, "\n{} (exit {})", self.summary, self.exit_code)
        })
    }
}

/// `29 d`, or `23 h` under two days.
pub(crate) fn left(m: &Material) -> String {
    if m.days_left < 2 {
        format!("{} h", m.hours_left)
    } else {
        format!("{} d", m.days_left)
    }
}
