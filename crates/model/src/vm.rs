//! The VM as a whole: actions, its run state, what `GET /` and `GET /version` answer, and
//! the body of every error.

use crate::parse::printable;
use serde::{Deserialize, Serialize};

/// `PUT /actions`'s `action_type`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum ActionType {
    /// Build the VM from the configuration and run it.
    InstanceStart,
    /// Press Ctrl-Alt-Del on the guest's keyboard (x86_64: the i8042).
    SendCtrlAltDel,
    /// Write a metrics line now.
    FlushMetrics,
}

impl TryFrom<String> for ActionType {
    type Error = String;

    /// The error names the field and the choices (serde's own message names neither).
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "InstanceStart" => Ok(ActionType::InstanceStart),
            "SendCtrlAltDel" => Ok(ActionType::SendCtrlAltDel),
            "FlushMetrics" => Ok(ActionType::FlushMetrics),
            other => Err(format!(
                "unknown action_type {:?}: expected InstanceStart, SendCtrlAltDel or FlushMetrics",
                printable(other)
            )),
        }
    }
}

/// `PUT /actions`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// What to do.
    pub action_type: ActionType,
}

impl InstanceActionInfo {
    /// The body for `action`.
    pub fn new(action_type: ActionType) -> Self {
        InstanceActionInfo { action_type }
    }
}

/// `PATCH /vm`'s `state`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum VmState {
    /// Stop the vCPUs and devices.
    Paused,
    /// Let them run again.
    Resumed,
}

impl TryFrom<String> for VmState {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "Paused" => Ok(VmState::Paused),
            "Resumed" => Ok(VmState::Resumed),
            other => Err(format!(
                "unknown vm state {:?}: expected Paused or Resumed",
                printable(other)
            )),
        }
    }
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The state asked for.
    pub state: VmState,
}

/// The microVM's state as `GET /` reports it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum InstanceState {
    /// Before `InstanceStart`.
    #[serde(rename = "Not started")]
    NotStarted,
    /// The guest runs.
    Running,
    /// Paused through `PATCH /vm`.
    Paused,
}

/// `GET /`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The microVM's id (`--id`).
    pub id: String,
    /// Where it is in its life.
    pub state: InstanceState,
    /// ember's version.
    pub vmm_version: String,
    /// `Ember`.
    pub app_name: String,
}

/// `GET /version`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Version {
    /// ember's version (Firecracker's field name, so its clients read it).
    pub firecracker_version: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Fault {
    /// What is wrong, for people: one line.
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::from_json;

    #[test]
    fn wire_names_are_firecrackers() {
        let a: InstanceActionInfo = from_json(br#"{"action_type": "FlushMetrics"}"#).unwrap();
        assert_eq!(a.action_type, ActionType::FlushMetrics);
        let e = from_json::<InstanceActionInfo>(br#"{"action_type": "Reboot"}"#).unwrap_err();
        assert!(
            e.to_string().contains("unknown action_type \"Reboot\""),
            "{e}"
        );
        let v: Vm = from_json(br#"{"state": "Paused"}"#).unwrap();
        assert_eq!(v.state, VmState::Paused);
        assert_eq!(
            serde_json::to_string(&InstanceState::NotStarted).unwrap(),
            "\"Not started\""
        );
    }
}
