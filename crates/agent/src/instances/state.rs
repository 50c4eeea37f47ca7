//! State transitions and usage sampling: a transition first closes the instance's usage
//! interval, in the same transaction, so the time before it goes to the old state.

use super::{Agent, AgentError, RAW_SAMPLES_KEPT_MS, TERMINATED_KEPT_S};
use crate::db;
use crate::host;
use crate::meter::{self, SampleAt};
use agent_types::InstanceState;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Agent {
    /// Moves instance `id` to `state`, sampling its usage up to now first, in one
    /// transaction: the time before goes to the old state, the VMM's new counters with it.
    pub(super) fn transition(
        &self,
        id: &str,
        state: InstanceState,
        reason: &str,
        pid: Option<(i64, i64)>,
    ) -> Result<(), AgentError> {
        self.transition_with(id, state, reason, pid, false)
    }

    /// [`Agent::transition`]; `exit_unseen`: the VMM ended while the agent was down (its
    /// time ends at its last metrics line).
    pub(super) fn transition_with(
        &self,
        id: &str,
        state: InstanceState,
        reason: &str,
        pid: Option<(i64, i64)>,
        exit_unseen: bool,
    ) -> Result<(), AgentError> {
        let rss_kib = self.vmm_pid(id).and_then(host::rss_kib);
        let mut c = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = c.transaction()?;
        let at = SampleAt {
            now_ms: meter::now_ms(),
            new_state: Some(state),
            rss_kib,
            exit_unseen,
        };
        meter::sample(&tx, id, at)?;
        db::set_state(&tx, id, state, reason, pid)?;
        tx.commit()?;
        self.stats.samples.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Samples instance `id`'s usage up to now, its state unchanged.
    pub(super) fn sample(&self, id: &str) {
        let rss_kib = self.vmm_pid(id).and_then(host::rss_kib);
        let result = self.db(|c| {
            let tx = c.unchecked_transaction()?;
            let at = SampleAt {
                now_ms: meter::now_ms(),
                rss_kib,
                ..Default::default()
            };
            meter::sample(&tx, id, at)?;
            tx.commit()
        });
        let counter = match result {
            Ok(()) => &self.stats.samples,
            Err(e) => {
                log::error!("{id}: usage sample failed: {e}");
                &self.stats.sample_failures
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The pid of instance `id`'s VMM, if it runs.
    pub(super) fn vmm_pid(&self, id: &str) -> Option<i64> {
        self.procs().get(id).map(|p| p.pid)
    }

    /// Asks every running VMM for a metrics line, then samples every metered instance.
    pub async fn sample_all(self: &Arc<Self>) {
        let live: Vec<String> = self.procs().keys().cloned().collect();
        let flushes: Vec<_> = live
            .into_iter()
            .map(|id| {
                let agent = self.clone();
                tokio::spawn(async move { agent.flush_metrics(&id).await })
            })
            .collect();
        for f in flushes {
            let _ = f.await;
        }
        let ids = match self.db(meter::metered) {
            Ok(ids) => ids,
            Err(e) => {
                log::error!("usage sampling: {e}");
                return;
            }
        };
        for id in ids {
            self.sample(&id);
        }
        // Old terminated instances and raw samples go even if nobody describes anything.
        self.purge();
    }

    /// Forgets terminated instances older than an hour, and raw samples past their time.
    pub fn purge(&self) {
        let _ = self.db(|c| db::purge_terminated(c, db::now() - TERMINATED_KEPT_S));
        let _ = self.db(|c| meter::prune(c, meter::now_ms() - RAW_SAMPLES_KEPT_MS));
    }
}
