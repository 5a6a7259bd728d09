//! vault-client against a real OpenBao with an mTLS listener.

use std::collections::BTreeMap;

use rotate_tests::{INTERMEDIATE_CN, PKI_MOUNT, SERVER_NAME, shared};
use serde_json::{Map, Value, json};
use vault_client::{
    CertAuthApi, CertRole, ClientConfig, Error, HealthState, IssueRequest, KvApi, PkiApi,
    RetryPolicy, SysApi, TokenApi, TransportKind, VaultClient,
};

fn admin() -> VaultClient {
    shared().admin_client().expect("admin client")
}

#[tokio::test]
async fn mtls_with_server_name_override_reaches_seal_status_and_health() {
    let lab = shared();
    assert!(lab.addr.starts_with("https://127.0.0.1:"), "connects by IP");
    let anon = VaultClient::new(&lab.client_config(None).unwrap()).unwrap();
    let seal = anon.seal_status().await.unwrap();
    assert!(!seal.sealed && seal.initialized);
    assert_eq!(seal.version, "2.7.2");
    assert_eq!(seal.storage_type.as_deref(), Some("raft"));
    let health = anon.health().await.unwrap();
    assert_eq!((health.status, health.state), (200, HealthState::Active));
    assert_eq!(health.body.version, "2.7.2");
}

#[tokio::test]
async fn client_without_client_cert_is_rejected_and_the_error_says_so() {
    let lab = shared();
    let cfg = ClientConfig::new(&lab.addr)
        .unwrap()
        .ca_cert(&lab.paths.ca_bundle)
        .tls_server_name(SERVER_NAME);
    let err = VaultClient::new(&cfg)
        .unwrap()
        .seal_status()
        .await
        .unwrap_err();
    assert_eq!(
        err.transport_kind(),
        Some(TransportKind::ClientCertRejected),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("client certificate"), "{msg}");
    assert!(msg.contains("sys/seal-status"), "{msg}");
}

#[tokio::test]
async fn wrong_server_name_fails_verification_clearly() {
    let lab = shared();
    let cfg = lab
        .client_config(None)
        .unwrap()
        .tls_server_name("vault.dev.privsec.ch");
    let err = VaultClient::new(&cfg)
        .unwrap()
        .seal_status()
        .await
        .unwrap_err();
    assert_eq!(
        err.transport_kind(),
        Some(TransportKind::ServerNameMismatch),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("not valid for the TLS server name"),
        "{err}"
    );
}

#[tokio::test]
async fn only_the_given_ca_bundle_is_trusted() {
    let lab = shared();
    let other = rotate_tests::LabCa::generate().unwrap();
    let dir = tempdir();
    let ca = dir.join("other-ca.pem");
    std::fs::write(&ca, other.bundle_pem()).unwrap();
    let cfg = lab.client_config(None).unwrap().ca_cert(&ca);
    let err = VaultClient::new(&cfg)
        .unwrap()
        .seal_status()
        .await
        .unwrap_err();
    assert_eq!(
        err.transport_kind(),
        Some(TransportKind::ServerCertUntrusted),
        "{err}"
    );
}

