//! What the listener serves, as a real client sees it on a new connection: the served
//! certificate's serial (polled until a wanted one shows up, since a reload is
//! asynchronous) and the diagnosis of a failure. Used by step 2's gate, its undo, and
//! the admin identity gates.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::deps::GateConnector;

/// One look at the listener.
#[derive(Debug, Clone, Serialize)]
pub struct Served {
    /// Serial of the served leaf, `aa:bb` hex.
    pub serial_hex: String,
    /// Its CN.
    pub cn: String,
    /// Its not-after.
    pub not_after: String,
    /// The whole served chain, PEM (to verify against client bundles).
    #[serde(skip)]
    pub chain_pem: String,
    /// HTTP status of `sys/seal-status` on that connection, when there was one.
    pub seal_status: Option<u16>,
    /// Why there was none (e.g. client certificate rejected after a TLS 1.3 handshake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_status_error: Option<String>,
    /// Sealed, per `sys/seal-status`.
    pub sealed: bool,
    /// The issuers the listener named as acceptable for client certificates (DER), i.e.
    /// the `tls_client_ca_file` it has loaded; `None` when it asked for none.
    #[serde(skip)]
    pub client_cas: Option<Vec<Vec<u8>>>,
}

/// One handshake with `identity` trusting only `ca`: what the listener serves now.
pub async fn look(
    gate: &dyn GateConnector,
    identity: Option<(&Path, &Path)>,
    ca: &Path,
    timeout: Duration,
) -> Result<Served, String> {
    let h = gate
        .handshake(
            identity.map(|(c, k)| (c.to_owned(), k.to_owned())),
            ca,
            timeout,
        )
        .await
        .map_err(|e| format!("{e}; {}", e.next_action()))?;
    let leaf = h
        .peer_chain
        .first()
        .ok_or("the listener presented no certificate")?;
    let info = pki_ops::CertInfo::from_der(leaf, "served listener certificate")
        .map_err(|e| e.to_string())?;
    let mut chain_pem = String::new();
    for d in &h.peer_chain {
        chain_pem
            .push_str(&pki_ops::der_to_pem(d, "served listener chain").map_err(|e| e.to_string())?);
    }
    let (seal_status, seal_status_error) = match &h.seal_status {
        Ok(code) => (Some(*code), None),
        Err((kind, msg)) => (None, Some(format!("{kind}: {msg}; {}", kind.next_action()))),
    };
    Ok(Served {
        serial_hex: info.serial_hex.clone(),
        cn: info.cn().to_owned(),
        not_after: info.not_after_human.clone(),
        chain_pem,
        seal_status,
        seal_status_error,
        sealed: h.sealed,
        client_cas: h.acceptable_client_cas,
    })
}

/// How the issuers a running listener accepts client certificates from differ from
/// those its `tls_client_ca_file` lists now (SIGHUP never reloads that file). A
/// handshake names issuers by subject only, so a re-keyed CA under the same name is seen
/// by the file's change time instead: later than the server's start (its pid file).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientCaDrift {
    /// The file.
    pub file: String,
    /// Listed in the file, not accepted by the running listener (yet).
    pub not_loaded: Vec<String>,
    /// Accepted by the running listener, no longer in the file.
    pub still_accepted: Vec<String>,
    /// The file changed after the server started (names alike or not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_since_start: Option<String>,
}

impl ClientCaDrift {
    /// The listener has loaded the file as it is.
    pub fn is_empty(&self) -> bool {
        self.not_loaded.is_empty()
            && self.still_accepted.is_empty()
            && self.changed_since_start.is_none()
    }
}

impl std::fmt::Display for ClientCaDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return write!(
                f,
                "the running listener accepts exactly the issuers of {} (by subject)",
                self.file
            );
        }
        write!(
            f,
            "the running listener has not loaded {} (SIGHUP never reloads it; a restart does)",
            self.file
        )?;
        let mut sep = ":";
        if !self.not_loaded.is_empty() {
            write!(f, "{sep} it does not accept {:?} yet", self.not_loaded)?;
            sep = ";";
        }
        if !self.still_accepted.is_empty() {
            write!(
                f,
                "{sep} it still accepts {:?}, no longer in the file",
                self.still_accepted
            )?;
            sep = ";";
        }
        if let Some(c) = &self.changed_since_start {
            write!(f, "{sep} {c}")?;
        }
        Ok(())
    }
}

