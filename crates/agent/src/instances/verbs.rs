//! The lifecycle verbs. Like EC2's, they answer at once with the state the instance has
//! entered (stop: `stopping`, terminate: `shutting-down`, reboot: `running` as it is,
//! start: `pending`); the slow part (the guest's shutdown, a kill, a new VMM, removing
//! volumes) goes on in a background task, and describing the instance shows how far it
//! has got. Asking again while it is under way returns the instance unchanged.

use super::supervise::Intent;
use super::{Agent, AgentError};
use crate::db::Instance;
use crate::host;
use agent_types::InstanceState;
use std::path::Path;
use std::sync::Arc;

impl Agent {
    fn incorrect(inst: &Instance, allowed: &'static str, done: &'static str) -> AgentError {
        AgentError::IncorrectState {
            id: inst.id.clone(),
            state: inst.state,
            allowed,
            done,
        }
    }

    /// Stops an instance: `stopping` at once; then Ctrl-Alt-Del, up to `--stop-timeout`
    /// for the guest, and a kill (`force`: the kill at once, also for an instance already
    /// stopping).
    pub async fn stop(self: &Arc<Self>, id: &str, force: bool) -> Result<Instance, AgentError> {
        let inst = self.instance(id)?;
        match inst.state {
            InstanceState::Running | InstanceState::Pending => {}
            InstanceState::Stopping => {
                if force {
                    // A guest that is slow to shut down need not be waited for.
                    self.spawn_shut_down(id, Intent::Stop, true);
                }
                return Ok(inst);
            }
            InstanceState::Stopped => return Ok(inst),
            _ => return Err(Self::incorrect(&inst, "running", "stopped")),
        }
        self.transition(
            id,
            InstanceState::Stopping,
            "user request",
            inst.pid.zip(inst.pid_start),
        )?;
        // Read before the background work starts, which may finish first.
        let answer = self.instance(id)?;
        self.spawn_shut_down(id, Intent::Stop, force);
        Ok(answer)
    }

    /// Starts a stopped instance on its root volume: `pending` at once, `running` when its
    /// new VMM has started the guest.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<Instance, AgentError> {
        let inst = self.instance(id)?;
        if inst.state != InstanceState::Stopped {
            return Err(Self::incorrect(&inst, "stopped", "started"));
        }
        self.transition(id, InstanceState::Pending, "user request", None)?;
        let answer = self.instance(id)?;
        self.spawn_launch(id, "launch failed");
        Ok(answer)
    }

    /// Reboots a running instance: answered at once (still `running`); Ctrl-Alt-Del, and
    /// when its VMM has exited a new one starts on the same volumes (a new pid).
    pub async fn reboot(self: &Arc<Self>, id: &str) -> Result<Instance, AgentError> {
        let inst = self.instance(id)?;
        if inst.state != InstanceState::Running {
            return Err(Self::incorrect(&inst, "running", "rebooted"));
        }
        self.spawn_shut_down(id, Intent::Reboot, false);
        Ok(inst)
    }

    /// Terminates an instance: `shutting-down` at once; then its VMM is killed and its
    /// tap, volumes and directory removed: `terminated`.
    pub async fn terminate(self: &Arc<Self>, id: &str) -> Result<Instance, AgentError> {
        let inst = self.instance(id)?;
        if matches!(
            inst.state,
            InstanceState::Terminated | InstanceState::ShuttingDown
        ) {
            return Ok(inst);
        }
        self.transition(
            id,
            InstanceState::ShuttingDown,
            "user request",
            inst.pid.zip(inst.pid_start),
        )?;
        // The answer is the state just written: the background work may finish before a
        // read after it (EC2 answers `shutting-down` too).
        let answer = self.instance(id)?;
        if self.intend(id, Intent::Terminate).is_some() {
            self.spawn_shut_down(id, Intent::Terminate, true);
        } else {
            // No VMM: only files to remove, which can be slow for large volumes.
            let agent = self.clone();
            let inst = inst.clone();
            tokio::task::spawn_blocking(move || agent.finish_terminate(&inst));
        }
        Ok(answer)
    }

    /// The end of a terminate without a VMM: tap gone, `terminated`, directory removed.
    fn finish_terminate(&self, inst: &Instance) {
        let _ = host::delete_link(&inst.tap);
        if let Err(e) = self.transition(&inst.id, InstanceState::Terminated, "user request", None) {
            log::error!("{}: cannot record its termination: {e}", inst.id);
        }
        let _ = std::fs::remove_dir_all(&inst.dir);
    }

    /// The last `bytes` of an instance's console.
    pub fn console(&self, id: &str, bytes: u64) -> Result<String, AgentError> {
        let (data, _) = self.console_bytes(id, bytes)?;
        Ok(String::from_utf8_lossy(&data).to_string())
    }

    /// The last `bytes` of an instance's console as the guest wrote them, and when it last
    /// wrote (none before its first output).
    pub fn console_bytes(
        &self,
        id: &str,
        bytes: u64,
    ) -> Result<(Vec<u8>, Option<std::time::SystemTime>), AgentError> {
        let inst = self.instance(id)?;
        let path = Path::new(&inst.dir).join("console.log");
        let mut data = std::fs::read(&path).unwrap_or_default();
        let from = data
            .len()
            .saturating_sub(usize::try_from(bytes).unwrap_or(usize::MAX));
        data.drain(..from);
        let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        Ok((data, written))
    }
}

#[cfg(test)]
mod tests;
