//! `GET /metrics`: usage counters per instance (labelled with its id and type) and the
//! agent's own counters, in Prometheus's text exposition format (version 0.0.4).

use crate::db;
use crate::instances::{Agent, AgentError};
use crate::meter;
use crate::types;
use agent_types::InstanceState;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut l = String::new();
        for (k, v) in labels {
            if !l.is_empty() {
                l.push(',');
            }
            let _ = write!(l, "{k}=\"{}\"", escape(v));
        }
        if l.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{l}}} {value}");
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Reads one quantity of a [`meter::Usage`].
type Quantity = fn(&meter::Usage) -> i64;

/// Per-instance counters: (metric suffix, help, usage quantity, scale to the unit).
const INSTANCE_COUNTERS: [(&str, &str, Quantity, f64); 11] = [
    (
        "vcpu_seconds_total",
        "CPU time of the instance's vCPU threads (the guest's vCPU time).",
        |u| u.vcpu_us,
        1e-6,
    ),
    (
        "memory_mib_seconds_total",
        "Configured memory in MiB times seconds while a VMM held it.",
        |u| u.mem_mib_ms,
        1e-3,
    ),
    (
        "rss_mib_seconds_total",
        "The VMM's resident memory in MiB times seconds, as sampled.",
        |u| u.rss_kib_ms,
        1e-3 / 1024.0,
    ),
    (
        "block_read_bytes_total",
        "Bytes the guest read from its drives.",
        |u| u.block_read_bytes,
        1.0,
    ),
    (
        "block_write_bytes_total",
        "Bytes the guest wrote to its drives.",
        |u| u.block_write_bytes,
        1.0,
    ),
    (
        "block_read_ops_total",
        "Read requests of the guest's drives.",
        |u| u.block_read_ops,
        1.0,
    ),
    (
        "block_write_ops_total",
        "Write requests of the guest's drives.",
        |u| u.block_write_ops,
        1.0,
    ),
    (
        "net_rx_bytes_total",
        "Bytes the guest received.",
        |u| u.net_rx_bytes,
        1.0,
    ),
    (
        "net_tx_bytes_total",
        "Bytes the guest sent.",
        |u| u.net_tx_bytes,
        1.0,
    ),
    (
        "net_rx_packets_total",
        "Frames the guest received.",
        |u| u.net_rx_packets,
        1.0,
    ),
    (
        "net_tx_packets_total",
        "Frames the guest sent.",
        |u| u.net_tx_packets,
        1.0,
    ),
];

/// The whole exposition.
pub fn render(a: &Agent) -> Result<String, AgentError> {
    let instances = a.db(db::instances)?;
    let totals: BTreeMap<String, meter::Usage> = a
        .db(meter::totals)?
        .into_iter()
        .map(|u| (u.instance_id, u.usage))
        .collect();
    let zero = meter::Usage::default();
    let mut out = String::new();
    for (suffix, help, column, scale) in INSTANCE_COUNTERS {
        let name = format!("ember_instance_{suffix}");
        let mut f = Family::new(&mut out, &name, "counter", help);
        for i in &instances {
            let u = totals.get(&i.id).unwrap_or(&zero);
            let labels = [
                ("instance_id", i.id.as_str()),
                ("instance_type", i.instance_type.as_str()),
            ];
            f.sample(&name, &labels, column(u) as f64 * scale);
        }
    }
    {
        let name = "ember_instance_state_seconds_total";
        let mut f = Family::new(
            &mut out,
            name,
            "counter",
            "Seconds the instance spent in each state.",
        );
        for i in &instances {
            let u = totals.get(&i.id).unwrap_or(&zero);
            for state in meter::STATES {
                let labels = [
                    ("instance_id", i.id.as_str()),
                    ("instance_type", i.instance_type.as_str()),
                    ("state", state.as_str()),
                ];
                f.sample(name, &labels, u.state_ms(state) as f64 / 1000.0);
            }
        }
    }
    {
        // A cross-check of the metered vCPU time, from the kernel's own accounting: the
        // whole VMM process (vCPU threads included) of each instance whose VMM runs now.
        let name = "ember_instance_cgroup_cpu_seconds_total";
        let mut f = Family::new(
            &mut out,
            name,
            "counter",
            "CPU time of the running VMM's cgroup (cpu.stat usage_usec): its whole process, vCPU threads included.",
        );
        for i in instances.iter().filter(|i| i.state.has_vmm()) {
            if let Some(us) = a.jail_of(i).cpu_usage_us() {
                let labels = [
                    ("instance_id", i.id.as_str()),
                    ("instance_type", i.instance_type.as_str()),
                ];
                f.sample(name, &labels, us as f64 / 1e6);
            }
        }
    }
    {
        let name = "ember_instance_memory_configured_bytes";
        let mut f = Family::new(&mut out, name, "gauge", "Memory of the instance's type.");
        for i in &instances {
            let mib = types::find(&i.instance_type).map_or(0, |t| t.memory_mib);
            let labels = [
                ("instance_id", i.id.as_str()),
                ("instance_type", i.instance_type.as_str()),
            ];
            f.sample(name, &labels, (mib << 20) as f64);
        }
    }
    {
        let name = "ember_instance_info";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "1 for every instance the agent describes, labelled with its state.",
        );
        for i in &instances {
            let labels = [
                ("instance_id", i.id.as_str()),
                ("instance_type", i.instance_type.as_str()),
                ("state", i.state.as_str()),
            ];
            f.sample(name, &labels, 1.0);
        }
    }
    agent_families(a, &instances, &mut out);
    Ok(out)
}