/// When the listener's server started, as far as this host can tell: the mtime of the
/// pid file `[listener] reload = "signal:<pid file>:..."` names (the server writes it at
/// start), with that file.
pub(crate) fn server_started(
    cfg: &crate::config::Config,
) -> Option<(std::time::SystemTime, std::path::PathBuf)> {
    // A single server's (step 6 restarts a cluster node by node).
    let reload = cfg
        .listener
        .as_ref()?
        .reload
        .as_deref()?
        .parse::<hooks::Reloader>()
        .ok()?;
    let hooks::Reloader::Signal { pid_file, .. } = reload else {
        return None;
    };
    let owner = crate::host::vault_owner(cfg).ok().flatten();
    match crate::host::stat_root_file(&pid_file, owner) {
        Ok(Some(meta)) => Some((meta.modified, pid_file)),
        Ok(None) => {
            tracing::warn!(pid_file = %pid_file.display(), "no pid file: the client CA file's change time is not checked");
            None
        }
        Err(e) => {
            tracing::warn!(pid_file = %pid_file.display(), error = %e, "pid file unreadable: the client CA file's change time is not checked");
            None
        }
    }
}

/// Compare the issuers `served` named as acceptable with the certificates of `file`
/// (the server's `tls_client_ca_file`, by subject; read without following a symlink, its
/// directories owned by root or the Vault user), and the file's change time with the
/// server's start ([`server_started`]).
pub(crate) fn client_ca_drift(
    served: &Served,
    cfg: &crate::config::Config,
    file: &Path,
) -> Result<ClientCaDrift, String> {
    let started = server_started(cfg);
    let owner = crate::host::vault_owner(cfg).map_err(|e| e.to_string())?;
    let accepted = served.client_cas.as_ref().ok_or_else(|| {
        "the listener asked for no client certificate, so it names no client CA: is tls_client_ca_file set on it?".to_owned()
    })?;
    if accepted.is_empty() {
        return Err("the listener asks for a client certificate but names no acceptable issuer, so what it loaded cannot be told from a handshake: check its tls_client_ca_file by hand".into());
    }
    let shown = file.display().to_string();
    let bytes = crate::host::read_root_file(file, owner)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{shown} is missing"))?;
    let listed = pki_ops::parse_bundle(&String::from_utf8_lossy(&bytes), &shown)
        .map_err(|e| e.to_string())?;
    let name = |der: &Vec<u8>| {
        pki_ops::distinguished_name(der).unwrap_or_else(|| format!("<{} bytes>", der.len()))
    };
    let mut drift = ClientCaDrift {
        file: shown,
        ..Default::default()
    };
    for c in &listed {
        if !accepted.contains(&c.subject_der) && !drift.not_loaded.contains(&c.subject) {
            drift.not_loaded.push(c.subject.clone());
        }
    }
    for a in accepted {
        if !listed.iter().any(|c| &c.subject_der == a) {
            drift.still_accepted.push(name(a));
        }
    }
    if let Some((at, pid_file)) = &started
        && let Ok(Some(meta)) = crate::host::stat_root_file(file, owner)
        && meta.modified > *at
    {
        drift.changed_since_start = Some(format!(
            "it changed after the server started (newer than {})",
            pid_file.display()
        ));
    }
    Ok(drift)
}

/// Why waiting for a serial failed.
#[derive(Debug, Clone)]
pub enum WaitError {
    /// The listener answered every time, but kept serving another certificate: the reload
    /// did not take effect (OpenBao keeps the old certificate when the new pair is
    /// unusable and only logs it).
    StillServing {
        /// What it serves.
        serial_hex: String,
        /// Handshakes made.
        tries: u32,
    },
    /// The listener could not be reached or refused the handshake until the deadline.
    Unreachable {
        /// The last failure, with its diagnosis.
        last: String,
    },
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::StillServing { serial_hex, tries } => write!(
                f,
                "the reload did not take effect: the listener still serves serial {serial_hex} after {tries} handshakes (OpenBao keeps its old certificate when the new key does not match it or a file is unreadable, and only logs it: see the server log)"
            ),
            WaitError::Unreachable { last } => write!(f, "the listener did not answer: {last}"),
        }
    }
}

