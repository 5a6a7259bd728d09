//! What a step brings to the list ([`super::ORDER`]) beside the step itself: how it is
//! built for a run, what step 0 checks for it, what `rotate verify` checks.

use async_trait::async_trait;

use crate::checks::PreflightReport;
use crate::checks::VerifyReport;
use crate::config::{AppConfig, Config};
use crate::engine::context::Deps;
use crate::engine::{Absent, DynStep};
use crate::served::Served;
use crate::state::journal::{RunRequest, StepId};
use crate::topology::Names;

/// One step of the order as the list knows it.
#[async_trait]
pub(crate) trait StepDef: Send + Sync {
    /// Which step.
    fn id(&self) -> StepId;

    /// The step for a run, given the CA chain step 0 verified. A global step the config
    /// does not set up is [`Absent`] (see [`absent_unless`]).
    fn build<'a>(
        &self,
        cfg: &'a Config,
        deps: Deps<'a>,
        chain: &str,
        request: &RunRequest,
    ) -> Box<dyn DynStep + 'a>;

    /// Step 0: what the admin token must be able to do, the roles it issues from and the
    /// programs root will run for it, over `ctx.apps`. Only asked when the step is run.
    fn needs(&self, _ctx: &Ctx<'_>, _needs: &mut Needs) {}

    /// Step 0: its own checks (configured, files, owners, mounts), reads only. Only
    /// asked when the step is run.
    async fn preflight(&self, _ctx: &Ctx<'_>, _r: &mut PreflightReport) {}

    /// `rotate verify`, once: its checks of what it manages beyond the apps, and the
    /// material it adds to the inventory. `seen` carries what an earlier step's checks
    /// saw (the listener as served) to later ones.
    async fn verify(&self, _ctx: &Ctx<'_>, _seen: &mut Seen, _r: &mut VerifyReport) {}

    /// `rotate verify`, per app: its checks of what it manages for `app`.
    async fn verify_app(
        &self,
        _ctx: &Ctx<'_>,
        _app: &AppView<'_>,
        _seen: &Seen,
        _r: &mut VerifyReport,
    ) {
    }
}

/// What preflight and verify look at.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a Config,
    pub(crate) apps: &'a [&'a AppConfig],
    /// What the run asks for (verify: every step, no KV switches).
    pub(crate) request: &'a RunRequest,
    pub(crate) deps: Deps<'a>,
}

impl Ctx<'_> {
    /// Unix seconds now.
    pub(crate) fn now(&self) -> i64 {
        (self.deps.clock)()
    }
}

/// What step 0 must find possible before the first write.
#[derive(Debug, Default)]
pub(crate) struct Needs {
    /// `(path, capability)` the admin token needs.
    pub(crate) caps: Vec<(String, &'static str)>,
    /// `(mount, role)` issued from: each must sign with its mount's default issuer.
    pub(crate) roles: Vec<(String, String)>,
    /// `(what for, program)` root will start: each must be root's alone.
    pub(crate) programs: Vec<(String, String)>,
}

impl Needs {
    /// `capability` on `path`.
    pub(crate) fn cap(&mut self, path: String, capability: &'static str) {
        if !self
            .caps
            .iter()
            .any(|(p, c)| *p == path && *c == capability)
        {
            self.caps.push((path, capability));
        }
    }

    /// Issuing from `mount/roles/role` with `key_mode`: the role written, the issue or
    /// sign endpoint, and the role checked for its issuer.
    pub(crate) fn issuer(&mut self, mount: &str, role: &str, key_mode: crate::config::KeyMode) {
        let endpoint = match key_mode {
            crate::config::KeyMode::Vault => "issue",
            _ => "sign",
        };
        self.cap(format!("{mount}/roles/{role}"), "update");
        self.cap(format!("{mount}/{endpoint}/{role}"), "update");
        self.roles.push((mount.to_owned(), role.to_owned()));
    }

    /// `program` (a `[commands]` name or path), for `what`.
    pub(crate) fn program(&mut self, cfg: &Config, what: String, program: &str) {
        let prog = cfg.program(program);
        if !self.programs.iter().any(|(_, p)| *p == prog) {
            self.programs.push((what, prog));
        }
    }
}

/// What verify's checks saw that later ones build on.
#[derive(Default)]
pub(crate) struct Seen {
    /// The listener as served to the admin identity.
    pub(crate) served: Option<Served>,
    /// The PKI mount's CA chain, when it verified.
    pub(crate) chain: Option<String>,
}

/// One app as verify reads it: its names and its home, opened without following
/// symlinks.
pub(crate) struct AppView<'a> {
    pub(crate) app: &'a AppConfig,
    pub(crate) names: Names,
    pub(crate) tree: pki_ops::Tree,
}

impl AppView<'_> {
    /// The file at `rel` in the app's home, as text.
    pub(crate) fn read(&self, rel: &std::path::Path) -> Result<String, String> {
        match self.tree.read(rel) {
            Ok(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Ok(None) => Err(format!("{} is missing", self.app.home.join(rel).display())),
            Err(x) => Err(format!("{x:#}")),
        }
    }
}

/// `step`, or [`Absent`] when the config does not set it up.
pub(crate) fn absent_unless<'a, S: DynStep + 'a>(
    step: Option<S>,
    id: StepId,
) -> Box<dyn DynStep + 'a> {
    match step {
        Some(s) => Box::new(s),
        None => Box::new(Absent { id }),
    }
}
