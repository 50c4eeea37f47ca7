//! Supervision: each VMM the agent runs is watched (its exit is recorded at once, with
//! what was asked of it), and shut down on request (Ctrl-Alt-Del, wait, kill).

use super::Agent;
use crate::db;
use crate::host;
use agent_types::InstanceState;
use model::ActionType;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What the agent was asked to do with an instance whose VMM exits. Ordered: a later
/// request never weakens an earlier one (the order of the variants is their strength) (a terminate asked during a stop stays a
/// terminate, a reboot asked during a stop does not relaunch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Intent {
    /// Nothing: an exit is the guest's own doing (or a crash).
    Run,
    /// Reboot: the exit starts a new VMM on the same volumes.
    Reboot,
    /// Hibernate: the guest was saved; the exit makes it `stopped` (`hibernated`).
    Hibernate,
    /// Stop: the exit makes it `stopped` (`user request`).
    Stop,
    /// Terminate: the exit makes it `terminated`, its directory removed.
    Terminate,
}

/// A VMM the agent watches.
pub struct Proc {
    /// Its pid.
    pub pid: i64,
    /// What its exit will mean.
    pub intent: Intent,
    /// Becomes `true` once the process has exited and its exit is recorded.
    pub exited: watch::Receiver<bool>,
}

/// How long a killed VMM may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

