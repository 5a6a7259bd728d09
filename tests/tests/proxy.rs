//! Step 5 with the proxy's client identity, judged by a real proxy: nginx forwards `/v1/`
//! to the lab's mTLS listener, verifying Vault with the bundle step 5 writes and presenting
//! the client certificate step 5 issues; `bao status` through it is the real client.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rotate_cli::Exit;
use rotate_tests::{Lab, SERVER_NAME, shared};
use vault_client::PkiApi;

use crate::support::{Nginx, config_in, errors, free_port, rotate, target, tempdir};

const PROXY_NAME: &str = "proxyprod.int.privsec.ch";

/// `bao status` against `addr` (the proxy), verifying it as [`PROXY_NAME`] with the lab
/// bundle, presenting no client certificate: exit code and output.
fn bao_status_via(lab: &Lab, addr: &str) -> (i32, String) {
    crate::support::bao_status_env(
        lab,
        &[
            ("VAULT_ADDR", addr.as_ref()),
            ("VAULT_CACERT", lab.paths.ca_bundle.as_os_str()),
            ("VAULT_TLS_SERVER_NAME", PROXY_NAME.as_ref()),
        ],
    )
}

/// A proxy home with a bundle and an old client identity from a foreign CA, and a real
/// nginx forwarding `/v1/` to the lab's listener with them.
fn proxy_home(lab: &Lab, dir: &Path) -> (PathBuf, Nginx) {
    let home = dir.join("home/proxyprod");
    std::fs::create_dir_all(home.join("tls")).unwrap();
    std::fs::copy(&lab.paths.ca_bundle, home.join("tls/vault-ca.pem")).unwrap();
    // From a CA the listener does not trust: until step 5 replaces it, Vault refuses the
    // proxy (nginx answers 502), so a working proxy afterwards proves nginx reloaded and
    // presents the new identity.
    let old = rotate_tests::LabCa::generate()
        .unwrap()
        .leaf("proxy-old", &[], &[], false, time::Duration::days(1))
        .unwrap();
    std::fs::write(home.join("tls/proxy-client.crt"), &old.cert_pem).unwrap();
    let key = home.join("tls/proxy-client.key");
    std::fs::write(&key, old.key_pem.as_bytes()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = lab
        .ca
        .leaf(
            PROXY_NAME,
            &[PROXY_NAME],
            &[],
            true,
            time::Duration::days(1),
        )
        .unwrap();
    let (srv_crt, srv_key) = (dir.join("proxy-server.crt"), dir.join("proxy-server.key"));
    std::fs::write(&srv_crt, &server.cert_pem).unwrap();
    std::fs::write(&srv_key, server.key_pem.as_bytes()).unwrap();
    let h = home.display().to_string();
    let nginx = Nginx::start(dir, |port| {
        format!(
            r#"server {{
    listen 127.0.0.1:{port} ssl;
    server_name {PROXY_NAME};
    ssl_certificate {srv_crt};
    ssl_certificate_key {srv_key};
    location /v1/ {{
      proxy_pass https://127.0.0.1:{vault};
      proxy_ssl_server_name on;
      proxy_ssl_name {SERVER_NAME};
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 4;
      proxy_ssl_trusted_certificate {h}/tls/vault-ca.pem;
      proxy_ssl_certificate {h}/tls/proxy-client.crt;
      proxy_ssl_certificate_key {h}/tls/proxy-client.key;
    }}
  }}"#,
            srv_crt = srv_crt.display(),
            srv_key = srv_key.display(),
            vault = lab.port,
        )
    });
    (home, nginx)
}

/// The lab config with `[proxy]` for `home`, reloading `nginx`, probing `probe`.
fn proxy_config(lab: &Lab, dir: &Path, home: &Path, nginx: &Nginx, probe: &str) -> PathBuf {
    let cfg = config_in(lab, dir, &["proxyapp2"], "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let section = format!(
        r#"
[proxy]
name = "proxyprod"
home = "{home}"
user = "root"
ca_bundle = "tls/vault-ca.pem"
reload = "cmd:sh -c 'echo reload >> {count} && kill -HUP $(cat {pid})'"
client_cert = "tls/proxy-client.crt"
client_key = "tls/proxy-client.key"
probe = "{probe}"
probe_server_name = "{PROXY_NAME}"
probe_ca = "{ca}"
probe_timeout = "3s"
"#,
        home = home.display(),
        pid = nginx.pid_file.display(),
        count = reloads(dir).display(),
        ca = lab.paths.ca_bundle.display(),
    );
    let plain = "\n[proxy]\nname = \"proxyprod\"\n";
    assert!(text.contains(plain), "the lab config changed: {text}");
    std::fs::write(&cfg, text.replacen(plain, &section, 1)).unwrap();
    cfg
}

/// The file each reload of nginx appends a line to.
fn reloads(dir: &Path) -> PathBuf {
    dir.join("reloads")
}

fn reload_count(dir: &Path) -> usize {
    std::fs::read_to_string(reloads(dir))
        .unwrap_or_default()
        .lines()
        .count()
}

fn files(home: &Path) -> Vec<Vec<u8>> {
    [
        "tls/vault-ca.pem",
        "tls/proxy-client.crt",
        "tls/proxy-client.key",
    ]
    .iter()
    .map(|f| std::fs::read(home.join(f)).unwrap())
    .collect()
}

