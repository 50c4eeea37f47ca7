//! An instance's state: EC2's six, with EC2's numeric codes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where an instance is in its life. The wire names are EC2's (`shutting-down`, ...);
/// [`InstanceState::code`] is EC2's `InstanceState.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Its VMM is being started and configured.
    Pending,
    /// Its guest runs.
    Running,
    /// Being terminated: its VMM is being killed, its volumes removed.
    ShuttingDown,
    /// Gone; still describable for a while.
    Terminated,
    /// Its guest is being shut down.
    Stopping,
    /// No VMM; its volumes are kept.
    Stopped,
}

/// A state name that is none of EC2's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown instance state {0:?}: expected pending, running, stopping, stopped, shutting-down or terminated")]
pub struct UnknownState(pub String);

impl InstanceState {
    /// Every state, in EC2's code order.
    pub const ALL: [InstanceState; 6] = [
        InstanceState::Pending,
        InstanceState::Running,
        InstanceState::ShuttingDown,
        InstanceState::Terminated,
        InstanceState::Stopping,
        InstanceState::Stopped,
    ];

    /// EC2's state code (the low byte of `InstanceState.Code`).
    pub fn code(self) -> u8 {
        match self {
            InstanceState::Pending => 0,
            InstanceState::Running => 16,
            InstanceState::ShuttingDown => 32,
            InstanceState::Terminated => 48,
            InstanceState::Stopping => 64,
            InstanceState::Stopped => 80,
        }
    }

    /// The wire name (`shutting-down`).
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        }
    }

    /// Whether a VMM process may exist in this state (so it holds the instance's memory
    /// and is watched, sampled and adopted).
    pub fn has_vmm(self) -> bool {
        matches!(
            self,
            InstanceState::Pending
                | InstanceState::Running
                | InstanceState::Stopping
                | InstanceState::ShuttingDown
        )
    }

    /// Whether the instance counts against the host's capacity: a shutting-down
    /// instance's memory is about to be freed, so a run may already use it.
    pub fn holds_capacity(self) -> bool {
        matches!(
            self,
            InstanceState::Pending | InstanceState::Running | InstanceState::Stopping
        )
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InstanceState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, UnknownState> {
        InstanceState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_are_ec2s() {
        let want = [
            ("pending", 0),
            ("running", 16),
            ("shutting-down", 32),
            ("terminated", 48),
            ("stopping", 64),
            ("stopped", 80),
        ];
        for (st, (name, code)) in InstanceState::ALL.into_iter().zip(want) {
            assert_eq!(st.as_str(), name);
            assert_eq!(st.code(), code);
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{name}\""));
            assert_eq!(name.parse::<InstanceState>().unwrap(), st);
            assert_eq!(
                serde_json::from_str::<InstanceState>(&format!("\"{name}\"")).unwrap(),
                st
            );
        }
        let e = "shutting_down".parse::<InstanceState>().unwrap_err();
        assert!(e.to_string().contains("\"shutting_down\""), "{e}");
    }
}