/// Handshake until the listener serves `want` (hex serial), or `deadline` passes.
pub async fn wait_for_serial(
    gate: &dyn GateConnector,
    identity: Option<(&Path, &Path)>,
    ca: &Path,
    want: &str,
    deadline: Duration,
) -> Result<Served, WaitError> {
    let until = tokio::time::Instant::now() + deadline;
    let mut tries = 0u32;
    let per_try = Duration::from_secs(5).min(deadline.max(Duration::from_millis(500)));
    let mut pause = crate::pause::Pause::new();
    let last = loop {
        tries += 1;
        let seen = match look(gate, identity, ca, per_try).await {
            Ok(s) if s.serial_hex.eq_ignore_ascii_case(want) => return Ok(s),
            other => other,
        };
        if tokio::time::Instant::now() >= until {
            break seen;
        }
        tokio::time::sleep(pause.next()).await;
    };
    Err(match last {
        Ok(s) => WaitError::StillServing {
            serial_hex: s.serial_hex,
            tries,
        },
        Err(last) => WaitError::Unreachable { last },
    })
}

/// What proving an admin identity showed.
#[derive(Debug, Clone, Serialize)]
pub struct AdminIdentity {
    /// The listener as this identity sees it.
    pub listener: Served,
    /// The token's policies, looked up over that identity.
    pub policies: Vec<String>,
}

/// Prove the admin identity in `cert`/`key`, trusting only `ca`, as a brand-new client:
/// the listener accepts it (`sys/seal-status` answered over a raw handshake) and the
/// admin token still works over it (`auth/token/lookup-self`). The error says what
/// failed and what to do.
pub async fn prove_admin(
    gate: &dyn GateConnector,
    cert: &Path,
    key: &Path,
    ca: &Path,
    timeout: Duration,
) -> Result<AdminIdentity, String> {
    let listener = look(gate, Some((cert, key)), ca, timeout).await?;
    match (listener.seal_status, &listener.seal_status_error) {
        (Some(200), _) => {}
        (Some(code), _) => {
            return Err(format!(
                "sys/seal-status answered HTTP {code}{}",
                if listener.sealed {
                    ": Vault is sealed; unseal it, then run again"
                } else {
                    ""
                }
            ));
        }
        (None, err) => {
            return Err(err
                .clone()
                .unwrap_or_else(|| "no answer to sys/seal-status".into()));
        }
    }
    let client = gate
        .admin_client(cert, key, ca)
        .map_err(|e| format!("{e}; {}", e.next_action()))?;
    let token = client
        .lookup_self()
        .await
        .map_err(|e| format!("{e}; {}", e.next_action()))?;
    Ok(AdminIdentity {
        listener,
        policies: token.policies,
    })
}

/// The active node's address, as the node the admin reaches says (`sys/leader`).
async fn c_leader(gate: &dyn GateConnector, cert: &Path, key: &Path, ca: &Path) -> Option<String> {
    let c = gate.admin_client(cert, key, ca).ok()?;
    let l = c.leader().await.ok()?;
    (!l.leader_address.is_empty()).then_some(l.leader_address)
}

/// What a passed healthcheck saw.
#[derive(Debug, Clone, Serialize)]
pub struct HealthProof {
    /// What the listener serves (the last of the consecutive checks).
    pub listener: Served,
    /// How many consecutive checks passed.
    pub consecutive: u32,
    /// How many attempts it took (failed ones included).
    pub attempts: u32,
    /// Failures seen before the run of successes (each with its diagnosis).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transient_failures: Vec<String>,
    /// `sys/health` as the admin identity sees it (`active`, `standby`, ...).
    pub state: String,
    /// Every node of a cluster (`[[listener.nodes]]`), each seen at its own address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterHealth>,
}

/// A cluster as the healthcheck saw it: each node at its own address, and raft as
/// autopilot sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterHealth {
    /// Each node.
    pub nodes: Vec<NodeHealth>,
    /// How many voters may fail with a quorum kept (autopilot), when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_tolerance: Option<u32>,
    /// The raft servers (`<id>: <node status> <status>, healthy|UNHEALTHY`).
    pub raft: Vec<String>,
    /// What needs the operator: a node down or sealed, an unhealthy raft server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attention: Vec<String>,
}

