//! Waiting for instances: the verbs answer at once (run: `pending`, stop: `stopping`,
//! terminate: `shutting-down`, reboot: `running` with the old VMM) and emberctl polls
//! until each instance has arrived, showing progress on stderr.

use agent_types::{Instance, InstanceState};

/// Where the instances are going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// `running` (after a run or a start).
    Running,
    /// `stopped`.
    Stopped,
    /// `terminated`.
    Terminated,
    /// `running` again with a new VMM: not the pid `old_pid`.
    Rebooted {
        /// The VMM's pid when the reboot was asked for.
        old_pid: Option<i64>,
    },
}

/// How far the instances are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every instance has arrived.
    Done,
    /// `arrived` of them have; the others are on their way.
    Waiting {
        /// How many have arrived.
        arrived: usize,
    },
    /// An instance went somewhere else (a launch failed, a VMM exited).
    Failed {
        /// The instance.
        id: String,
        /// Its state.
        state: InstanceState,
        /// Why, as emberd records it.
        reason: String,
    },
}

impl Goal {
    /// What the goal is called in messages (`running`).
    pub fn name(self) -> &'static str {
        match self {
            Goal::Running | Goal::Rebooted { .. } => "running",
            Goal::Stopped => "stopped",
            Goal::Terminated => "terminated",
        }
    }

    /// Whether `i` has arrived.
    fn arrived(self, i: &Instance) -> bool {
        match self {
            Goal::Running => i.state == InstanceState::Running,
            Goal::Stopped => i.state == InstanceState::Stopped,
            Goal::Terminated => i.state == InstanceState::Terminated,
            Goal::Rebooted { old_pid } => {
                i.state == InstanceState::Running && i.pid.is_some() && i.pid != old_pid
            }
        }
    }

    /// Whether `i` is still on its way (a state the verb passes through).
    fn on_the_way(self, i: &Instance) -> bool {
        use InstanceState as S;
        match self {
            Goal::Running | Goal::Rebooted { .. } => matches!(i.state, S::Pending | S::Running),
            // A stop of an instance still being launched may see it `running` first.
            Goal::Stopped => matches!(i.state, S::Stopping | S::Running | S::Pending),
            Goal::Terminated => i.state == S::ShuttingDown,
        }
    }

    /// How far `instances` are.
    pub fn assess<'a>(self, instances: impl IntoIterator<Item = &'a Instance>) -> Progress {
        let mut arrived = 0;
        let mut all = 0;
        for i in instances {
            all += 1;
            if self.arrived(i) {
                arrived += 1;
            } else if !self.on_the_way(i) {
                return Progress::Failed {
                    id: i.id.clone(),
                    state: i.state,
                    reason: i.reason.clone(),
                };
            }
        }
        if arrived == all {
            Progress::Done
        } else {
            Progress::Waiting { arrived }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn inst(id: &str, state: InstanceState, pid: Option<i64>) -> Instance {
        Instance {
            id: id.into(),
            image_id: "img-1".into(),
            instance_type: "e1.nano".into(),
            state,
            reason: "user request".into(),
            pid,
            pid_start: None,
            dir: "/d".into(),
            ip: "172.31.0.2".into(),
            tap: "em-1".into(),
            mac: "06:00:00:00:00:00".into(),
            client_token: None,
            user_data: None,
            tags: BTreeMap::new(),
            launched_at: 0,
            changed_at: 0,
            terminated_at: None,
        }
    }

    use InstanceState as S;

    #[test]
    fn a_run_waits_for_every_instance_and_fails_on_any_that_stops() {
        let a = inst("i-a", S::Running, Some(1));
        let b = inst("i-b", S::Pending, None);
        assert_eq!(
            Goal::Running.assess([&a, &b]),
            Progress::Waiting { arrived: 1 }
        );
        let b = inst("i-b", S::Running, Some(2));
        assert_eq!(Goal::Running.assess([&a, &b]), Progress::Done);
        let b = inst("i-b", S::Stopped, None);
        assert!(
            matches!(Goal::Running.assess([&a, &b]), Progress::Failed { id, .. } if id == "i-b")
        );
    }

    #[test]
    fn stop_and_terminate_wait_through_their_passing_states() {
        let stopping = inst("i-a", S::Stopping, Some(1));
        assert_eq!(
            Goal::Stopped.assess([&stopping]),
            Progress::Waiting { arrived: 0 }
        );
        assert_eq!(
            Goal::Stopped.assess([&inst("i-a", S::Stopped, None)]),
            Progress::Done
        );
        assert!(matches!(
            Goal::Stopped.assess([&inst("i-a", S::Terminated, None)]),
            Progress::Failed { .. }
        ));
        let going = inst("i-a", S::ShuttingDown, Some(1));
        assert_eq!(
            Goal::Terminated.assess([&going]),
            Progress::Waiting { arrived: 0 }
        );
        assert_eq!(
            Goal::Terminated.assess([&inst("i-a", S::Terminated, None)]),
            Progress::Done
        );
    }

    #[test]
    fn a_reboot_is_done_when_a_new_vmm_runs() {
        let g = Goal::Rebooted { old_pid: Some(10) };
        assert_eq!(
            g.assess([&inst("i-a", S::Running, Some(10))]),
            Progress::Waiting { arrived: 0 }
        );
        assert_eq!(
            g.assess([&inst("i-a", S::Pending, Some(11))]),
            Progress::Waiting { arrived: 0 }
        );
        assert_eq!(
            g.assess([&inst("i-a", S::Running, Some(11))]),
            Progress::Done
        );
        assert!(matches!(
            g.assess([&inst("i-a", S::Stopped, None)]),
            Progress::Failed { .. }
        ));
    }
}
