//! The steps of the order, one file each, and [`ORDER`]: the one list the run, resume,
//! plan, preflight and verify iterate. Step 0 (preflight) runs before the list.
//!
//! Adding a step: a file under `steps/` with the step ([`crate::engine::Step`]) and a unit
//! struct implementing [`def::StepDef`], one line in [`ORDER`], a [`StepId`] variant and
//! its config section.

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
use crate::engine::context::Deps;
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