impl Agent {
    /// Kills instance `id`'s VMM, if it runs (its watcher records the exit).
    pub(super) fn kill(&self, id: &str) {
        if let Some(p) = self.procs().get(id) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our VMM's.
            unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
        }
        // And anything it started, in its cgroup.
        if let Ok(inst) = self.instance(id) {
            self.jail_of(&inst).kill_all();
        }
    }

    /// Records that an instance's VMM has exited, per what was asked of it, and frees its
    /// tap (and, for terminate, its volumes and directory).
    pub(super) fn record_exit(self: &Arc<Self>, id: &str, why: &str) {
        log::info!("{id}: VMM gone ({why})");
        self.stats.vmm_exits.fetch_add(1, Ordering::Relaxed);
        let intent = self
            .procs()
            .remove(id)
            .map(|p| p.intent)
            .unwrap_or(Intent::Run);
        self.record_end(id, intent, why);
    }

    /// Records the end of instance `id`'s VMM (or that it had none) as `intent` says.
    fn record_end(self: &Arc<Self>, id: &str, intent: Intent, why: &str) {
        let Ok(Some(inst)) = self.db(|c| db::instance(c, id)) else {
            return;
        };
        let _ = host::delete_link(&inst.tap);
        let _ = std::fs::remove_file(self.api_socket(id));
        if intent != Intent::Reboot {
            // (A reboot's launch clears the old jail itself, before making the new one.)
            self.clear_jail(&inst);
        }
        let result = match intent {
            Intent::Terminate => {
                // The sample reads the VMM's last metrics line before the directory goes.
                let r = self.transition(id, InstanceState::Terminated, "user request", None);
                let _ = std::fs::remove_dir_all(&inst.dir);
                r
            }
            Intent::Stop => self.transition(id, InstanceState::Stopped, "user request", None),
            Intent::Hibernate => self.transition(id, InstanceState::Stopped, "hibernated", None),
            Intent::Reboot => {
                self.sample(id);
                self.spawn_launch(id, "reboot failed");
                Ok(())
            }
            Intent::Run => self.transition(id, InstanceState::Stopped, why, None),
        };
        if let Err(e) = result {
            log::error!("{id}: cannot record its exit: {e}");
        }
    }

    /// Sets what an exit of `id`'s VMM will mean (never weaker than what was asked before:
    /// see [`Intent`]); returns its exit watch if it runs.
    pub(super) fn intend(&self, id: &str, intent: Intent) -> Option<(i64, watch::Receiver<bool>)> {
        let mut procs = self.procs();
        let p = procs.get_mut(id)?;
        p.intent = p.intent.max(intent);
        Some((p.pid, p.exited.clone()))
    }

    async fn wait_exit(rx: &mut watch::Receiver<bool>, within: Duration) -> bool {
        tokio::time::timeout(within, rx.wait_for(|done| *done))
            .await
            .is_ok()
    }

    /// Ends instance `id`'s VMM for `intent`: Ctrl-Alt-Del and up to `--stop-timeout` for
    /// the guest, then a kill (`force`: the kill at once). Returns once the exit is
    /// recorded (or the VMM could not be reaped).
    pub(super) async fn shut_down(self: &Arc<Self>, id: &str, intent: Intent, force: bool) {
        if intent == Intent::Hibernate {
            match self.save_for_hibernation(id).await {
                Ok(()) => {
                    // Saved: the VMM is only killed, the guest never learns of it.
                    if let Some((pid, mut rx)) = self.intend(id, intent) {
                        self.kill_and_reap(id, pid, &mut rx).await;
                    }
                    return;
                }
                Err(e) => {
                    log::warn!("{id}: hibernation failed ({e}); stopping instead");
                    self.discard_hibernation(id);
                    return Box::pin(self.shut_down(id, Intent::Stop, force)).await;
                }
            }
        }
        let Some((pid, mut rx)) = self.intend(id, intent) else {
            // No VMM: it died, a launch never got one, or an earlier request already ended
            // it. Record the end only if the instance still waits for one; a reboot has
            // nothing to do (its relaunch, if any, is under way: a second would start two
            // VMMs on one tap and one set of volumes).
            let waiting = match intent {
                Intent::Stop | Intent::Hibernate => Some(InstanceState::Stopping),
                Intent::Terminate => Some(InstanceState::ShuttingDown),
                Intent::Reboot | Intent::Run => None,
            };
            let state = self
                .db(|c| db::instance(c, id))
                .ok()
                .flatten()
                .map(|i| i.state);
            if waiting.is_some() && state == waiting {
                log::info!("{id}: no VMM to end");
                self.record_end(id, intent, "no VMM");
            } else {
                log::info!("{id}: no VMM to end, and nothing waits for it ({intent:?})");
            }
            return;
        };
        if !force {
            let _ = self
                .vmm_action(id, ActionType::SendCtrlAltDel, Duration::from_secs(2))
                .await;
            if Self::wait_exit(&mut rx, self.settings.stop_timeout).await {
                return;
            }
            log::warn!("{id}: the guest did not shut down in time; killing its VMM");
        }
        // Its counters up to now, before it goes without a last line.
        self.flush_metrics(id).await;
        self.kill_and_reap(id, pid, &mut rx).await;
    }

    /// Kills instance `id`'s VMM `pid` (and its cgroup: [`Agent::kill`]) and waits until
    /// its exit is recorded (`rx`).
    async fn kill_and_reap(&self, id: &str, pid: i64, rx: &mut watch::Receiver<bool>) {
        self.kill(id);
        if !Self::wait_exit(rx, REAP_TIMEOUT).await {
            log::error!("{id}: its VMM (pid {pid}) was not reaped within {REAP_TIMEOUT:?}");
        }
    }

    /// [`Agent::shut_down`] in the background: the verb has answered already.
    pub(super) fn spawn_shut_down(self: &Arc<Self>, id: &str, intent: Intent, force: bool) {
        // The intent is recorded before the verb answers, so requests that follow it see
        // it whatever order the tasks run in.
        let _ = self.intend(id, intent);
        let agent = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { agent.shut_down(&id, intent, force).await });
    }
}

#[cfg(test)]
mod tests {
    use super::Intent;

    #[test]
    fn a_later_request_never_weakens_an_earlier_one() {
        // What `intend` keeps when two verbs race: the stronger.
        assert_eq!(Intent::Stop.max(Intent::Reboot), Intent::Stop);
        assert_eq!(Intent::Stop.max(Intent::Terminate), Intent::Terminate);
        assert_eq!(Intent::Terminate.max(Intent::Stop), Intent::Terminate);
        assert_eq!(Intent::Run.max(Intent::Reboot), Intent::Reboot);
    }
}
