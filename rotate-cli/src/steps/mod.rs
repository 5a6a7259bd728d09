//! The steps of the order, the [`Step`] trait they implement, and what they reach the
//! world through ([`Deps`]; Vault as [`Vault`], narrow traits, so a step runs against
//! mocks): [`AdminStep`] (1, the admin's client certificate, proven by a brand-new client
//! before it replaces the identity), [`ListenerStep`] (2, the listener certificate,
//! proven by the served serial on new handshakes), [`AgentsStep`] (3, agent login
//! certificates and cert auth mappings), [`LeafStep`] (4, leaves through the agents,
//! post-hooks, restarts), [`ProxyStep`] (5, the proxy's CA bundle and client identity),
//! [`RestartsStep`] (6, the proxy stack, then Vault when its listener has not loaded its
//! client CAs), [`HealthStep`] (7). Step 0, [`preflight`], runs before them.
//!
//! Inside the crate, `ORDER` is the one list the run, resume, plan, preflight and verify
//! iterate. Adding a step: a file under `steps/` with the step and a unit struct
//! implementing `def::StepDef`, one line in `ORDER`, a [`crate::StepId`] variant and its
//! config section.

pub use crate::deps::{AdminApi, FreshClients, GateConnector, TlsIdentity, Vault};
pub use crate::engine::context::Deps;
pub use crate::engine::{Fact, Singleton, Step, Target, TargetPlan, Tx};
pub use crate::error::StepError;
pub use admin::{AdminApplied, AdminPlan, AdminProof, AdminStep};
pub use agents::{AgentApplied, AgentProof, AgentsStep};
pub use health::{HealthApplied, HealthStep};
pub use leaf::{LeafApplied, LeafExpectation, LeafProof, LeafStep, verify_leaf};
pub use listener::{ListenerApplied, ListenerPlan, ListenerProof, ListenerStep};
pub use preflight::preflight;
pub use proxy::{ProxyApplied, ProxyPlan, ProxyProof, ProxyStep};
pub use restarts::{RestartsApplied, RestartsPlan, RestartsProof, RestartsStep};

pub(crate) mod admin;
pub(crate) mod agents;
pub(crate) mod common;
pub(crate) mod def;
pub(crate) mod health;
pub(crate) mod leaf;
pub(crate) mod listener;
#[cfg(test)]
mod plan_tests;
pub(crate) mod preflight;
pub(crate) mod proxy;
pub(crate) mod restarts;

use crate::config::Config;
use crate::engine::DynStep;
use crate::state::journal::RunRequest;
use def::StepDef;

/// Steps 1–7, in order.
pub(crate) static ORDER: [&dyn StepDef; 7] = [
    &admin::Def,
    &listener::Def,
    &agents::Def,
    &leaf::Def,
    &proxy::Def,
    &restarts::Def,
    &health::Def,
];

/// The steps of a run, in order, built with the CA chain step 0 verified.
pub(crate) fn build<'a>(
    cfg: &'a Config,
    deps: Deps<'a>,
    chain: &str,
    request: &RunRequest,
) -> Vec<Box<dyn DynStep + 'a>> {
    ORDER
        .iter()
        .map(|d| d.build(cfg, deps, chain, request))
        .collect()
}

/// The entries of the steps `request` runs, in order.
pub(crate) fn requested(request: &RunRequest) -> impl Iterator<Item = &'static dyn StepDef> + '_ {
    ORDER
        .iter()
        .copied()
        .filter(|d| request.steps.contains(&d.id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::journal::StepId;

    /// The list holds every step but step 0, once, in the order of [`StepId::ORDER`].
    #[test]
    fn the_list_is_the_order() {
        let ids: Vec<StepId> = ORDER.iter().map(|d| d.id()).collect();
        assert_eq!(ids, StepId::ORDER[1..]);
    }
}
