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

/// `examples/prod.toml`, as shipped.
pub(crate) fn prod_config() -> Config {
    Config::parse(
        include_str!("../examples/prod.toml"),
        std::path::Path::new("/etc/rotate/prod.toml"),
    )
    .unwrap()
}
