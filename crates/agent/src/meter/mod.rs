//! Metering: usage per instance, exact enough to bill from.
//!
//! Every instance has an open interval (its *meter*: the state it is in and since when).
//! A *sample* closes that interval: the time goes to the state it was in, and the VMM's
//! counters (vCPU time, block and network) are the sum of the metrics lines ember appended
//! to the instance's metrics file since the last sample. Samples are taken every few
//! seconds and at every state change. Each sample, split at hour boundaries, is stored raw
//! and added to its hour's rollup in the same transaction that moves the meter forward and
//! records how far the metrics file has been read: a crash or restart can neither count a
//! line twice nor lose one.
//!
//! Bounds: the counters are exact over a whole life (ember writes a last line at exit, and
//! the agent asks for one before it kills a VMM) except after a `kill -9` of the VMM from
//! outside, which loses what happened since its last line (at most one sample interval).
//! Within a window, a sample that straddles an edge is shared out in proportion to time:
//! the error at each edge is at most one sample interval's worth. Windows on whole hours
//! are read from the rollups and are exact.
//!
//! - [`read`]: metrics files to counters.
//! - [`store`]: meters, samples and hourly rollups.
//! - [`query`]: usage over a window, and totals.

pub mod query;
pub mod read;
pub mod store;

pub use query::{query, totals, InstanceUsage};
pub use read::{read_metrics, MetricsRead};
pub use store::{current, init, metered, open, prune, sample, SampleAt};

use agent_types::InstanceState;

/// Milliseconds in an hour: the rollup period.
pub const HOUR_MS: i64 = 3_600_000;

/// The states time is counted in (terminated accrues nothing), in their columns' order.
pub const STATES: [InstanceState; 5] = [
    InstanceState::Pending,
    InstanceState::Running,
    InstanceState::Stopping,
    InstanceState::Stopped,
    InstanceState::ShuttingDown,
];

/// Declares [`Usage`]: one `i64` field per stored quantity, named as its database column,
/// and the conversions to and from the column list the SQL is written from (so a new
/// quantity is one line here).
macro_rules! usage {
    ($($(#[$doc:meta])* $field:ident),* $(,)?) => {
        /// A set of usage quantities, each as stored (milliseconds, MiB x ms, KiB x ms,
        /// microseconds, bytes, operations, frames).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Usage {
            $($(#[$doc])* pub $field: i64,)*
        }

        impl Usage {
            /// The database columns, in [`Usage::values`] order.
            pub const COLUMNS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// The quantities in [`Usage::COLUMNS`] order.
            pub fn values(&self) -> Vec<i64> {
                vec![$(self.$field),*]
            }

            /// Reads the quantities from a row whose columns from `first` on are
            /// [`Usage::COLUMNS`].
            pub fn from_row(r: &rusqlite::Row, first: usize) -> rusqlite::Result<Usage> {
                let mut i = first;
                let mut next = || {
                    i += 1;
                    r.get::<_, i64>(i - 1)
                };
                Ok(Usage { $($field: next()?,)* })
            }

            /// Every quantity of `self` and `other` through `f`.
            fn zip(&self, other: &Usage, f: impl Fn(i64, i64) -> i64) -> Usage {
                Usage { $($field: f(self.$field, other.$field),)* }
            }
        }
    };
}

usage!(
    /// Milliseconds in `pending`.
    pending_ms,
    /// Milliseconds in `running`.
    running_ms,
    /// Milliseconds in `stopping`.
    stopping_ms,
    /// Milliseconds in `stopped`.
    stopped_ms,
    /// Milliseconds in `shutting-down`.
    shutting_down_ms,
    /// The type's memory (MiB) x milliseconds, while a VMM holds it.
    mem_mib_ms,
    /// The VMM's resident memory (KiB) x milliseconds.
    rss_kib_ms,
    /// CPU time of the vCPU threads, microseconds.
    vcpu_us,
    /// Bytes the drives read.
    block_read_bytes,
    /// Bytes the drives wrote.
    block_write_bytes,
    /// Read requests.
    block_read_ops,
    /// Write requests.
    block_write_ops,
    /// Bytes the guest received.
    net_rx_bytes,
    /// Bytes the guest sent.
    net_tx_bytes,
    /// Frames the guest received.
    net_rx_packets,
    /// Frames the guest sent.
    net_tx_packets,
);

impl Usage {
    /// Milliseconds spent in `state` (terminated: none).
    pub fn state_ms(&self, state: InstanceState) -> i64 {
        match state {
            InstanceState::Pending => self.pending_ms,
            InstanceState::Running => self.running_ms,
            InstanceState::Stopping => self.stopping_ms,
            InstanceState::Stopped => self.stopped_ms,
            InstanceState::ShuttingDown => self.shutting_down_ms,
            InstanceState::Terminated => 0,
        }
    }

    /// The time field of `state` (terminated accrues nothing: `None`).
    fn state_ms_mut(&mut self, state: InstanceState) -> Option<&mut i64> {
        match state {
            InstanceState::Pending => Some(&mut self.pending_ms),
            InstanceState::Running => Some(&mut self.running_ms),
            InstanceState::Stopping => Some(&mut self.stopping_ms),
            InstanceState::Stopped => Some(&mut self.stopped_ms),
            InstanceState::ShuttingDown => Some(&mut self.shutting_down_ms),
            InstanceState::Terminated => None,
        }
    }

    /// Whether every quantity is zero.
    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }

    /// Adds `other`.
    pub fn add(&mut self, other: &Usage) {
        *self = self.zip(other, |a, b| a + b);
    }

    /// `self` x `num / den`, rounded down (`den` > 0).
    pub fn share(&self, num: i64, den: i64) -> Usage {
        // i128: a quantity x a duration in ms overflows i64 long before either does.
        let part = |v: i64| (i128::from(v) * i128::from(num) / i128::from(den)) as i64;
        self.zip(&Usage::default(), |v, _| part(v))
    }

    /// `self` - `other`.
    fn minus(&self, other: &Usage) -> Usage {
        self.zip(other, |a, b| a - b)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
