//! Steps 1 and 2 (admin client certificate, listener certificate) against their own lab
//! (`tls_lab`: these tests replace its admin identity and listener certificate), judged
//! by real clients: `bao status`, `openssl s_client`, `openssl verify`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rotate_cli::Exit;
use rotate_tests::{Lab, SERVER_NAME, tls_lab, tls_lab_turn};
use vault_client::PkiApi;

use crate::support::{errors, rotate, target, tempdir};

/// The whole-order config of the TLS lab, journal in `dir`, plus `extra` lines appended
/// to `[section]` pairs given as `(section, lines)`.
fn tls_config(lab: &Lab, dir: &Path, extra: &[(&str, &str)]) -> PathBuf {
    let mut text = lab.rotate_config_full().replace(
        &lab.paths.dir.join("state").display().to_string(),
        &dir.join("state").display().to_string(),
    );
    for (section, lines) in extra {
        let header = format!("[{section}]\n");
        if text.contains(&header) {
            text = text.replacen(&header, &format!("{header}{lines}\n"), 1);
        } else {
            // A new section goes before the array of apps.
            let at = text.find("\n[[apps]]").unwrap_or(text.len());
            text.insert_str(at, &format!("\n{header}{lines}\n"));
        }
    }
    let path = dir.join("rotate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `bao status` as a real client with these admin files: its exit code and output.
fn bao_status(lab: &Lab, cert: &Path, key: &Path, ca: &Path) -> (i32, String) {
    crate::support::bao_status_env(
        lab,
        &[
            ("VAULT_ADDR", lab.addr.as_ref()),
            ("VAULT_CACERT", ca.as_os_str()),
            ("VAULT_CLIENT_CERT", cert.as_os_str()),
            ("VAULT_CLIENT_KEY", key.as_os_str()),
            ("VAULT_TLS_SERVER_NAME", SERVER_NAME.as_ref()),
        ],
    )
}

/// The serial `openssl s_client -servername vault.prod.privsec.ch` is served, as
/// upper-case hex without colons (how `openssl x509 -serial` prints it).
fn served_serial_openssl(lab: &Lab) -> String {
    let p = &lab.paths;
    let s_client = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", lab.port)])
        .args(["-servername", SERVER_NAME, "-verify_return_error"])
        .arg("-CAfile")
        .arg(&p.ca_bundle)
        .arg("-cert")
        .arg(&p.admin_cert)
        .arg("-key")
        .arg(&p.admin_key)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin
        .take()
        .unwrap()
        .write_all(&s_client.stdout)
        .unwrap();
    let out = x509.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| {
            panic!(
                "openssl s_client showed no certificate: {}",
                String::from_utf8_lossy(&s_client.stderr)
            )
        })
        .to_owned()
}

/// A "server" that ignores the reload: `[listener] reload` signals a `sleep` (SIGCONT)
/// through a pid file in `dir`, with `timeout` to wait for the new serial. Kill the
/// returned child when done.
/// A listener reload that reports success and changes nothing (`cmd:true`): the server
/// goes on serving its old certificate. (A `signal:` reloader would refuse a pid file
/// naming anything but the server, so the decoy is a command.)
fn decoy_reload(cfg: &Path, timeout: &str) {
    set_reload(cfg, "cmd:true", Some(timeout));
}

/// `rotate <args>` as a real process (JSON output discarded), to be killed mid-run.
fn rotate_child(cfg: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_rotate-child"))
        .arg("--config")
        .arg(cfg)
        .args(["--output", "json"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Replace the `[listener]` settings `reload` and `reload_timeout` of the config at `cfg`.
fn set_reload(cfg: &Path, reload: &str, timeout: Option<&str>) {
    let text = std::fs::read_to_string(cfg)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("reload = \"signal:") {
                format!("reload = \"{reload}\"")
            } else if let (true, Some(t)) = (l.starts_with("reload_timeout"), timeout) {
                format!("reload_timeout = \"{t}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(cfg, text).unwrap();
}

/// The names of rotate's temps and kept previous versions next to `file`.
fn rotate_files(file: &Path) -> Vec<String> {
    std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("rotate"))
        .collect()
}

fn openssl_hex(serial_hex: &str) -> String {
    serial_hex.replace(':', "").to_uppercase()
}

/// `openssl verify -CAfile bundle -untrusted chain leaf` on the listener's cert file.
fn openssl_verify(bundle: &Path, fullchain: &Path, dir: &Path) -> (bool, String) {
    let text = std::fs::read_to_string(fullchain).unwrap();
    let end = "-----END CERTIFICATE-----";
    let i = text.find(end).unwrap() + end.len();
    let leaf = dir.join("verify-leaf.pem");
    let chain = dir.join("verify-chain.pem");
    std::fs::write(&leaf, &text[..i]).unwrap();
    std::fs::write(&chain, text[i..].trim_start()).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(bundle)
        .arg("-untrusted")
        .arg(&chain)
        .arg(&leaf)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Every serial `mount` has issued (`LIST <mount>/certs`).
async fn list_certs(admin: &vault_client::VaultClient, mount: &str) -> Vec<String> {
    let v: Option<serde_json::Value> = admin
        .request(
            vault_client::Method::List,
            &format!("{mount}/certs"),
            None,
            vault_client::Idempotency::Idempotent,
        )
        .await
        .unwrap_or(None);
    v.and_then(|v| v["data"]["keys"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect()
}

fn copy_to(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    std::fs::copy(src, &dst).unwrap();
    dst
}

/// `pki-other`, a second PKI mount with its own root ("Rogue Root CA", not in the
/// listener's `tls_client_ca_file`) and a role `client` for any client name: made once,
/// its CA certificate returned.
async fn other_mount(admin: &vault_client::VaultClient) -> String {
    use vault_client::{Idempotency, Method, SysApi};
    if admin
        .read_ca_chain("pki-other")
        .await
        .map(|c| c.is_empty())
        .unwrap_or(true)
    {
        let _ = admin
            .enable_mount("pki-other", "pki", Default::default())
            .await;
        admin
            .request::<serde_json::Value>(
                Method::Post,
                "pki-other/root/generate/internal",
                Some(serde_json::json!({"common_name": "Rogue Root CA", "ttl": "8760h"})),
                Idempotency::NonIdempotent,
            )
            .await
            .unwrap();
        admin
            .request::<serde_json::Value>(
                Method::Post,
                "pki-other/roles/client",
                Some(serde_json::json!({
                    "allow_any_name": true, "client_flag": true, "server_flag": false,
                    "key_type": "ec", "key_bits": 256, "max_ttl": "1h",
                })),
                Idempotency::Idempotent,
            )
            .await
            .unwrap();
    }
    admin.read_ca_chain("pki-other").await.unwrap()
}

/// `rotate verify`'s "listener has loaded its client CA file" check: (passed, its
/// detail names Rogue Root CA).
async fn client_ca_check(cfg: &Path) -> (bool, bool) {
    let (_, v) = rotate(cfg, &["verify"]).await;
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "listener has loaded its client CA file")
        .unwrap_or_else(|| panic!("no client CA check: {v:#}"))
        .clone();
    (
        c["ok"].as_bool().unwrap(),
        c["detail"].as_str().unwrap().contains("Rogue Root CA"),
    )
}

/// The client CA names `openssl s_client` shows the listener asking for.
fn acceptable_client_cas_openssl(lab: &Lab) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", lab.port)])
        .args(["-servername", SERVER_NAME])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("Acceptable client certificate CA names")
        .nth(1)
        .and_then(|s| s.split("Requested Signature").next())
        .unwrap_or_else(|| panic!("openssl s_client shows no client CA names: {text}"))
        .to_owned()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[tokio::test]
async fn admin_then_listener_rotate_and_real_clients_agree() {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-happy");
    let cfg = tls_config(lab, &dir, &[]);
    let old_cert = copy_to(&p.admin_cert, &dir, "old-admin.crt");
    let old_key = copy_to(&p.admin_key, &dir, "old-admin.key");
    let before = served_serial_openssl(lab);

    let (exit, v) = rotate(&cfg, &["run", "--step", "admin", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let admin = &target(&v, "admin", "admin")["applied"];
    let listener = &target(&v, "listener", "listener")["applied"];
    assert_eq!(target(&v, "admin", "admin")["outcome"], "committed");
    assert_eq!(target(&v, "listener", "listener")["outcome"], "committed");

    // Step 1: the files hold the new identity, and `bao status` works with it.
    let on_disk = pki_ops::CertInfo::from_pem_file(&p.admin_cert).unwrap();
    assert_eq!(on_disk.serial_hex, admin["serial_hex"].as_str().unwrap());
    assert_eq!(
        std::fs::metadata(&p.admin_key)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    pki_ops::key_matches_cert_files(&p.admin_key, &p.admin_cert).unwrap();
    let (code, out) = bao_status(lab, &p.admin_cert, &p.admin_key, &p.ca_bundle);
    assert_eq!(code, 0, "bao status with the new admin files: {out}");
    // The old identity was not revoked: it keeps working until it expires.
    let (code, out) = bao_status(lab, &old_cert, &old_key, &p.ca_bundle);
    assert_eq!(code, 0, "bao status with the previous admin files: {out}");
    // The env file points at the files.
    let env = std::fs::read_to_string(p.dir.join("admin/env.sh")).unwrap();
    assert!(
        env.contains(&format!(
            "export VAULT_CLIENT_CERT='{}'",
            p.admin_cert.display()
        )) && env.contains("export BAO_CLIENT_KEY="),
        "{env}"
    );

    // Step 2: a real client sees the new serial, and every client bundle verifies it.
    let after = served_serial_openssl(lab);
    assert_ne!(
        after, before,
        "the listener still serves the old certificate"
    );
    assert_eq!(after, openssl_hex(listener["serial_hex"].as_str().unwrap()));
    assert_eq!(
        openssl_hex(listener["previous_serial"].as_str().unwrap()),
        before
    );
    for bundle in [&p.ca_bundle, &p.root_ca] {
        let (ok, out) = openssl_verify(bundle, &p.server_cert, &dir);
        assert!(ok, "openssl verify with {}: {out}", bundle.display());
    }
    let (code, out) = bao_status(lab, &p.admin_cert, &p.admin_key, &p.ca_bundle);
    assert_eq!(code, 0, "bao status after the listener swap: {out}");
    assert_eq!(
        std::fs::metadata(&p.server_key)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn an_admin_cert_from_a_ca_the_listener_does_not_trust_is_refused_before_any_file_changes() {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let admin = lab.admin_client().unwrap();
    other_mount(&admin).await;
    let dir = tempdir("tls-untrusted");
    let cfg = tls_config(lab, &dir, &[("admin", "mount = \"pki-other\"")]);
    let files = [&p.admin_cert, &p.admin_key, &p.ca_bundle];
    let before: Vec<Vec<u8>> = files.iter().map(|f| bytes(f)).collect();
    let certs_before = list_certs(&admin, "pki-other").await;

    let (exit, v) = rotate(&cfg, &["run", "--step", "admin"]).await;
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    let err = errors(&v);
    assert!(err.contains("lockout guard"), "{err}");
    // What the listener does accept, as its handshake named it.
    assert!(
        err.contains("accepts client certificates issued by") && err.contains("PrivSec Root CA"),
        "{err}"
    );
    // The cause as the listener showed it: the certificate was refused, not a timeout.
    assert!(
        err.contains("client certificate rejected") || err.contains("connection reset"),
        "{err}"
    );
    let t = target(&v, "admin", "admin");
    assert_eq!(t["outcome"], "rolled_back", "{t:#}");
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&bytes(f), b, "{} changed", f.display());
    }
    // The certificate it issued is revoked.
    let certs_after = list_certs(&admin, "pki-other").await;
    let new: Vec<&String> = certs_after
        .iter()
        .filter(|s| !certs_before.contains(s))
        .collect();
    assert_eq!(new.len(), 1, "{certs_after:?}");
    let rec = admin.read_cert("pki-other", new[0]).await.unwrap().unwrap();
    assert_ne!(rec.revocation_time, 0, "issued certificate not revoked");
    // And the operator still has `bao status`.
    let (code, out) = bao_status(lab, &p.admin_cert, &p.admin_key, &p.ca_bundle);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn a_client_bundle_that_would_not_verify_the_new_chain_stops_step_2_before_it_writes() {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-bundle");
    // A bundle holding only an unrelated CA (what a stale proxy bundle looks like).
    let other = rotate_tests::LabCa::generate().unwrap();
    let stale = dir.join("stale-proxy-ca.pem");
    std::fs::write(&stale, other.root_pem()).unwrap();
    let cfg = tls_config(
        lab,
        &dir,
        &[(
            "listener",
            &format!("client_bundles = [\"{}\"]", stale.display()),
        )],
    );
    let before = (bytes(&p.server_cert), bytes(&p.server_key));
    let served = served_serial_openssl(lab);
    let admin = lab.admin_client().unwrap();
    let certs_before = list_certs(&admin, "pki-prod").await.len();

    let (exit, v) = rotate(&cfg, &["run", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = errors(&v);
    assert!(err.contains(&stale.display().to_string()), "{err}");
    assert_eq!((bytes(&p.server_cert), bytes(&p.server_key)), before);
    assert_eq!(served_serial_openssl(lab), served);
    assert_eq!(
        list_certs(&admin, "pki-prod").await.len(),
        certs_before,
        "a certificate was issued although the step stopped before writing"
    );
}

#[tokio::test]
async fn step_2_checks_the_proxy_bundle_the_way_nginx_does_and_names_it() {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-proxy-bundle");
    // The proxy's bundle holds only the intermediate: Go clients accept that, OpenSSL
    // (nginx's proxy_ssl_trusted_certificate) does not.
    let home = dir.join("proxy");
    std::fs::create_dir_all(home.join("tls")).unwrap();
    let bundle = home.join("tls/vault-ca.pem");
    std::fs::write(&bundle, lab.ca.intermediate_pem()).unwrap();
    let openssl_verify = |partial: bool| {
        let mut c = Command::new("openssl");
        c.arg("verify").arg("-CAfile").arg(&bundle);
        if partial {
            c.arg("-partial_chain");
        }
        c.arg("-untrusted").arg(&p.server_cert).arg(&p.server_cert);
        c.output().unwrap().status.success()
    };
    assert!(!openssl_verify(false) && openssl_verify(true));
    let proxy = |trust: &str| {
        format!(
            "home = \"{}\"\nuser = \"root\"\nca_bundle = \"tls/vault-ca.pem\"\ntrust = \"{trust}\"",
            home.display()
        )
    };
    let cfg = tls_config(lab, &dir, &[("proxy", &proxy("openssl"))]);
    let (exit, v) = rotate(&cfg, &["plan", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = errors(&v);
    assert!(
        err.contains(&bundle.display().to_string()) && err.contains("--step proxy"),
        "{err}"
    );
    // A proxy that verifies like Go does is satisfied with it.
    let cfg = tls_config(lab, &dir, &[("proxy", &proxy("go"))]);
    let (exit, v) = rotate(&cfg, &["plan", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Changes, "{v:#}");
    // Step 5 refreshes it with the mount's whole chain (root included): nginx's way passes.
    let cfg = tls_config(lab, &dir, &[("proxy", &proxy("openssl"))]);
    let (exit, v) = rotate(&cfg, &["run", "--step", "proxy"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert!(
        openssl_verify(false),
        "the refreshed bundle fails openssl verify"
    );
}

#[tokio::test]
async fn a_listener_reload_that_does_not_take_effect_is_detected_and_the_old_serial_is_served_again()
 {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-noreload");
    // A reload that does nothing: the server keeps serving its old certificate.
    let cfg = tls_config(lab, &dir, &[]);
    decoy_reload(&cfg, "2s");
    let before = (bytes(&p.server_cert), bytes(&p.server_key));
    let served = served_serial_openssl(lab);

    let (exit, v) = rotate(&cfg, &["run", "--step", "listener"]).await;
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    let err = errors(&v);
    assert!(err.contains("did not take effect"), "{err}");
    let t = target(&v, "listener", "listener");
    assert_eq!(t["outcome"], "rolled_back", "{t:#}");
    let undone = t["rollback"]["undone"].to_string();
    assert!(undone.contains("serves serial"), "{undone}");
    // Byte for byte, and the old serial is what a real client sees.
    assert_eq!((bytes(&p.server_cert), bytes(&p.server_key)), before);
    assert_eq!(served_serial_openssl(lab), served);
    // The certificate it issued is revoked.
    let serial = t["applied"]["serial_hex"].as_str().unwrap();
    let admin = lab.admin_client().unwrap();
    let rec = admin.read_cert("pki-prod", serial).await.unwrap().unwrap();
    assert_ne!(rec.revocation_time, 0);
}

#[tokio::test]
async fn a_real_server_that_keeps_its_old_cert_because_the_key_does_not_match_is_detected_and_restored()
 {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-mismatch");
    // The first reload plants a key that does not match the new certificate, then HUPs the
    // real bao: OpenBao accepts the signal, keeps its old certificate and only logs.
    let foreign = dir.join("foreign.key");
    let stranger = lab
        .ca
        .leaf(
            SERVER_NAME,
            &[SERVER_NAME],
            &[],
            true,
            time::Duration::days(1),
        )
        .unwrap();
    std::fs::write(&foreign, stranger.key_pem.as_bytes()).unwrap();
    let once = dir.join("corrupted");
    let reload = format!(
        "cmd:sh -c 'if [ ! -e {once} ]; then : > {once}; cp {foreign} {key}; fi; kill -HUP $(cat {pid})'",
        once = once.display(),
        foreign = foreign.display(),
        key = p.server_key.display(),
        pid = p.pid_file.display(),
    );
    let cfg = tls_config(lab, &dir, &[]);
    set_reload(&cfg, &reload, Some("3s"));
    let before = (bytes(&p.server_cert), bytes(&p.server_key));
    let served = served_serial_openssl(lab);

    let (exit, v) = rotate(&cfg, &["run", "--step", "listener"]).await;
    assert!(once.exists(), "the reload command did not run");
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    let err = errors(&v);
    assert!(err.contains("did not take effect"), "{err}");
    let t = target(&v, "listener", "listener");
    assert_eq!(t["outcome"], "rolled_back", "{t:#}");
    assert_eq!((bytes(&p.server_cert), bytes(&p.server_key)), before);
    assert_eq!(served_serial_openssl(lab), served);
    assert_consistent(lab, "after the restore");
}

/// The served serial equals the one in the listener's cert file, both pairs on disk match,
/// and `bao status` works with the admin files: the operator is not locked out.
fn assert_consistent(lab: &Lab, when: &str) {
    let p = &lab.paths;
    pki_ops::key_matches_cert_files(&p.admin_key, &p.admin_cert)
        .unwrap_or_else(|e| panic!("{when}: admin pair: {e}"));
    pki_ops::key_matches_cert_files(&p.server_key, &p.server_cert)
        .unwrap_or_else(|e| panic!("{when}: listener pair: {e}"));
    let file = pki_ops::CertInfo::from_pem_file(&p.server_cert).unwrap();
    assert_eq!(
        served_serial_openssl(lab),
        openssl_hex(&file.serial_hex),
        "{when}: the listener serves another certificate than its file holds"
    );
    let (code, out) = bao_status(lab, &p.admin_cert, &p.admin_key, &p.ca_bundle);
    assert_eq!(code, 0, "{when}: bao status: {out}");
}

#[tokio::test]
async fn killing_the_run_during_steps_1_and_2_then_resuming_never_locks_the_operator_out() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let dir = tempdir("tls-kill");
    let cfg = tls_config(lab, &dir, &[]);
    let args = ["run", "--step", "admin", "--step", "listener"];
    let child = || rotate_child(&cfg, &args);
    let start = std::time::Instant::now();
    assert!(
        child().wait().unwrap().success(),
        "an undisturbed run fails"
    );
    let span = start.elapsed();
    assert_consistent(lab, "after an undisturbed run");

    let rounds = 10u32;
    let mut resumed = 0;
    for i in 0..rounds {
        let mut c = child();
        std::thread::sleep(span * (i + 1) / (rounds + 1));
        kill(
            Pid::from_raw(i32::try_from(c.id()).unwrap()),
            Signal::SIGKILL,
        )
        .unwrap();
        let status = c.wait().unwrap();
        let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
        assert_eq!(exit, Exit::Ok, "round {i} ({status}): {v:#}");
        let recovered = v["recovered"].as_array().map_or(0, Vec::len);
        if recovered > 0 {
            resumed += 1;
        }
        eprintln!(
            "round {i}: killed ({status}), recovered {recovered} step(s): {}",
            v["summary"]
        );
        assert_consistent(lab, &format!("round {i}, after --resume"));
    }
    assert!(
        resumed > 0,
        "no round killed a step mid-way (span {span:?}): the test proved nothing"
    );
    // The next run is a normal one.
    let (exit, v) = rotate(&cfg, &args).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_consistent(lab, "after the run that followed");
}

/// `rotate health` as the CLI runs it, JSON.
async fn health(cfg: &Path) -> (Exit, serde_json::Value) {
    rotate(cfg, &["health"]).await
}

#[tokio::test]
async fn health_passes_on_a_healthy_listener_and_names_the_cause_when_nothing_listens() {
    let lab = rotate_tests::shared();
    let (exit, v) = health(&lab.paths.rotate_toml).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(v["healthy"], true);
    assert_eq!(v["proof"]["consecutive"], 3);
    assert_eq!(v["proof"]["state"], "active");
    let served = pki_ops::CertInfo::from_pem_file(&lab.paths.server_cert).unwrap();
    assert_eq!(
        v["proof"]["listener"]["serial_hex"],
        served.serial_hex.as_str()
    );

    // Nothing listening on the port: refused, said so, with the next action.
    let dir = tempdir("health-refused");
    let port = crate::support::free_port();
    let text = std::fs::read_to_string(&lab.paths.rotate_toml)
        .unwrap()
        .replace(&lab.addr, &format!("https://127.0.0.1:{port}"))
        + "\n";
    let text = text.replacen("[run]\n", "[health]\nwindow = \"1s\"\n\n[run]\n", 1);
    let cfg = dir.join("rotate.toml");
    std::fs::write(&cfg, text).unwrap();
    let (exit, v) = health(&cfg).await;
    assert_eq!(exit, Exit::Vault, "{v:#}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("connection refused") && err.contains("nothing is listening"),
        "{err}"
    );
}

#[tokio::test]
async fn health_on_a_sealed_vault_says_sealed_and_exits_6() {
    // A server of its own, left uninitialised: sealed.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/lab-tests")
        .join(format!("{}-sealed", std::process::id()));
    let lab = Lab::create(&dir).unwrap();
    let cfg = dir.join("rotate.toml");
    // No token yet (uninitialised): the healthcheck needs none.
    let text = lab
        .rotate_config()
        .lines()
        .filter(|l| !l.starts_with("token_file"))
        .collect::<Vec<_>>()
        .join("\n")
        .replacen("[run]\n", "[health]\nwindow = \"2s\"\n\n[run]\n", 1);
    std::fs::write(&cfg, text).unwrap();
    let (exit, v) = health(&cfg).await;
    assert_eq!(exit, Exit::Sealed, "{v:#}");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("sealed") && err.contains("unseal"), "{err}");
}

#[tokio::test]
async fn step_5_refreshes_the_proxy_bundle_keeping_old_cas_and_real_openssl_verifies_it() {
    let lab = rotate_tests::shared();
    let dir = tempdir("proxy");
    let cfg = crate::support::config_in(lab, &dir, &["proxyapp"], "");
    let home = dir.join("proxyprod");
    std::fs::create_dir_all(home.join("tls")).unwrap();
    // A stale bundle: only an old CA the proxy still needs for something else.
    let old = rotate_tests::LabCa::generate().unwrap();
    let bundle = home.join("tls/vault-ca.pem");
    std::fs::write(&bundle, old.root_pem()).unwrap();
    let marker = dir.join("reloads");
    crate::support::add_to_section(
        &cfg,
        "proxy",
        &format!(
            "home = \"{}\"\nuser = \"root\"\nca_bundle = \"tls/vault-ca.pem\"\nreload = \"cmd:echo reloaded >> {}\"",
            home.display(),
            marker.display()
        ),
    );

    let (exit, v) = rotate(&cfg, &["run", "--step", "proxy"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(target(&v, "proxy", "proxy")["outcome"], "committed");
    let text = std::fs::read_to_string(&bundle).unwrap();
    assert!(
        text.contains(old.root_pem().trim()),
        "the old CA was dropped"
    );
    let (ok, out) = openssl_verify(&bundle, &lab.paths.server_cert, &dir);
    assert!(
        ok,
        "openssl verify of the listener with the proxy bundle: {out}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "reloaded\n");

    // Again: nothing to change, no reload.
    let (exit, v) = rotate(&cfg, &["run", "--step", "proxy"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(
        crate::support::change_kind(target(&v, "proxy", "proxy"), "tls/vault-ca.pem"),
        "unchanged"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "reloaded\n");

    // An app leaf the new bundle would not verify (another CA): refused before writing,
    // naming the file.
    let foreign = old
        .leaf(
            "proxyapp.int.privsec.ch",
            &["proxyapp.int.privsec.ch"],
            &[],
            true,
            time::Duration::days(1),
        )
        .unwrap();
    let leaf = dir.join("home/proxyapp/tls/proxyapp.fullchain.pem");
    std::fs::create_dir_all(leaf.parent().unwrap()).unwrap();
    std::fs::write(&leaf, &foreign.cert_pem).unwrap();
    std::fs::write(&bundle, old.root_pem()).unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--step", "proxy"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = errors(&v);
    assert!(err.contains("proxyapp.fullchain.pem"), "{err}");
    assert_eq!(std::fs::read_to_string(&bundle).unwrap(), old.root_pem());
}

#[tokio::test]
async fn a_vault_that_restarts_sealed_stops_the_run_journaled_and_resume_after_unseal_completes() {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let script = lab.restart_command().unwrap();
    let dir = tempdir("tls-sealed");
    let cfg = tls_config(
        lab,
        &dir,
        &[
            (
                "restarts",
                &format!(
                    "vault = \"cmd:{}\"\nvault_when = \"always\"",
                    script.display()
                ),
            ),
            ("health", "window = \"3s\""),
        ],
    );
    let args = ["run", "--step", "restarts", "--step", "health"];
    let (exit, v) = rotate(&cfg, &args).await;
    assert_eq!(exit, Exit::ResumeNeeded, "{v:#}");
    let t = target(&v, "restarts", "restarts");
    assert_eq!(t["outcome"], "awaiting_resume", "{t:#}");
    let err = t["error"].as_str().unwrap();
    assert!(err.contains("sealed") && err.contains("unseal"), "{err}");
    assert!(v["summary"].as_str().unwrap().contains("WAITING"), "{v:#}");
    assert_eq!(v["not_run"], serde_json::json!(["health"]), "{v:#}");

    // Still sealed: the resume's preflight refuses (exit 6), nothing is undone or written.
    let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
    assert_eq!(exit, Exit::Sealed, "{v:#}");
    assert!(errors(&v).contains("unseal"), "{v:#}");

    // The operator unseals; --resume re-gates the restart and finishes the run.
    lab.unseal().await.unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(
        v["recovered"][0]["targets"][0]["outcome"], "committed",
        "{v:#}"
    );
    assert_eq!(
        target(&v, "health", "vault")["outcome"],
        "unchanged",
        "{v:#}"
    );
    let p = &lab.paths;
    let (code, out) = bao_status(lab, &p.admin_cert, &p.admin_key, &p.ca_bundle);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn a_listener_gate_that_fails_after_the_swap_restores_the_files_and_the_old_serial_is_served_again()
 {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-restore");
    // The reload really switches bao to the new certificate, then a client bundle breaks:
    // the gate fails after the swap, so the unwind must restore and reload back.
    let extra = dir.join("proxy-bundle.pem");
    std::fs::copy(&p.ca_bundle, &extra).unwrap();
    let reload = format!(
        "cmd:kill -HUP $(cat {}) && sleep 0.3 && echo garbage > {}",
        p.pid_file.display(),
        extra.display()
    );
    let cfg = tls_config(
        lab,
        &dir,
        &[(
            "listener",
            &format!("client_bundles = [\"{}\"]", extra.display()),
        )],
    );
    set_reload(&cfg, &reload, None);
    let before = (bytes(&p.server_cert), bytes(&p.server_key));
    let served = served_serial_openssl(lab);

    let (exit, v) = rotate(&cfg, &["run", "--step", "listener"]).await;
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    let t = target(&v, "listener", "listener");
    assert_eq!(t["outcome"], "rolled_back", "{t:#}");
    let err = t["error"].as_str().unwrap();
    assert!(err.contains("proxy-bundle.pem"), "{err}");
    let undone = t["rollback"]["undone"].to_string();
    assert!(
        undone.contains(&format!(
            "serves serial {}",
            t["applied"]["previous_serial"].as_str().unwrap()
        )),
        "{undone}"
    );
    assert_ne!(t["applied"]["serial_hex"], t["applied"]["previous_serial"]);
    assert_eq!((bytes(&p.server_cert), bytes(&p.server_key)), before);
    assert_eq!(served_serial_openssl(lab), served);
}

#[tokio::test]
async fn rollback_after_steps_1_and_2_restores_both_identities_and_revokes_the_new_certs() {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-rollback");
    let cfg = tls_config(lab, &dir, &[]);
    let files = [&p.admin_cert, &p.admin_key, &p.server_cert, &p.server_key];
    let before: Vec<Vec<u8>> = files.iter().map(|f| bytes(f)).collect();
    let served = served_serial_openssl(lab);

    let (exit, v) = rotate(&cfg, &["run", "--step", "admin", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let new_admin = target(&v, "admin", "admin")["applied"]["serial_hex"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_listener = target(&v, "listener", "listener")["applied"]["serial_hex"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(served_serial_openssl(lab), served);

    let (exit, v) = rotate(&cfg, &["rollback"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let unwound: Vec<&str> = v["rolled_back"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["app"].as_str().unwrap())
        .collect();
    assert_eq!(unwound, ["listener", "admin"], "{v:#}");
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&bytes(f), b, "{} not restored", f.display());
    }
    assert_eq!(served_serial_openssl(lab), served);
    let (code, out) = bao_status(lab, &p.admin_cert, &p.admin_key, &p.ca_bundle);
    assert_eq!(code, 0, "{out}");
    let admin = lab.admin_client().unwrap();
    for serial in [&new_admin, &new_listener] {
        let rec = admin.read_cert("pki-prod", serial).await.unwrap().unwrap();
        assert_ne!(rec.revocation_time, 0, "{serial} not revoked");
    }
}

/// Every (operation, path) the server's audit log recorded after byte `from`.
fn audited_since(lab: &Lab, from: usize) -> Vec<(String, String)> {
    let log = std::fs::read(lab.paths.dir.join("server/audit.log")).unwrap();
    String::from_utf8_lossy(&log[from.min(log.len())..])
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "request")
        .map(|e| {
            (
                e["request"]["operation"].as_str().unwrap_or("").to_owned(),
                e["request"]["path"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn audit_len(lab: &Lab) -> usize {
    std::fs::metadata(lab.paths.dir.join("server/audit.log"))
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

#[tokio::test]
async fn an_if_due_run_with_nothing_due_makes_no_vault_write_and_renews_what_is_due() {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-ifdue");
    let cfg = tls_config(lab, &dir, &[]);
    let (exit, v) = rotate(&cfg, &["run", "--step", "admin", "--step", "listener"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let files = [&p.admin_cert, &p.admin_key, &p.server_cert, &p.server_key];
    let before: Vec<Vec<u8>> = files.iter().map(|f| bytes(f)).collect();

    // Fresh certificates: nothing is due, and not one Vault write is made.
    let mark = audit_len(lab);
    let args = [
        "run", "--step", "admin", "--step", "listener", "--step", "health", "--if-due",
    ];
    let (exit, v) = rotate(&cfg, &args).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    for (step, t) in [("admin", "admin"), ("listener", "listener")] {
        let r = target(&v, step, t);
        assert_eq!(r["outcome"], "unchanged", "{r:#}");
        assert!(r["changes"].to_string().contains("not due"), "{r:#}");
    }
    let writes: Vec<_> = audited_since(lab, mark)
        .into_iter()
        .filter(|(op, _)| matches!(op.as_str(), "create" | "update" | "delete"))
        // The preflight asks which paths the token may write: a POST that changes nothing.
        .filter(|(_, path)| path != "sys/capabilities-self")
        .collect();
    assert!(
        writes.is_empty(),
        "an --if-due run with nothing due wrote: {writes:?}"
    );
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&bytes(f), b, "{} changed", f.display());
    }

    // A renewal threshold the 72 h admin certificate is past (Vault backdates not-before by
    // 30 s) but the 90-day listener certificate is not: only the admin one is renewed.
    let cfg = tls_config(lab, &dir, &[("run", "renew_share = 0.99995")]);
    let (exit, v) = rotate(
        &cfg,
        &["run", "--step", "admin", "--step", "listener", "--if-due"],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(
        target(&v, "admin", "admin")["outcome"],
        "committed",
        "{v:#}"
    );
    assert_eq!(
        target(&v, "listener", "listener")["outcome"],
        "unchanged",
        "{v:#}"
    );
    assert_ne!(bytes(&p.admin_cert), before[0]);
    assert_eq!(bytes(&p.server_cert), before[2]);
}

/// The TLS lab's whole-order config: agents as units, the proxy's bundle in `dir`.
fn whole_order(lab: &'static Lab, dir: &Path) -> PathBuf {
    for app in ["ncprd1", "resume2me"] {
        lab.define_agent_unit(app, &lab.paths.dir.join("home").join(app));
    }
    let proxy = dir.join("proxyprod");
    std::fs::create_dir_all(proxy.join("tls")).unwrap();
    tls_config(
        lab,
        dir,
        &[
            (
                "proxy",
                &format!(
                    "home = \"{}\"\nuser = \"root\"\nca_bundle = \"tls/vault-ca.pem\"",
                    proxy.display()
                ),
            ),
            (
                "restarts",
                &format!(
                    "proxy = [\"cmd:echo restarted >> {}\"]",
                    dir.join("proxy-restarts").display()
                ),
            ),
        ],
    )
}

/// How many times step 6 restarted the (recorded) proxy stack of `dir`.
fn proxy_restarts(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("proxy-restarts"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test]
async fn the_whole_order_in_one_command_is_confirmed_by_real_clients_and_a_second_if_due_run_changes_nothing()
 {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-whole");
    let cfg = whole_order(lab, &dir);

    let (exit, v) = rotate(&cfg, &["run"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let order: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "admin", "listener", "agents", "leaf", "proxy", "restarts", "health"
        ]
    );
    assert_eq!(
        proxy_restarts(&dir),
        1,
        "step 6 restarts the proxy stack once"
    );
    // Step 3 is reported live only because step 4's restarted agent logged in with it.
    for app in ["ncprd1", "resume2me"] {
        let t = target(&v, "agents", app);
        assert!(t["pending"].is_null(), "{t:#}");
        assert!(t["live"].as_str().unwrap().contains("logged in"), "{t:#}");
    }

    // Real clients agree.
    let (code, out) = bao_status(lab, &p.admin_cert, &p.admin_key, &p.ca_bundle);
    assert_eq!(code, 0, "{out}");
    let listener = target(&v, "listener", "listener")["applied"]["serial_hex"]
        .as_str()
        .unwrap();
    assert_eq!(served_serial_openssl(lab), openssl_hex(listener));
    for app in ["ncprd1", "resume2me"] {
        let home = p.dir.join("home").join(app);
        let login = crate::support::bao_login(lab, &home);
        let mut policies: Vec<String> =
            serde_json::from_value(login["auth"]["policies"].clone()).unwrap();
        policies.sort();
        assert_eq!(
            policies,
            ["default", "marker-cert-auth", &format!("pki-issue-{app}")],
            "{login:#}"
        );
        let bundle = dir.join("proxyprod/tls/vault-ca.pem");
        let leaf = home.join(format!("tls/{app}.fullchain.pem"));
        let (ok, out) = openssl_verify(&bundle, &leaf, &dir);
        assert!(ok, "proxy bundle vs {}: {out}", leaf.display());
        let (ok, out) = openssl_verify(&bundle, &p.server_cert, &dir);
        assert!(ok, "proxy bundle vs the listener: {out}");
    }
    let (exit, v) = rotate(&cfg, &["verify"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");

    // A second run with --if-due: nothing is due, nothing is written.
    let mark = audit_len(lab);
    let (exit, v) = rotate(&cfg, &["run", "--if-due"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    for s in v["steps"].as_array().unwrap() {
        for t in s["targets"].as_array().unwrap() {
            assert_eq!(t["outcome"], "unchanged", "{t:#}");
        }
    }
    let writes: Vec<_> = audited_since(lab, mark)
        .into_iter()
        .filter(|(op, _)| matches!(op.as_str(), "create" | "update" | "delete"))
        .filter(|(_, path)| path != "sys/capabilities-self")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(
        proxy_restarts(&dir),
        1,
        "nothing renewed, yet the proxy was restarted"
    );
    // The same from a timer with --quiet: not a line of output, exit 0.
    let argv = [
        "rotate",
        "--config",
        cfg.to_str().unwrap(),
        "--quiet",
        "run",
        "--if-due",
    ];
    let mut out = Vec::new();
    let exit = rotate_cli::run(
        <rotate_cli::Cli as clap::Parser>::parse_from(argv),
        &mut out,
    )
    .await;
    assert_eq!(exit, Exit::Ok);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "",
        "a quiet no-op run printed"
    );
}

/// The pairs of the whole order that do not belong together on disk now.
fn torn_pairs(lab: &Lab) -> Vec<String> {
    let p = &lab.paths;
    let mut pairs = vec![
        (p.admin_key.clone(), p.admin_cert.clone()),
        (p.server_key.clone(), p.server_cert.clone()),
    ];
    for app in ["ncprd1", "resume2me"] {
        let home = p.dir.join("home").join(app);
        pairs.push((
            home.join("vault/mtls/agent.key"),
            home.join("vault/mtls/agent.crt"),
        ));
    }
    pairs
        .into_iter()
        .filter(|(k, c)| k.exists() && pki_ops::key_matches_cert_files(k, c).is_err())
        .map(|(k, _)| k.display().to_string())
        .collect()
}

#[tokio::test]
async fn killing_the_whole_order_at_any_point_then_resuming_completes_it() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let dir = tempdir("tls-whole-kill");
    let cfg = whole_order(lab, &dir);
    let child = || rotate_child(&cfg, &["run"]);
    let start = std::time::Instant::now();
    assert!(
        child().wait().unwrap().success(),
        "an undisturbed run fails"
    );
    let span = start.elapsed();
    // Kill points: between the two renames of each of the first commits (aimed), then at
    // random instants of the run (the seed is printed on failure).
    let seed = u64::from(std::process::id()) ^ start.elapsed().as_nanos() as u64;
    let mut rng = seed | 1;
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut kills: Vec<Result<String, u32>> = (1..=6)
        .map(|k| Ok(format!("commit-between-renames#{k}")))
        .collect();
    kills.extend((0..6).map(|_| Err((random() % 1000) as u32)));
    let mut resumed = 0;
    let mut torn_seen = 0;
    for (i, kill_at) in kills.into_iter().enumerate() {
        let when = format!("round {i} ({kill_at:?}, seed {seed})");
        match &kill_at {
            Ok(point) => {
                let _ = killed_at(&cfg, &["run"], point);
            }
            Err(permille) => {
                let mut c = child();
                std::thread::sleep(span * *permille / 1000);
                let _ = kill(
                    Pid::from_raw(i32::try_from(c.id()).unwrap()),
                    Signal::SIGKILL,
                );
                c.wait().unwrap();
            }
        }
        // Every pair matches, or every command says which run to finish (exit 8).
        let torn = torn_pairs(lab);
        if !torn.is_empty() {
            torn_seen += 1;
            let (exit, v) = rotate(&cfg, &["status"]).await;
            assert_eq!(exit, Exit::ResumeNeeded, "{when}: torn {torn:?}: {v:#}");
        }
        let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
        assert!(matches!(exit, Exit::Ok), "{when}: resume: {v:#}");
        if v["recovered"].as_array().is_some_and(|r| !r.is_empty()) {
            resumed += 1;
        }
        // Every real-client check passes.
        assert_consistent(lab, &when);
        assert!(torn_pairs(lab).is_empty(), "{when}: after resume");
        for app in ["ncprd1", "resume2me"] {
            crate::support::bao_login(lab, &lab.paths.dir.join("home").join(app));
        }
        let (exit, v) = rotate(&cfg, &["verify"]).await;
        assert_eq!(exit, Exit::Ok, "{when}, verify after --resume: {v:#}");
    }
    assert!(
        resumed > 0,
        "no round killed a step mid-way (span {span:?})"
    );
    assert!(
        torn_seen > 0,
        "no kill fell between the two files of a pair"
    );
}

#[tokio::test]
async fn killing_a_failing_listener_run_during_its_gate_or_unwind_then_resuming_restores_everything()
 {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-kill-unwind");
    // A reload that never takes effect: every run fails its gate and unwinds.
    let cfg = tls_config(lab, &dir, &[]);
    decoy_reload(&cfg, "1s");
    let before = (bytes(&p.server_cert), bytes(&p.server_key));
    let served = served_serial_openssl(lab);
    let kept_before = rotate_files(&p.server_cert);
    let child = || rotate_child(&cfg, &["run", "--step", "listener"]);
    let start = std::time::Instant::now();
    let status = child().wait().unwrap();
    assert_eq!(
        status.code(),
        Some(5),
        "an undisturbed run should fail its gate"
    );
    let span = start.elapsed();
    assert_eq!((bytes(&p.server_cert), bytes(&p.server_key)), before);

    let rounds = 6u32;
    for i in 0..rounds {
        let mut c = child();
        std::thread::sleep(span * (i + 1) / (rounds + 1));
        kill(
            Pid::from_raw(i32::try_from(c.id()).unwrap()),
            Signal::SIGKILL,
        )
        .unwrap();
        let status = c.wait().unwrap();
        let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
        // Re-gated (fails again) and unwound, or nothing was left to resume.
        assert!(
            matches!(exit, Exit::GateFailed | Exit::Ok),
            "round {i} ({status}): {v:#}"
        );
        assert_ne!(exit, Exit::RollbackIncomplete, "round {i}: {v:#}");
        assert_eq!(
            (bytes(&p.server_cert), bytes(&p.server_key)),
            before,
            "round {i}: the listener files were not restored byte for byte"
        );
        assert_eq!(served_serial_openssl(lab), served, "round {i}");
        assert_consistent(lab, &format!("round {i}"));
        // No temp or kept previous version left next to the listener files by these runs
        // (earlier tests' committed runs keep theirs until their own next run).
        let leftovers: Vec<String> = rotate_files(&p.server_cert)
            .into_iter()
            .filter(|n| !kept_before.contains(n))
            .collect();
        assert!(leftovers.is_empty(), "round {i}: {leftovers:?}");
    }
}

#[tokio::test]
async fn a_client_ca_file_the_listener_has_not_loaded_makes_step_6_restart_vault_and_then_its_issuer_is_accepted()
 {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let admin = lab.admin_client().unwrap();
    let rogue_ca = other_mount(&admin).await;
    // A client certificate from the other mount: refused while the file lacks its CA.
    let issued: serde_json::Value = admin
        .request(
            vault_client::Method::Post,
            "pki-other/issue/client",
            Some(serde_json::json!({"common_name": "ops-bot", "ttl": "10m"})),
            vault_client::Idempotency::NonIdempotent,
        )
        .await
        .unwrap()
        .unwrap();
    let dir = tempdir("tls-client-ca");
    let (bot_cert, bot_key) = (dir.join("bot.crt"), dir.join("bot.key"));
    std::fs::write(&bot_cert, issued["data"]["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(&bot_key, issued["data"]["private_key"].as_str().unwrap()).unwrap();
    assert_ne!(bao_status(lab, &bot_cert, &bot_key, &p.ca_bundle).0, 0);

    // The operator adds that CA to the listener's tls_client_ca_file; SIGHUP would not load it.
    let script = lab.restart_command().unwrap();
    let restore = RestoreClientCa::new(lab, &script);
    let mut extended = restore.original.clone();
    extended.extend_from_slice(rogue_ca.as_bytes());
    std::fs::write(&p.client_ca, &extended).unwrap();
    lab.sighup().unwrap();
    let cfg = tls_config(
        lab,
        &dir,
        &[
            ("restarts", &format!("vault = \"cmd:{}\"", script.display())),
            ("health", "window = \"3s\""),
        ],
    );
    let args = ["--step", "restarts", "--step", "health"];
    let (exit, v) = rotate(&cfg, &[&["plan"][..], &args].concat()).await;
    assert_eq!(exit, Exit::Changes, "{v:#}");
    let plan = target(&v, "restarts", "restarts")["changes"].to_string();
    assert!(
        plan.contains("has not loaded") && plan.contains("Rogue Root CA"),
        "{plan}"
    );
    assert!(!acceptable_client_cas_openssl(lab).contains("Rogue Root CA"));
    assert_eq!(
        client_ca_check(&cfg).await,
        (false, true),
        "verify must name it"
    );

    // The run restarts Vault (it comes back sealed: resume after unsealing).
    let pid = lab.pid();
    let (exit, v) = rotate(&cfg, &[&["run"][..], &args].concat()).await;
    assert_eq!(exit, Exit::ResumeNeeded, "{v:#}");
    assert_ne!(lab.pid(), pid, "Vault was not restarted");
    lab.unseal().await.unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    // Judged by real clients: the listener now asks for the new issuer, and accepts it.
    assert!(acceptable_client_cas_openssl(lab).contains("Rogue Root CA"));
    let (code, out) = bao_status(lab, &bot_cert, &bot_key, &p.ca_bundle);
    assert_eq!(code, 0, "{out}");
    assert_eq!(client_ca_check(&cfg).await, (true, false));
    // Loaded now: a second plan has no reason to restart Vault.
    let (exit, v) = rotate(&cfg, &[&["plan"][..], &args].concat()).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");

    drop(restore);
    assert!(!acceptable_client_cas_openssl(lab).contains("Rogue Root CA"));
}

/// Puts the lab's `tls_client_ca_file` back when dropped (also when the test panics) and
/// restarts the server through the lab's script (it must outlive the test's thread), then
/// unseals it with the real CLI and waits until `bao status` answers: later tests rely on
/// the listener refusing `pki-other`.
struct RestoreClientCa<'l> {
    lab: &'l Lab,
    original: Vec<u8>,
    script: PathBuf,
}

impl<'l> RestoreClientCa<'l> {
    fn new(lab: &'l Lab, script: &Path) -> Self {
        RestoreClientCa {
            lab,
            original: bytes(&lab.paths.client_ca),
            script: script.to_owned(),
        }
    }
}

impl Drop for RestoreClientCa<'_> {
    fn drop(&mut self) {
        let p = &self.lab.paths;
        std::fs::write(&p.client_ca, &self.original).unwrap();
        assert!(Command::new(&self.script).status().unwrap().success());
        let key = std::fs::read_to_string(&p.unseal_key_file).unwrap();
        let bao = |args: &[&str]| {
            Command::new(&self.lab.bao)
                .env_clear()
                .envs(self.lab.bao_env())
                .env("HOME", &p.dir)
                .args(args)
                .output()
                .unwrap()
        };
        assert!(bao(&["operator", "unseal", key.trim()]).status.success());
        let start = std::time::Instant::now();
        while !bao(&["status"]).status.success() {
            assert!(start.elapsed().as_secs() < 20, "lab not back after restore");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// `cfg` with `[listener] client_ca_file` pointing at `file`.
fn set_client_ca_file(cfg: &Path, file: &Path) {
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(text.contains("\nclient_ca_file = "), "{text}");
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("client_ca_file = ") {
                format!("client_ca_file = \"{}\"", file.display())
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(cfg, text.join("\n")).unwrap();
}

#[tokio::test]
async fn a_same_name_ca_in_the_client_ca_file_is_seen_by_its_change_time_and_needs_a_restart() {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-client-ca-same-name");
    // A re-keyed CA under the same names: a handshake cannot tell it from the loaded one.
    let rekeyed = rotate_tests::LabCa::generate().unwrap();
    let candidate = dir.join("client-ca.pem");
    let mut text = bytes(&p.client_ca);
    text.extend_from_slice(rekeyed.bundle_pem().as_bytes());
    std::fs::write(&candidate, &text).unwrap();
    let cfg = tls_config(lab, &dir, &[("restarts", "vault = \"cmd:/bin/false\"")]);
    set_client_ca_file(&cfg, &candidate);
    let (exit, v) = rotate(&cfg, &["plan", "--step", "restarts"]).await;
    assert_eq!(exit, Exit::Changes, "{v:#}");
    let plan = target(&v, "restarts", "restarts")["changes"].to_string();
    assert!(plan.contains("changed after the server started"), "{plan}");
    assert!(!plan.contains("does not accept"), "{plan}");
    // vault_when = "never": not restarted, but reported.
    let never = tls_config(
        lab,
        &dir,
        &[(
            "restarts",
            "vault = \"cmd:/bin/false\"\nvault_when = \"never\"",
        )],
    );
    set_client_ca_file(&never, &candidate);
    let (exit, v) = rotate(&never, &["plan", "--step", "restarts"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let t = target(&v, "restarts", "restarts");
    assert_eq!(t["changes"][0]["kind"], "kept", "{t:#}");
    // ... and listed again at the end, for the operator to act on.
    assert!(
        v["attention"][0]
            .as_str()
            .is_some_and(|a| a.contains("restart of Vault") && a.contains("never")),
        "{v:#}"
    );
    assert!(
        t["changes"]
            .to_string()
            .contains("changed after the server started"),
        "{t:#}"
    );
    // Older than the server's start: loaded, nothing to restart.
    std::fs::write(&candidate, bytes(&p.client_ca)).unwrap();
    let old = std::fs::metadata(&p.pid_file).unwrap().modified().unwrap()
        - std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&candidate)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let (exit, v) = rotate(&cfg, &["plan", "--step", "restarts"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
}

#[tokio::test]
async fn step_6_refuses_to_restart_vault_into_a_client_ca_file_that_would_lock_out_the_admin_or_the_proxy()
 {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let admin = lab.admin_client().unwrap();
    let rogue_ca = other_mount(&admin).await;
    // A file that trusts only the other CA: after a restart the admin would be refused.
    // (The config names a copy, so the lab's own file stays as the server loaded it.)
    let script = lab.restart_command().unwrap();
    let dir = tempdir("tls-client-ca-guard");
    let candidate = dir.join("client-ca.pem");
    std::fs::write(&candidate, rogue_ca.as_bytes()).unwrap();
    let cfg = tls_config(
        lab,
        &dir,
        &[("restarts", &format!("vault = \"cmd:{}\"", script.display()))],
    );
    set_client_ca_file(&cfg, &candidate);
    let pid = lab.pid();
    let (exit, v) = rotate(&cfg, &["run", "--step", "restarts"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = errors(&v);
    assert!(err.contains("lockout guard"), "{err}");
    assert!(err.contains(&p.admin_cert.display().to_string()), "{err}");
    assert_eq!(lab.pid(), pid, "Vault was restarted");
    let (code, out) = bao_status(lab, &p.admin_cert, &p.admin_key, &p.ca_bundle);
    assert_eq!(code, 0, "{out}");

    // A file that trusts the admin (and adds the other CA) but not the proxy's client
    // certificate: refused too, naming that certificate.
    let mut text = bytes(&p.client_ca);
    text.extend_from_slice(rogue_ca.as_bytes());
    std::fs::write(&candidate, &text).unwrap();
    let home = dir.join("proxy");
    std::fs::create_dir_all(home.join("tls")).unwrap();
    std::fs::copy(&p.ca_bundle, home.join("tls/vault-ca.pem")).unwrap();
    let foreign = rotate_tests::LabCa::generate()
        .unwrap()
        .leaf("proxy", &[], &[], false, time::Duration::days(1))
        .unwrap();
    std::fs::write(home.join("tls/proxy.crt"), &foreign.cert_pem).unwrap();
    std::fs::write(home.join("tls/proxy.key"), foreign.key_pem.as_bytes()).unwrap();
    let cfg = tls_config(
        lab,
        &dir,
        &[
            ("restarts", &format!("vault = \"cmd:{}\"", script.display())),
            (
                "proxy",
                &format!(
                    "home = \"{}\"\nuser = \"root\"\nca_bundle = \"tls/vault-ca.pem\"\nclient_cert = \"tls/proxy.crt\"\nclient_key = \"tls/proxy.key\"",
                    home.display()
                ),
            ),
        ],
    );
    set_client_ca_file(&cfg, &candidate);
    let (exit, v) = rotate(&cfg, &["run", "--step", "restarts"]).await;
    assert_eq!(exit, Exit::Config, "{v:#}");
    let err = errors(&v);
    assert!(
        err.contains("lockout guard")
            && err.contains(&home.join("tls/proxy.crt").display().to_string()),
        "{err}"
    );
    assert_eq!(lab.pid(), pid, "Vault was restarted");
}

/// `rotate <args>` as a real process with `ROTATE_FAILPOINT=<point>`: it dies there, as
/// under SIGKILL. Its exit status.
fn killed_at(cfg: &Path, args: &[&str], point: &str) -> std::process::ExitStatus {
    Command::new(env!("CARGO_BIN_EXE_rotate-child"))
        .env("ROTATE_FAILPOINT", point)
        .arg("--config")
        .arg(cfg)
        .args(["--output", "json"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

/// Every command that reads exits 8 naming the unfinished run and the command that
/// finishes it (`how`), instead of failing on a key that does not match.
async fn every_command_names_the_unfinished_run(cfg: &Path, how: &str, when: &str) {
    for args in [
        &["status"][..],
        &["plan", "--step", "agents"],
        &["verify"],
        &["health"],
        &["run", "--step", "agents"],
    ] {
        let (exit, v) = rotate(cfg, args).await;
        assert_eq!(exit, Exit::ResumeNeeded, "{when}: {args:?}: {v:#}");
        let err = v["error"].as_str().unwrap_or_default();
        assert!(
            err.contains("run ") && err.contains(how),
            "{when}: {args:?} does not say `{how}`: {err}"
        );
    }
}

#[tokio::test]
async fn a_kill_between_the_admin_pairs_two_renames_is_named_by_every_command_and_resume_restores_it()
 {
    use std::os::unix::process::ExitStatusExt as _;
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-torn");
    let cfg = tls_config(lab, &dir, &[]);
    let before = (bytes(&p.admin_key), bytes(&p.admin_cert));
    let status = killed_at(&cfg, &["run", "--step", "admin"], "commit-between-renames");
    assert_eq!(status.signal(), Some(9), "the failpoint was not reached");
    assert!(
        pki_ops::key_matches_cert_files(&p.admin_key, &p.admin_cert).is_err(),
        "the kill left the admin pair matching: the test proves nothing"
    );
    every_command_names_the_unfinished_run(&cfg, "rotate run --resume", "torn admin pair").await;
    // Resume puts the pair back first (no Vault needed), then finishes the run.
    let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert!(!v["repaired"].as_array().unwrap().is_empty(), "{v:#}");
    assert_consistent(lab, "after --resume");
    assert_ne!(
        (bytes(&p.admin_key), bytes(&p.admin_cert)),
        before,
        "resume finished step 1"
    );
}

#[tokio::test]
async fn a_kill_anywhere_in_the_rollback_of_the_admin_pair_never_locks_the_operator_out() {
    use std::os::unix::process::ExitStatusExt as _;
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let mut torn_seen = 0;
    // Kill the rollback after its 1st, 2nd, ... file: one of them falls between the key
    // and its certificate.
    for n in 1..=4 {
        let dir = tempdir(&format!("tls-torn-rb{n}"));
        let cfg = tls_config(lab, &dir, &[]);
        let before = (bytes(&p.admin_key), bytes(&p.admin_cert));
        let (exit, v) = rotate(&cfg, &["run", "--step", "admin"]).await;
        assert_eq!(exit, Exit::Ok, "{v:#}");
        let status = killed_at(&cfg, &["rollback"], &format!("unwind-after-file#{n}"));
        if status.signal() != Some(9) {
            // Fewer files than n: the rollback finished.
            assert!(status.success(), "rollback #{n}: {status}");
            continue;
        }
        let torn = pki_ops::key_matches_cert_files(&p.admin_key, &p.admin_cert).is_err();
        if torn {
            torn_seen += 1;
            every_command_names_the_unfinished_run(&cfg, "rotate rollback", &format!("kill #{n}"))
                .await;
        }
        // A new run is refused until the rollback is finished.
        let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
        assert_eq!(exit, Exit::ResumeNeeded, "kill #{n}: {v:#}");
        let (exit, v) = rotate(&cfg, &["rollback"]).await;
        assert_eq!(exit, Exit::Ok, "kill #{n}: {v:#}");
        assert_eq!(
            (bytes(&p.admin_key), bytes(&p.admin_cert)),
            before,
            "kill #{n}: the rollback restored the pair byte for byte"
        );
        assert_consistent(lab, &format!("after the rollback killed at file #{n}"));
    }
    assert!(
        torn_seen > 0,
        "no kill fell between the key and its certificate"
    );
}

#[tokio::test]
async fn a_vault_sealed_after_step_4_wrote_keeps_it_applied_and_resume_after_unseal_finishes_it() {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let dir = tempdir("tls-seal-leaf");
    let cfg = tls_config(lab, &dir, &[]);
    let app = "ncprd1";
    let home = lab.paths.dir.join("home").join(app);
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents", "--app", app]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    // The agent's restart seals Vault (a restart of the server in the middle of step 4),
    // then runs the real agent, which renders once Vault is back.
    let mut env: Vec<(String, String)> = lab
        .bao_env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    env.push(("VAULT_TOKEN".into(), lab.token().to_owned()));
    env.push(("PATH".into(), "/usr/bin:/bin".into()));
    env.push(("HOME".into(), home.display().to_string()));
    let agent_hcl = home.join(format!(".vault-agent-{app}/agent.hcl"));
    lab.units.define(
        &format!("vault-agent-{app}.service"),
        rotate_tests::UnitDef {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "'{bao}' operator seal >/dev/null 2>&1; unset VAULT_TOKEN VAULT_CLIENT_CERT VAULT_CLIENT_KEY; exec '{bao}' agent -config='{hcl}'",
                    bao = lab.bao.display(),
                    hcl = agent_hcl.display()
                ),
            ],
            env,
            log: home.join(format!("agent-{app}.log")),
        },
    );
    let started = std::time::Instant::now();
    let (exit, v) = rotate(&cfg, &["run", "--step", "leaf", "--app", app]).await;
    assert_eq!(exit, Exit::ResumeNeeded, "{v:#}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the gate waited out its render timeout instead of seeing the seal"
    );
    let t = target(&v, "leaf", app);
    assert_eq!(t["outcome"], "awaiting_resume", "{t:#}");
    assert!(t["rollback"].is_null(), "nothing was undone: {t:#}");
    let (exit, _) = rotate(&cfg, &["run", "--step", "agents"]).await;
    assert_eq!(exit, Exit::ResumeNeeded, "a new run waits for the resume");
    lab.unseal().await.unwrap();
    let (exit, v) = rotate(&cfg, &["run", "--resume"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(
        v["recovered"][0]["targets"][0]["outcome"], "committed",
        "{v:#}"
    );
    let _ = Command::new(lab.paths.dir.join("bin/systemctl"))
        .args(["--user", "stop", &format!("vault-agent-{app}.service")])
        .status();
}

#[tokio::test]
async fn the_prod_example_shape_runs_the_whole_order_with_a_real_proxy_user() {
    use std::os::unix::fs::MetadataExt as _;
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let dir = tempdir("tls-prod-shape");
    for app in ["ncprd1", "resume2me"] {
        lab.define_agent_unit(app, &lab.paths.dir.join("home").join(app));
    }
    // As in examples/prod.toml: the proxy's home belongs to the proxy user, and step 2
    // checks the bundle there ([listener] client_bundles) before it swaps the listener.
    let uid = crate::support::system_user("rotproxy");
    let proxy = dir.join("proxyprod");
    std::fs::create_dir_all(proxy.join("tls")).unwrap();
    let bundle = proxy.join("tls/vault-ca.pem");
    std::fs::copy(&lab.paths.ca_bundle, &bundle).unwrap();
    for p in [&proxy, &proxy.join("tls"), &bundle] {
        std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
    }
    let cfg = tls_config(
        lab,
        &dir,
        &[
            (
                "proxy",
                &format!(
                    "home = \"{}\"\nuser = \"rotproxy\"\nca_bundle = \"tls/vault-ca.pem\"\nreload = \"cmd:true\"",
                    proxy.display()
                ),
            ),
            (
                "listener",
                &format!("client_bundles = [\"{}\"]", bundle.display()),
            ),
            (
                "restarts",
                &format!(
                    "proxy = [\"cmd:echo restarted >> {}\"]",
                    dir.join("proxy-restarts").display()
                ),
            ),
        ],
    );
    let (exit, v) = rotate(&cfg, &["run"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let m = std::fs::metadata(&bundle).unwrap();
    assert_eq!(m.uid(), uid, "the proxy's bundle stays the proxy user's");
    let (ok, out) = openssl_verify(&bundle, &lab.paths.server_cert, &dir);
    assert!(ok, "{out}");
    let (exit, v) = rotate(&cfg, &["verify"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
}

/// `examples/embed`: a tool that embeds the library with `default-features = false` (no
/// clap, anyhow or tracing subscriber), built by `scripts/test.sh`.
fn embed_example() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/rotate-embed-example");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p rotate-embed-example` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn a_tool_embedding_the_library_runs_the_whole_order_from_cron_through_its_entry_point() {
    let _turn = tls_lab_turn().await;
    let lab = tls_lab();
    let p = &lab.paths;
    let dir = tempdir("tls-embed");
    let cfg = whole_order(lab, &dir);
    // As a timer would start it: cron's PATH, no VAULT_*, no terminal.
    let out = Command::new(embed_example())
        .arg(&cfg)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "admin", "listener", "agents", "leaf", "proxy", "restarts", "health",
    ] {
        assert!(
            said.contains(&format!("({step}) —")),
            "no step {step} in:\n{said}"
        );
    }
    // Real clients agree, and so does rotate verify.
    let (code, status) = bao_status(lab, &p.admin_cert, &p.admin_key, &p.ca_bundle);
    assert_eq!(code, 0, "{status}");
    let home = p.dir.join("home").join("ncprd1");
    let login = crate::support::bao_login(lab, &home);
    assert!(login["auth"]["client_token"].is_string(), "{login:#}");
    let (exit, v) = rotate(&cfg, &["verify"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
}
