//! Adoption after an agent restart: a VMM that still runs as recorded (same pid, same
//! start time, its socket answering) is watched again; the others are recorded as ended.

use super::supervise::{Intent, Proc};
use super::{Agent, AgentError};
use crate::db::{self, Instance};
use crate::host;
use agent_types::InstanceState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often an adopted VMM (not the agent's child any more) is checked for its exit.
const POLL: Duration = Duration::from_millis(250);

impl Agent {
    /// After a restart: adopts every VMM still running as recorded; marks the others
    /// stopped (or terminated, if they were shutting down) with the reason.
    pub async fn adopt(self: &Arc<Self>) -> Result<(), AgentError> {
        let all = self.db(db::instances)?;
        for inst in all.into_iter().filter(|i| i.state.has_vmm()) {
            let alive = match (inst.pid, inst.pid_start) {
                (Some(pid), Some(start)) => host::pid_start_time(pid) == Some(start),
                _ => false,
            };
            let answers = alive && self.vmm(&inst.id, Duration::from_secs(2)).answers().await;
            match (inst.pid, answers) {
                (Some(pid), true) => self.adopt_one(&inst, pid)?,
                _ => self.record_gone(&inst)?,
            }
        }
        Ok(())
    }

    /// An instance whose VMM did not survive: tap and socket removed, its end recorded.
    fn record_gone(&self, inst: &Instance) -> Result<(), AgentError> {
        log::info!("{}: its VMM is gone; marking it stopped", inst.id);
        let _ = host::delete_link(&inst.tap);
        let _ = std::fs::remove_file(self.api_socket(&inst.id));
        self.clear_jail(inst);
        let (state, reason) = if inst.state == InstanceState::ShuttingDown {
            (InstanceState::Terminated, "user request")
        } else {
            (
                InstanceState::Stopped,
                "VMM exited while the agent was down",
            )
        };
        self.transition_with(&inst.id, state, reason, None, true)?;
        if state == InstanceState::Terminated {
            let _ = std::fs::remove_dir_all(&inst.dir);
        }
        Ok(())
    }

    /// Watches a surviving VMM again, and finishes what was asked of it before.
    fn adopt_one(self: &Arc<Self>, inst: &Instance, pid: i64) -> Result<(), AgentError> {
        log::info!("{}: adopted its VMM (pid {pid})", inst.id);
        let (tx, rx) = watch::channel(false);
        let intent = match inst.state {
            InstanceState::Stopping => Intent::Stop,
            InstanceState::ShuttingDown => Intent::Terminate,
            _ => Intent::Run,
        };
        self.procs().insert(
            inst.id.clone(),
            Proc {
                pid,
                intent,
                exited: rx,
            },
        );
        if inst.state == InstanceState::Pending {
            self.transition(
                &inst.id,
                InstanceState::Running,
                "user request",
                inst.pid.zip(inst.pid_start),
            )?;
        }
        // What the previous agent was doing when it went, it finishes now: its own
        // background task ended with it.
        match intent {
            Intent::Stop | Intent::Hibernate => self.spawn_shut_down(&inst.id, intent, false),
            Intent::Terminate => self.spawn_shut_down(&inst.id, Intent::Terminate, true),
            Intent::Run | Intent::Reboot => {}
        }
        // Not our child any more: watch it by polling (an exit is seen within POLL).
        let agent = self.clone();
        let id = inst.id.clone();
        let start = inst.pid_start;
        tokio::spawn(async move {
            while host::pid_start_time(pid) == start {
                tokio::time::sleep(POLL).await;
            }
            agent.record_exit(
                &id,
                "VMM exited (status unknown: adopted after an agent restart)",
            );
            let _ = tx.send(true);
        });
        Ok(())
    }
}
