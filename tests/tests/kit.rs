//! An embedder's unit test of a step against a mocked Vault, with the public test kit
//! (`rotate-cli` feature `test-kit`): step 3's plan for a new app reads, and writes nothing.

use rotate_cli::report::ChangeKind;
use rotate_cli::steps::{AgentsStep, Deps, Step};
use rotate_cli::testing::{Mocks, answers, ca_and_leaf};
use rotate_cli::{Cancel, Config};

#[tokio::test]
async fn step_3_plans_a_new_app_against_a_mocked_vault_reading_only() {
    let home = tempfile::tempdir().unwrap();
    let text = format!(
        "env = \"prod\"\n[vault]\naddr = \"https://vault.example:8200\"\n\
         [pki]\nmount = \"pki-prod\"\nissuer_name = \"Test CA\"\n\
         [agents]\ndomain = \"prod.example\"\n\
         [[apps]]\nname = \"billing\"\nhome = \"{}\"\nuser = \"root\"\n",
        home.path().display()
    );
    let cfg = Config::parse(&text, std::path::Path::new("/etc/rotate/kit.toml")).unwrap();
    let (ca, _) = ca_and_leaf("Test CA");

    // Only reads are expected: any write would panic the mock.
    let mut m = Mocks::default();
    m.sys
        .expect_list_auth()
        .returning(|| Ok(answers::auth_methods(&[("cert/", "cert")])));
    m.pki.expect_read_role().returning(|_, _| Ok(None));
    m.sys.expect_read_policy().returning(|_| Ok(None));
    m.cert.expect_read_cert_role().returning(|_, _| Ok(None));

    let runner = hooks::MockCommandRunner::new();
    let cancel = Cancel::new();
    let deps = Deps {
        vault: m.vault(),
        runner: &runner,
        clock: &|| 1_767_225_600,
        cancel: &cancel,
    };
    let step = AgentsStep::new(&cfg, deps, ca);
    let plan = step.plan(&cfg.apps[0]).await.unwrap();

    let created: Vec<&str> = plan
        .changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Create)
        .map(|c| c.object.as_str())
        .collect();
    for object in [
        "pki-prod/roles/agent-mtls-billing",
        "sys/policies/acl/pki-issue-billing",
        "auth/cert/certs/agent-billing",
    ] {
        assert!(
            created.iter().any(|c| c.contains(object)),
            "{object} not planned: {created:?}"
        );
    }
    assert_eq!(
        std::fs::read_dir(home.path()).unwrap().count(),
        0,
        "a plan writes no file"
    );
}
