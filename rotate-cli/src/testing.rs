//! A test kit (feature `test-kit`; the crate's own unit tests use it too): a mocked Vault
//! (every capability a `mockall` mock: a call nobody expected panics, so a test that sets
//! only reads proves nothing writes), answers to build its replies from, a CA that signs
//! leaves, and the prod example config. A step's `plan` against mocks:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use rotate_cli::testing::{Mocks, answers};
//! let mut mocks = Mocks::default();
//! mocks.sys.expect_list_auth().returning(|| Ok(answers::auth_methods(&[("cert/", "cert")])));
//! let vault = mocks.vault();
//! # let _ = vault; }
//! ```

use crate::config::Config;
use crate::deps::{MockGateConnector, Vault};

/// One mock per capability; set expectations, then borrow them as a [`Vault`].
#[derive(Default)]
pub struct Mocks {
    /// `sys/*`.
    pub sys: vault_client::MockSysApi,
    /// The PKI mount.
    pub pki: vault_client::MockPkiApi,
    /// Cert auth.
    pub cert: vault_client::MockCertAuthApi,
    /// The admin's token.
    pub token: vault_client::MockTokenApi,
    /// KV v2.
    pub kv: vault_client::MockKvApi,
    /// Reconnecting with a new admin identity.
    pub identity: vault_client::MockReconnect,
    /// Fresh clients for gates.
    pub gate: MockGateConnector,
}

impl Mocks {
    /// The mocks as the steps see Vault.
    pub fn vault(&self) -> Vault<'_> {
        Vault {
            sys: &self.sys,
            pki: &self.pki,
            cert: &self.cert,
            token: &self.token,
            kv: &self.kv,
            identity: &self.identity,
            gate: &self.gate,
        }
    }

    /// `sys/seal-status` answers unsealed (what an engine asks before unwinding).
    pub fn unsealed(&mut self) -> &mut Self {
        self.sys
            .expect_seal_status()
            .returning(|| Ok(answers::seal_status(false)));
        self
    }
}

mockall::mock! {
    /// What the gates build as "the admin with these files": `sys/*` and token calls.
    pub Admin {}
    #[async_trait::async_trait]
    impl vault_client::SysApi for Admin {
        async fn health(&self) -> vault_client::Result<vault_client::Health>;
        async fn seal_status(&self) -> vault_client::Result<vault_client::SealStatus>;
        async fn init(&self, shares: u32, threshold: u32) -> vault_client::Result<vault_client::InitResponse>;
        async fn unseal(&self, key: &str) -> vault_client::Result<vault_client::SealStatus>;
        async fn list_mounts(&self) -> vault_client::Result<std::collections::BTreeMap<String, vault_client::MountInfo>>;
        async fn enable_mount(
            &self,
            path: &str,
            engine: &str,
            options: std::collections::BTreeMap<String, String>,
        ) -> vault_client::Result<()>;
        async fn list_auth(&self) -> vault_client::Result<std::collections::BTreeMap<String, vault_client::MountInfo>>;
        async fn enable_auth(&self, path: &str, method: &str, description: &str) -> vault_client::Result<()>;
        async fn read_policy(&self, name: &str) -> vault_client::Result<Option<String>>;
        async fn write_policy(&self, name: &str, policy: &str) -> vault_client::Result<()>;
        async fn delete_policy(&self, name: &str) -> vault_client::Result<()>;
        async fn disable_auth(&self, path: &str) -> vault_client::Result<()>;
        async fn raft_autopilot_state(&self) -> vault_client::Result<Option<vault_client::AutopilotState>>;
        async fn leader(&self) -> vault_client::Result<vault_client::Leader>;
    }
    #[async_trait::async_trait]
    impl vault_client::TokenApi for Admin {
        async fn lookup_self(&self) -> vault_client::Result<vault_client::TokenInfo>;
        async fn revoke_accessor(&self, accessor: &str) -> vault_client::Result<()>;
        async fn capabilities_self(
            &self,
            paths: &[String],
        ) -> vault_client::Result<std::collections::BTreeMap<String, Vec<String>>>;
    }
}

/// `examples/prod.toml`, as shipped.
///
/// # Panics
/// Never: the example is tested to load.
pub fn prod_config() -> Config {
    Config::parse(
        include_str!("../examples/prod.toml"),
        std::path::Path::new("/etc/rotate/prod.toml"),
    )
    .expect("examples/prod.toml loads")
}

/// A CA named `cn` (with a fresh key) and a leaf it signs, valid for January 2026: PEM
/// of each.
///
/// # Panics
/// When rcgen cannot make a key (it always can).
pub fn ca_and_leaf(cn: &str) -> (String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, date_time_ymd,
    };
    let key = KeyPair::generate().expect("a CA key");
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.not_before = date_time_ymd(2025, 1, 1);
    p.not_after = date_time_ymd(2030, 1, 1);
    let ca = p.self_signed(&key).expect("a self-signed CA");
    let issuer = Issuer::new(p, key);
    let mut l =
        CertificateParams::new(vec!["a.int.privsec.ch".to_owned()]).expect("leaf parameters");
    l.distinguished_name
        .push(DnType::CommonName, "a.int.privsec.ch");
    l.not_before = date_time_ymd(2026, 1, 1);
    l.not_after = date_time_ymd(2026, 1, 31);
    let leaf = l
        .signed_by(&KeyPair::generate().expect("a leaf key"), &issuer)
        .expect("a leaf the CA signs");
    (ca.pem(), leaf.pem())
}

/// Vault's answers, as the mocks return them.
pub mod answers {
    use std::collections::BTreeMap;

    /// `sys/auth`: the given `(path, type)` auth methods, e.g. `("cert/", "cert")`.
    pub fn auth_methods(methods: &[(&str, &str)]) -> BTreeMap<String, vault_client::MountInfo> {
        methods
            .iter()
            .map(|(path, kind)| {
                let info = serde_json::from_value(serde_json::json!({ "type": kind }))
                    .expect("a mount info from its type");
                ((*path).to_owned(), info)
            })
            .collect()
    }

    /// `sys/seal-status` of an unsealed (or sealed) single-key Shamir Vault.
    pub fn seal_status(sealed: bool) -> vault_client::SealStatus {
        serde_json::from_value(serde_json::json!({
            "type": "shamir", "initialized": true, "sealed": sealed, "t": 1, "n": 1, "progress": 0
        }))
        .expect("a seal status")
    }

    /// A cert auth mapping: `ca_pem` trusted, `cn` allowed, `policies` attached.
    pub fn mapping(ca_pem: &str, cn: &str, policies: &[&str]) -> vault_client::CertRole {
        vault_client::CertRole {
            certificate: ca_pem.to_owned(),
            allowed_common_names: vec![cn.to_owned()],
            token_policies: policies.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        }
    }
}