#[tokio::test]
async fn step_5_issues_the_proxy_client_identity_and_a_real_nginx_reaches_vault_with_it() {
    let lab = shared();
    let dir = tempdir("proxy-identity");
    let (home, nginx) = proxy_home(lab, &dir);
    let addr = format!("https://127.0.0.1:{}", nginx.port);
    let (code, out) = bao_status_via(lab, &addr);
    assert_ne!(
        code, 0,
        "Vault accepted the foreign client certificate: {out}"
    );
    assert!(out.contains("502"), "{out}");
    let cfg = proxy_config(lab, &dir, &home, &nginx, &addr);
    let initial = files(&home);

    // `rotate rollback` after a committed step 5 puts every file back, reloads the proxy
    // and revokes the certificate it issued: the proxy is refused again.
    let (exit, v) = rotate(&cfg, &["run", "--step", "proxy"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let first = target(&v, "proxy", "proxy")["applied"]["client_serial"]
        .as_str()
        .unwrap()
        .to_owned();
    let (exit, v) = rotate(&cfg, &["rollback"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(files(&home), initial);
    assert_eq!(reload_count(&dir), 2);
    let admin = lab.admin_client().unwrap();
    let rec = admin.read_cert("pki-prod", &first).await.unwrap().unwrap();
    assert_ne!(
        rec.revocation_time, 0,
        "rolled-back certificate not revoked"
    );
    // nginx reloads asynchronously (old workers finish first): wait for the refusal.
    let start = std::time::Instant::now();
    loop {
        let (code, out) = bao_status_via(lab, &addr);
        if code != 0 {
            assert!(
                out.contains("502"),
                "refused otherwise than by Vault: {out}"
            );
            break;
        }
        assert!(
            start.elapsed().as_secs() < 10,
            "the proxy still reaches Vault with the restored (refused) identity"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let (exit, v) = rotate(&cfg, &["run", "--step", "proxy"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    let t = target(&v, "proxy", "proxy");
    assert_eq!(t["outcome"], "committed", "{t:#}");
    let serial = t["applied"]["client_serial"].as_str().unwrap().to_owned();
    assert!(
        t["proof"]["client_accepted"]
            .as_str()
            .unwrap()
            .contains(&serial),
        "{t:#}"
    );
    assert!(
        t["proof"]["probe"].as_str().unwrap().contains("through"),
        "{t:#}"
    );
    // On disk: the issued certificate, for the default CN, from pki-prod; key 0600.
    let cert = pki_ops::CertInfo::from_pem_file(&home.join("tls/proxy-client.crt")).unwrap();
    assert_eq!(cert.serial_hex, serial);
    assert_eq!(cert.cn(), "proxy-proxyprod.prod.privsec.ch");
    assert!(cert.client_auth);
    assert_eq!(
        cert.issuer_cn.as_deref(),
        Some(rotate_tests::INTERMEDIATE_CN)
    );
    let key = home.join("tls/proxy-client.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    pki_ops::key_matches_cert_files(&key, &home.join("tls/proxy-client.crt")).unwrap();
    assert_eq!(reload_count(&dir), 3);
    // The real client through the reloaded nginx.
    let (code, out) = bao_status_via(lab, &addr);
    assert_eq!(code, 0, "{out}");
    let (_, v) = rotate(&cfg, &["verify"]).await;
    for name in [
        format!(
            "proxy client certificate {}",
            home.join("tls/proxy-client.crt").display()
        ),
        format!("Vault through the proxy at {addr}"),
    ] {
        let c = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no check {name:?}: {v:#}"));
        assert_eq!(c["ok"], true, "{c:#}");
    }

    // Not due: an --if-due run leaves the identity alone (no certificate issued).
    let before = files(&home);
    let (exit, v) = rotate(&cfg, &["run", "--step", "proxy", "--if-due"]).await;
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(
        target(&v, "proxy", "proxy")["outcome"],
        "unchanged",
        "{v:#}"
    );
    assert_eq!(files(&home), before);

    // A probe that never answers: the gate fails, every file is restored byte for byte,
    // nginx is reloaded back, and the certificate the run issued is revoked.
    let dead = format!("https://127.0.0.1:{}", free_port());
    let broken = proxy_config(lab, &dir, &home, &nginx, &dead);
    let (exit, v) = rotate(&broken, &["run", "--step", "proxy"]).await;
    assert_eq!(exit, Exit::GateFailed, "{v:#}");
    let t = target(&v, "proxy", "proxy");
    assert_eq!(t["outcome"], "rolled_back", "{t:#}");
    assert!(errors(&v).contains(&dead), "{}", errors(&v));
    assert_eq!(files(&home), before);
    // Reloaded once for the new files and once more for the restored ones.
    assert_eq!(reload_count(&dir), 5);
    let issued = t["applied"]["client_serial"].as_str().unwrap();
    let rec = admin.read_cert("pki-prod", issued).await.unwrap().unwrap();
    assert_ne!(rec.revocation_time, 0, "issued certificate not revoked");
    let (code, out) = bao_status_via(lab, &addr);
    assert_eq!(code, 0, "{out}");
    let log = std::fs::read_to_string(&nginx.error_log).unwrap_or_default();
    assert!(
        !log.contains("upstream SSL certificate verify error"),
        "{log}"
    );
}
