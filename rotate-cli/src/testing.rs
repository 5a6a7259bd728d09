//! Unit-test fixtures: a mocked Vault (every capability a `mockall` mock: a call nobody
//! expected panics, so a test that sets only reads proves nothing writes) and the prod
//! example config.

use crate::config::Config;
use crate::deps::{MockGateConnector, Vault};

/// One mock per capability; set expectations, then borrow them as a [`Vault`].
#[derive(Default)]
pub(crate) struct Mocks {
    pub(crate) sys: vault_client::MockSysApi,
    pub(crate) pki: vault_client::MockPkiApi,
    pub(crate) cert: vault_client::MockCertAuthApi,
    pub(crate) token: vault_client::MockTokenApi,
    pub(crate) kv: vault_client::MockKvApi,
    pub(crate) identity: vault_client::MockReconnect,
    pub(crate) gate: MockGateConnector,
}

impl Mocks {
    /// The mocks as the steps see Vault.
    pub(crate) fn vault(&self) -> Vault<'_> {
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
    pub(crate) fn unsealed(&mut self) -> &mut Self {
        self.sys.expect_seal_status().returning(|| {
            Ok(serde_json::from_value(serde_json::json!({
                "type": "shamir", "initialized": true, "sealed": false, "t": 1, "n": 1, "progress": 0
            }))
            .unwrap())
        });
        self
    }
}

mockall::mock! {
    /// What the gates build as "the admin with these files": `sys/*` and token calls.
    pub(crate) Admin {}
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
pub(crate) fn prod_config() -> Config {
    Config::parse(
        include_str!("../examples/prod.toml"),
        std::path::Path::new("/etc/rotate/prod.toml"),
    )
    .unwrap()
}

/// A CA named `cn` (with a fresh key) and a leaf it signs, valid for January 2026.
pub(crate) fn ca_and_leaf(cn: &str) -> (String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, date_time_ymd,
    };
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.not_before = date_time_ymd(2025, 1, 1);
    p.not_after = date_time_ymd(2030, 1, 1);
    let ca = p.self_signed(&key).unwrap();
    let issuer = Issuer::new(p, key);
    let mut l = CertificateParams::new(vec!["a.int.privsec.ch".to_owned()]).unwrap();
    l.distinguished_name
        .push(DnType::CommonName, "a.int.privsec.ch");
    l.not_before = date_time_ymd(2026, 1, 1);
    l.not_after = date_time_ymd(2026, 1, 31);
    let leaf = l.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap();
    (ca.pem(), leaf.pem())
}
