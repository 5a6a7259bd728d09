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

/// One managed certificate and when it expires.
#[derive(Debug, Clone, Serialize)]
pub struct Material {
    /// What it is (`admin certificate`, `leaf of ncprd1`, ...).
    pub what: String,
    /// Where it lives (a file, or `served by the listener`).
    pub location: String,
    /// Serial, `aa:bb` hex.
    pub serial_hex: String,
    /// Not after.
    pub not_after: String,
    /// Days left (negative: expired).
    pub days_left: i64,
    /// Hours left (negative: expired).
    pub hours_left: i64,
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
        what: impl Into<String>,
        location: impl Into<String>,
        c: &pki_ops::CertInfo,
        now: i64,
    ) {
        self.inventory.push(Material {
            what: what.into(),
            location: location.into(),
            serial_hex: c.serial_hex.clone(),
            not_after: c.not_after_human.clone(),
            days_left: (c.not_after - now).div_euclid(86_400),
            hours_left: (c.not_after - now).div_euclid(3600),
        });
    }

    /// The listener certificate as `served`, into the inventory.
    pub(crate) fn served(&mut self, what: &str, location: &str, s: &Served, now: i64) {
        let left = pki_ops::parse_bundle(&s.chain_pem, "served")
            .ok()
            .and_then(|c| c.first().map(|c| c.not_after - now))
            .unwrap_or_default();
        self.inventory.push(Material {
            what: what.to_owned(),
            location: location.to_owned(),
            serial_hex: s.serial_hex.clone(),
            not_after: s.not_after.clone(),
            days_left: left.div_euclid(86_400),
            hours_left: left.div_euclid(3600),
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
