//! The steps of the order (MISSION.md): their ids, numbers and names, in one place at the
//! bottom of the house. The journal records them, the command line takes them
//! (`--step`, a clap value enum under the `cli` feature), reports name them.

use serde::{Deserialize, Serialize};

/// The steps of the order, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum StepId {
    /// Step 0: checks before the first write (always run; not a `--step`).
    #[cfg_attr(feature = "cli", value(skip))]
    Preflight,
    /// Step 1: the admin's client certificate (needs `[admin]`).
    Admin,
    /// Step 2: the Vault listener's certificate (needs `[listener]`).
    Listener,
    /// Step 3: agent login mTLS certs + cert auth mappings.
    Agents,
    /// Step 4: app leaf certs via the agent, post-hook reloads, agent restart.
    Leaf,
    /// Step 5: the proxy's CA chain (needs `[proxy] home` and `ca_bundle`).
    Proxy,
    /// Step 6: restarts (needs `[restarts]`).
    Restarts,
    /// Step 7: the final healthcheck (reads only).
    Health,
}

impl StepId {
    /// Every step, in the order they run.
    pub const ORDER: [StepId; 8] = [
        StepId::Preflight,
        StepId::Admin,
        StepId::Listener,
        StepId::Agents,
        StepId::Leaf,
        StepId::Proxy,
        StepId::Restarts,
        StepId::Health,
    ];

    /// The step's number in the order.
    pub fn number(self) -> u8 {
        // The order is the declaration order.
        self as u8
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            StepId::Preflight => "preflight",
            StepId::Admin => "admin",
            StepId::Listener => "listener",
            StepId::Agents => "agents",
            StepId::Leaf => "leaf",
            StepId::Proxy => "proxy",
            StepId::Restarts => "restarts",
            StepId::Health => "health",
        }
    }

    /// Whether it rotates material (what the restarts of step 6 are for).
    pub fn rotates(self) -> bool {
        matches!(
            self,
            StepId::Admin | StepId::Listener | StepId::Agents | StepId::Leaf | StepId::Proxy
        )
    }
}

impl std::fmt::Display for StepId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {} ({})", self.number(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_numbers_and_names_agree() {
        for (i, id) in StepId::ORDER.iter().enumerate() {
            assert_eq!(usize::from(id.number()), i);
            assert_eq!(
                serde_json::to_value(id).unwrap(),
                serde_json::json!(id.name())
            );
        }
    }
}