/// One node of a cluster, seen at its own address.
#[derive(Debug, Clone, Serialize)]
pub struct NodeHealth {
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// The serial it serves, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Sealed, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed: Option<bool>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a healthcheck failed.
#[derive(Debug, Clone)]
pub struct HealthFailure {
    /// Vault answered sealed (the run can be resumed after unsealing).
    pub sealed: bool,
    /// The last failure, with its diagnosis and the next action.
    pub reason: String,
}

impl std::fmt::Display for HealthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The final healthcheck (step 7, `rotate health`): `consecutive` checks in a row, each
/// a raw TLS handshake with the SNI name on a new connection presenting the admin
/// identity plus `sys/seal-status` on it, retried with backoff (100 ms doubling to 2 s)
/// through a restart window of `window`; then `sys/health` over a fresh admin client
/// (a standby is a failure: point the address at the active node).
pub async fn healthcheck(
    gate: &dyn GateConnector,
    (cert, key, ca): (&Path, &Path, &Path),
    consecutive: u32,
    window: Duration,
) -> Result<HealthProof, HealthFailure> {
    let until = tokio::time::Instant::now() + window;
    let mut backoff = Duration::from_millis(100);
    let (mut attempts, mut in_a_row) = (0u32, 0u32);
    let mut failures: Vec<String> = Vec::new();
    let mut sealed = false;
    loop {
        attempts += 1;
        let r = look(gate, Some((cert, key)), ca, Duration::from_secs(5)).await;
        let failure = match r {
            Ok(s) if s.seal_status == Some(200) && !s.sealed => {
                in_a_row += 1;
                if in_a_row >= consecutive.max(1) {
                    let state = match gate.admin_client(cert, key, ca) {
                        Ok(c) => match c.health().await {
                            Ok(h) => format!("{:?}", h.state).to_lowercase(),
                            Err(e) => {
                                return Err(HealthFailure {
                                    sealed: false,
                                    reason: format!("sys/health: {e}; {}", e.next_action()),
                                });
                            }
                        },
                        Err(e) => {
                            return Err(HealthFailure {
                                sealed: false,
                                reason: format!("{e}; {}", e.next_action()),
                            });
                        }
                    };
                    let state = match state.as_str() {
                        "active" => state,
                        // A standby forwards to the active node: healthy, saying which.
                        "standby" | "performancestandby" => match c_leader(gate, cert, key, ca).await {
                            Some(active) => format!("{state}, forwarding to the active node {active}"),
                            None => {
                                return Err(HealthFailure {
                                    sealed: false,
                                    reason: format!(
                                        "sys/health says {state} and no active node is elected (sys/leader): the cluster has lost its quorum or is electing; check every node"
                                    ),
                                });
                            }
                        },
                        _ => {
                            return Err(HealthFailure {
                                sealed: state == "sealed",
                                reason: format!(
                                    "sys/health says {state}: point [vault] addr at the active node{} (or unseal it)",
                                    c_leader(gate, cert, key, ca)
                                        .await
                                        .map(|a| format!(" ({a})"))
                                        .unwrap_or_default()
                                ),
                            });
                        }
                    };
                    return Ok(HealthProof {
                        listener: s,
                        consecutive: in_a_row,
                        attempts,
                        transient_failures: failures,
                        state,
                        cluster: None,
                    });
                }
                None
            }
            Ok(s) if s.sealed => Some((
                true,
                "Vault is sealed (it restarted?): unseal it (`bao operator unseal`), then `rotate run --resume`".to_owned(),
            )),
            Ok(s) => Some((
                false,
                match (s.seal_status, s.seal_status_error) {
                    (Some(code), _) => format!("sys/seal-status answered HTTP {code}"),
                    (None, Some(e)) => e,
                    (None, None) => "no answer to sys/seal-status".into(),
                },
            )),
            Err(e) => Some((false, e)),
        };
        if let Some((was_sealed, f)) = failure {
            in_a_row = 0;
            // The last failure decides: sealed only if the listener last said so.
            sealed = was_sealed;
            if failures.last() != Some(&f) {
                failures.push(f);
            }
        }
        if tokio::time::Instant::now() >= until {
            return Err(HealthFailure {
                sealed,
                reason: format!(
                    "no {consecutive} consecutive healthy checks within {window:?} ({attempts} attempts); last failure: {}",
                    failures.last().cloned().unwrap_or_default()
                ),
            });
        }
        if in_a_row == 0 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