/// A counter family of answers by (`label`, status code), from one of the agent's tallies.
fn requests_family<K: AsRef<str> + Clone>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    tally: &std::sync::Mutex<std::collections::BTreeMap<(K, u16), u64>>,
) {
    let mut f = Family::new(out, name, "counter", help);
    let counts = tally.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for ((key, code), n) in counts {
        let code = code.to_string();
        f.sample(name, &[(label, key.as_ref()), ("code", &code)], n as f64);
    }
}

fn agent_families(a: &Agent, instances: &[db::Instance], out: &mut String) {
    requests_family(
        out,
        "emberd_http_requests_total",
        "API requests answered, by method and status.",
        "method",
        &a.stats.requests,
    );
    requests_family(
        out,
        "emberd_ec2_requests_total",
        "EC2 API requests answered, by action (- when none was named) and status.",
        "action",
        &a.stats.ec2_requests,
    );
    let counters = [
        (
            "emberd_vmm_launches_total",
            "VMM processes started.",
            &a.stats.launches,
        ),
        (
            "emberd_vmm_exits_total",
            "VMM exits seen.",
            &a.stats.vmm_exits,
        ),
        (
            "emberd_usage_samples_total",
            "Usage samples taken.",
            &a.stats.samples,
        ),
        (
            "emberd_usage_sample_failures_total",
            "Usage samples that failed.",
            &a.stats.sample_failures,
        ),
    ];
    for (name, help, c) in counters {
        Family::new(out, name, "counter", help).sample(name, &[], c.load(Ordering::Relaxed) as f64);
    }
    {
        let name = "emberd_instances";
        let mut f = Family::new(out, name, "gauge", "Instances by state.");
        let states = meter::STATES.into_iter().chain([InstanceState::Terminated]);
        for state in states {
            let n = instances.iter().filter(|i| i.state == state).count();
            f.sample(name, &[("state", state.as_str())], n as f64);
        }
    }
    let rss = crate::host::rss_kib(i64::from(std::process::id())).unwrap_or(0);
    Family::new(
        out,
        "emberd_resident_memory_bytes",
        "gauge",
        "The agent's resident memory.",
    )
    .sample("emberd_resident_memory_bytes", &[], (rss * 1024) as f64);
    Family::new(
        out,
        "emberd_usage_sample_interval_seconds",
        "gauge",
        "Seconds between usage samples.",
    )
    .sample(
        "emberd_usage_sample_interval_seconds",
        &[],
        a.settings.sample_interval.as_secs_f64(),
    );
}