#[tokio::test]
async fn unreadable_client_key_is_an_error_not_a_silent_drop() {
    let lab = shared();
    let cfg = lab
        .client_config(None)
        .unwrap()
        .client_identity(&lab.paths.admin_cert, "/nonexistent/admin.key");
    let err = VaultClient::new(&cfg).unwrap_err();
    assert!(matches!(err, Error::ReadFile { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/admin.key"), "{err}");

    let dir = tempdir();
    let not_pem = dir.join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let err = VaultClient::new(&lab.client_config(None).unwrap().ca_cert(&not_pem)).unwrap_err();
    assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");
}

#[tokio::test]
async fn connection_refused_is_named_and_retried_within_bounds() {
    let lab = shared();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = lab.client_config(None).unwrap();
    cfg.addr = format!("https://127.0.0.1:{port}").parse().unwrap();
    cfg.retry = RetryPolicy {
        max_attempts: 3,
        base_delay: std::time::Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    let err = VaultClient::new(&cfg)
        .unwrap()
        .seal_status()
        .await
        .unwrap_err();
    match &err {
        Error::Transport { kind, attempts, .. } => {
            assert_eq!(*kind, TransportKind::ConnectionRefused);
            assert_eq!(*attempts, 3);
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn api_error_carries_path_status_and_vault_message() {
    let err = admin()
        .write_policy("broken-policy", "path \"x\" { capabilities = [")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("PUT sys/policies/acl/broken-policy: HTTP 400: "),
        "{msg}"
    );
    assert!(msg.contains("parse"), "Vault's own message is kept: {msg}");

    let err = admin().read_role("no-such-mount", "x").await;
    assert!(matches!(err, Ok(None) | Err(Error::Api { .. })), "{err:?}");
}

/// A thousand-app run's capability check (6,000 paths) is answered, path by path:
/// OpenBao refuses one body that large ("high complexity"), so the client asks in chunks.
#[tokio::test]
async fn capabilities_of_thousands_of_paths_are_answered() {
    let paths: Vec<String> = (0..6000)
        .map(|i| format!("auth/cert/certs/agent-app{i}"))
        .chain(["sys/policies/acl/x".to_owned()])
        .collect();
    let caps = admin().capabilities_self(&paths).await.unwrap();
    assert_eq!(caps.len(), paths.len());
    assert!(
        paths
            .iter()
            .all(|p| caps[p].iter().any(|c| c == "root" || c == "update")),
        "the lab's admin token may write every one"
    );
}

#[tokio::test]
async fn policies_round_trip() {
    let v = admin();
    assert_eq!(v.read_policy("rt-policy").await.unwrap(), None);
    let text = "path \"kv/data/rt\" {\n  capabilities = [\"read\"]\n}\n";
    v.write_policy("rt-policy", text).await.unwrap();
    assert_eq!(
        v.read_policy("rt-policy").await.unwrap().as_deref(),
        Some(text)
    );
}

#[tokio::test]
async fn mounts_and_kv_version_detection() {
    let v = admin();
    v.enable_mount(
        "kv-rt2",
        "kv",
        BTreeMap::from([("version".into(), "2".into())]),
    )
    .await
    .unwrap();
    v.enable_mount(
        "kv-rt1",
        "kv",
        BTreeMap::from([("version".into(), "1".into())]),
    )
    .await
    .unwrap();
    let mounts = v.list_mounts().await.unwrap();
    assert_eq!(mounts["kv-rt2/"].kv_version(), Some(2));
    assert_eq!(mounts["kv-rt1/"].kv_version(), Some(1));
    assert_eq!(mounts[&format!("{PKI_MOUNT}/")].mount_type, "pki");
    assert_eq!(mounts[&format!("{PKI_MOUNT}/")].kv_version(), None);
}

#[tokio::test]
async fn kv2_write_read_metadata_and_cas_create_only() {
    let v = admin();
    v.enable_mount(
        "kv-cas",
        "kv",
        BTreeMap::from([("version".into(), "2".into())]),
    )
    .await
    .unwrap();
    assert!(v.kv2_read("kv-cas", "app").await.unwrap().is_none());
    assert!(
        v.kv2_read_metadata("kv-cas", "app")
            .await
            .unwrap()
            .is_none()
    );
    let data: Map<String, Value> = json!({"user": "app", "pass": "s3cret"})
        .as_object()
        .cloned()
        .unwrap();
    let ver = v
        .kv2_write("kv-cas", "app", data.clone(), Some(0))
        .await
        .unwrap();
    assert_eq!(ver.version, 1);
    let got = v.kv2_read("kv-cas", "app").await.unwrap().unwrap();
    assert_eq!(got.data, data);
    assert!(
        !format!("{got:?}").contains("s3cret"),
        "Debug never shows values"
    );
    // cas=0 refuses to overwrite an existing secret.
    let err = v
        .kv2_write("kv-cas", "app", Map::new(), Some(0))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert_eq!(
        v.kv2_read_metadata("kv-cas", "app")
            .await
            .unwrap()
            .unwrap()
            .current_version,
        1
    );
}

#[tokio::test]
async fn auth_methods_list_and_enable() {
    let v = admin();
    v.enable_auth("cert-rt", "cert", "test").await.unwrap();
    let auth = v.list_auth().await.unwrap();
    assert_eq!(auth["cert-rt/"].mount_type, "cert");
    assert_eq!(auth["token/"].mount_type, "token");
    let err = v.enable_auth("cert-rt", "cert", "test").await.unwrap_err();
    assert_eq!(err.status(), Some(400), "enabling twice is refused: {err}");
}

fn role_params(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

#[tokio::test]
async fn pki_roles_issue_sign_and_issuers() {
    let v = admin();
    assert!(v.read_role(PKI_MOUNT, "rt-client").await.unwrap().is_none());
    v.write_role(
        PKI_MOUNT,
        "rt-client",
        role_params(json!({
            "allowed_domains": ["rt.prod.privsec.ch"],
            "allow_bare_domains": true,
            "allow_subdomains": false,
            "client_flag": true,
            "server_flag": false,
            "key_type": "ec",
            "key_bits": 256,
            "ttl": "1h",
            "max_ttl": "24h",
        })),
    )
    .await
    .unwrap();
    let role = v.read_role(PKI_MOUNT, "rt-client").await.unwrap().unwrap();
    assert_eq!(role["allowed_domains"], json!(["rt.prod.privsec.ch"]));
    assert_eq!(role["ttl"], json!(3600));
    assert_eq!(role["client_flag"], json!(true));

    let req = IssueRequest {
        common_name: "rt.prod.privsec.ch".into(),
        ttl: Some("30m".into()),
        ..Default::default()
    };
    let issued = v.issue(PKI_MOUNT, "rt-client", &req).await.unwrap();
    assert!(
        issued
            .certificate
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert!(issued.private_key.as_ref().unwrap().contains("PRIVATE KEY"));
    assert!(issued.serial_number.contains(':'), "hex serial aa:bb:..");
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"));

    // CSR mode: the key is made here and never sent.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rt.prod.privsec.ch");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let signed = v.sign(PKI_MOUNT, "rt-client", &csr, &req).await.unwrap();
    assert!(signed.private_key.is_none());
    assert_ne!(signed.serial_number, issued.serial_number);

    let wrong = IssueRequest {
        common_name: "evil.example.com".into(),
        ..Default::default()
    };
    let err = v.issue(PKI_MOUNT, "rt-client", &wrong).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(
        err.to_string().contains("pki-prod/issue/rt-client"),
        "{err}"
    );

    let issuers = v.list_issuers(PKI_MOUNT).await.unwrap();
    assert!(!issuers.is_empty());
    let default = v.read_issuer(PKI_MOUNT, "default").await.unwrap().unwrap();
    assert!(issuers.contains(&default.issuer_id));
    assert_eq!(
        default.certificate.trim(),
        shared().ca.intermediate_pem().trim()
    );
    let chain = v.read_ca_chain(PKI_MOUNT).await.unwrap();
    assert!(
        chain.contains(shared().ca.root_pem().trim()),
        "chain ends at the root"
    );
    let _ = INTERMEDIATE_CN;
}

#[tokio::test]
async fn cert_auth_mappings_round_trip_and_login() {
    let lab = shared();
    let v = admin();
    v.enable_auth("cert-login", "cert", "test").await.unwrap();
    v.write_policy(
        "rt-login-policy",
        "path \"sys/health\" { capabilities = [\"read\"] }",
    )
    .await
    .unwrap();
    assert!(
        v.read_cert_role("cert-login", "rt")
            .await
            .unwrap()
            .is_none()
    );
    let role = CertRole {
        certificate: lab.ca.bundle_pem(),
        allowed_common_names: vec!["rt-agent.prod.privsec.ch".into()],
        token_policies: vec!["rt-login-policy".into()],
        token_ttl: 600,
        ..Default::default()
    };
    v.write_cert_role("cert-login", "rt", &role).await.unwrap();
    let back = v.read_cert_role("cert-login", "rt").await.unwrap().unwrap();
    assert_eq!(back.allowed_common_names, role.allowed_common_names);
    assert_eq!(back.token_policies, role.token_policies);
    assert_eq!(back.token_ttl, 600);
    assert_eq!(
        v.list_cert_roles("cert-login").await.unwrap(),
        vec!["rt".to_string()]
    );

    // Log in with a client certificate of that CN, through the mTLS listener.
    let dir = tempdir();
    let leaf = lab
        .ca
        .leaf(
            "rt-agent.prod.privsec.ch",
            &[],
            &[],
            false,
            time::Duration::hours(1),
        )
        .unwrap();
    std::fs::write(dir.join("a.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("a.key"), leaf.key_pem.as_bytes()).unwrap();
    let cfg = lab
        .client_config(None)
        .unwrap()
        .client_identity(dir.join("a.crt"), dir.join("a.key"));
    let agent = VaultClient::new(&cfg).unwrap();
    let auth = agent.cert_login("cert-login", "rt").await.unwrap();
    assert_eq!(
        auth.token_policies,
        vec!["default".to_string(), "rt-login-policy".to_string()]
    );
    let meta = auth.metadata.clone().unwrap();
    assert_eq!(meta["common_name"], "rt-agent.prod.privsec.ch");
    assert!(
        meta["serial_number"].chars().all(|c| c.is_ascii_digit()),
        "decimal serial"
    );
    let me = agent
        .with_token(&auth.client_token)
        .unwrap()
        .lookup_self()
        .await
        .unwrap();
    assert_eq!(me.path, "auth/cert-login/login");
    assert!(me.policies.contains(&"rt-login-policy".to_string()));

    // The admin certificate (another CN) does not match the mapping.
    let err = VaultClient::new(&lab.client_config(None).unwrap())
        .unwrap()
        .cert_login("cert-login", "rt")
        .await
        .unwrap_err();
    assert!(matches!(err.status(), Some(400..=403)), "{err}");

    v.delete_cert_role("cert-login", "rt").await.unwrap();
    assert!(
        v.read_cert_role("cert-login", "rt")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn token_lookup_self_as_admin() {
    let me = admin().lookup_self().await.unwrap();
    assert_eq!(me.policies, vec!["root".to_string()]);
}

#[tokio::test]
async fn health_parses_uninitialised_sealed_and_active_on_a_fresh_server() {
    let dir = tempdir().join("fresh-lab");
    let mut lab = rotate_tests::Lab::create(&dir).unwrap();
    let anon = VaultClient::new(&lab.client_config(None).unwrap()).unwrap();
    let h = anon.health().await.unwrap();
    assert_eq!((h.status, h.state), (501, HealthState::NotInitialized));
    assert!(!h.body.initialized);
    let seal = anon.seal_status().await.unwrap();
    assert!(!seal.initialized);
    lab.initialize().await.unwrap();
    lab.restart().unwrap();
    let h = anon.health().await.unwrap();
    assert_eq!((h.status, h.state), (503, HealthState::Sealed));
    assert!(h.body.sealed && h.body.initialized);
    assert!(anon.seal_status().await.unwrap().sealed);
    // A sealed server answers 503 on other endpoints too, and that is not retried away.
    let err = lab.admin_client().unwrap().list_mounts().await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    lab.unseal().await.unwrap();
    assert_eq!(anon.health().await.unwrap().state, HealthState::Active);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "rotate-it-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

#[tokio::test]
async fn ca_directory_works_like_vault_capath() {
    let lab = shared();
    let dir = tempdir();
    let capath = dir.join("capath");
    std::fs::create_dir_all(&capath).unwrap();
    std::fs::write(capath.join("root.pem"), lab.ca.root_pem()).unwrap();
    std::fs::write(capath.join("intermediate.pem"), lab.ca.intermediate_pem()).unwrap();
    let vars = [
        ("BAO_ADDR", lab.addr.clone()),
        ("VAULT_CAPATH", capath.display().to_string()),
        (
            "VAULT_CLIENT_CERT",
            lab.paths.admin_cert.display().to_string(),
        ),
        (
            "VAULT_CLIENT_KEY",
            lab.paths.admin_key.display().to_string(),
        ),
        ("VAULT_TLS_SERVER_NAME", SERVER_NAME.to_owned()),
        ("VAULT_TOKEN", format!("{}\n", lab.token())),
    ];
    let cfg =
        ClientConfig::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .unwrap();
    let v = VaultClient::new(&cfg).unwrap();
    assert_eq!(
        v.lookup_self().await.unwrap().policies,
        vec!["root".to_string()]
    );

    std::fs::write(capath.join("junk.txt"), "not a certificate").unwrap();
    let err = VaultClient::new(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("junk.txt"),
        "a bad file in VAULT_CAPATH is named: {err}"
    );
}

#[tokio::test]
async fn a_handshake_names_the_client_cas_the_listener_loaded_as_openssl_shows_them() {
    let lab = shared();
    let h = vault_client::tls_handshake(
        &lab.client_config(None).unwrap(),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let named: Vec<String> = h
        .acceptable_client_cas
        .expect("the mTLS listener asks for a client certificate")
        .iter()
        .map(|d| pki_ops::distinguished_name(d).expect("a DER name"))
        .collect();
    let listed: Vec<String> = pki_ops::parse_bundle_file(&lab.paths.client_ca)
        .unwrap()
        .into_iter()
        .map(|c| c.subject)
        .collect();
    assert_eq!(named, listed);
    // The real client sees the same list.
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", lab.port)])
        .args(["-servername", SERVER_NAME])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let section = text
        .split("Acceptable client certificate CA names")
        .nth(1)
        .unwrap_or_else(|| panic!("openssl s_client lists no client CA names: {text}"));
    for cn in [INTERMEDIATE_CN, rotate_tests::ROOT_CN] {
        assert!(section.contains(cn), "{cn} not in {section}");
        assert!(
            named.iter().any(|n| n.contains(cn)),
            "{cn} not in {named:?}"
        );
    }
}

#[tokio::test]
async fn preloaded_identity_is_used_instead_of_the_paths_which_still_name_errors() {
    let lab = shared();
    let p = &lab.paths;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("agent.crt"), dir.path().join("agent.key"));
    let base = ClientConfig::new(&lab.addr)
        .unwrap()
        .ca_cert(&p.ca_bundle)
        .tls_server_name(SERVER_NAME)
        .client_identity(&cert, &key);
    // Nothing at those paths: reading them is an error that names the file.
    let err = VaultClient::new(&base).unwrap_err().to_string();
    assert!(err.contains(&cert.display().to_string()), "{err}");
    // Preloaded (as root reads an agent's files through a directory fd): used as is.
    let read = |f: &std::path::Path| zeroize::Zeroizing::new(std::fs::read(f).unwrap());
    let cfg = base
        .clone()
        .preload(&cert, read(&p.admin_cert))
        .preload(&key, read(&p.admin_key));
    assert!(
        !VaultClient::new(&cfg)
            .unwrap()
            .seal_status()
            .await
            .unwrap()
            .sealed
    );
    // A bad preloaded key is refused naming its path, not silently dropped.
    let bad = base
        .preload(&cert, read(&p.admin_cert))
        .preload(&key, zeroize::Zeroizing::new(b"not a key".to_vec()));
    let err = VaultClient::new(&bad).unwrap_err().to_string();
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert!(!format!("{cfg:?}").contains("PRIVATE KEY"));
}
