//! `emberctl`: emberd's command-line client. Tables for people, `--json` for programs;
//! errors are emberd's `code: message` on one line, exit status 1.

mod wait;

use agent_types::{
    ConsoleOutput, Image, ImageList, Instance, InstanceList, InstanceView, RegisterImage,
    RunRequest, StopRequest, TypeList, UsageReport,
};
use clap::{Parser, Subcommand};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use uds_client::Client;
use wait::Goal;

/// How long one request to emberd may take (a run copies root volumes before answering).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser)]
#[command(
    name = "emberctl",
    version,
    about = "Run and manage ember instances through emberd"
)]
struct Cli {
    /// emberd's socket.
    #[arg(long, global = true, default_value = "/run/ember/emberd.sock")]
    socket: PathBuf,
    /// Print emberd's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run instances and wait until they are running.
    Run {
        /// Image id.
        #[arg(long)]
        image: String,
        /// Instance type (see `emberctl types`).
        #[arg(long = "type", default_value = "e1.micro")]
        instance_type: String,
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Tags, KEY=VALUE, repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// User data (given to the guest as a read-only drive).
        #[arg(long)]
        user_data: Option<String>,
        /// Idempotency token: the same token returns the same instances.
        #[arg(long)]
        client_token: Option<String>,
        /// Data volume size in MiB, repeatable.
        #[arg(long = "data-volume-mib")]
        data_volumes: Vec<u64>,
        /// Do not wait for `running`.
        #[arg(long)]
        no_wait: bool,
    },
    /// List instances.
    Ls {
        /// Only in these states (comma-separated).
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one instance.
    Describe { id: String },
    /// Stop (Ctrl-Alt-Del, then kill after the agent's timeout; --force kills at once) and
    /// wait until it is stopped.
    Stop {
        id: String,
        #[arg(long)]
        force: bool,
        /// Hibernate: save the guest's memory, so `start` continues it where it was.
        #[arg(long, conflicts_with = "force")]
        hibernate: bool,
        /// Do not wait for `stopped`.
        #[arg(long)]
        no_wait: bool,
    },
    /// Start a stopped instance.
    Start { id: String },
    /// Reboot a running instance and wait until its new VMM runs.
    Reboot {
        id: String,
        /// Do not wait for the new VMM.
        #[arg(long)]
        no_wait: bool,
    },
    /// Terminate: the instance and its volumes are gone. Waits until it is terminated.
    Terminate {
        id: String,
        /// Do not wait for `terminated`.
        #[arg(long)]
        no_wait: bool,
    },
    /// The last KiB of an instance's console.
    Console {
        id: String,
        #[arg(long, default_value_t = 64)]
        kib: u64,
    },
    /// Images: list, or register/deregister.
    Images {
        #[command(subcommand)]
        op: Option<ImageOp>,
    },
    /// Instance types.
    Types,
    /// Usage per instance over a window (default: everything up to now).
    Usage {
        /// Start: Unix seconds or RFC 3339 UTC (2026-11-27T00:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// End (default now).
        #[arg(long)]
        to: Option<String>,
        /// Only these instances (repeatable).
        #[arg(long = "instance")]
        instances: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ImageOp {
    /// Register an image (the agent copies the files).
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        kernel: String,
        #[arg(long)]
        initrd: Option<String>,
        #[arg(long)]
        rootfs: String,
        #[arg(long)]
        boot_args: Option<String>,
    },
    /// Deregister an image no instance uses.
    Deregister { id: String },
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn table(rows: &[Value], cols: &[(&str, &str)]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|(k, _)| s(&r[*k])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (_, h))| {
            cells
                .iter()
                .map(|c| c[i].len())
                .max()
                .unwrap_or(0)
                .max(h.len())
        })
        .collect();
    let line = |vals: Vec<&str>| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(cols.iter().map(|c| c.1).collect()).trim_end());
    for c in &cells {
        println!(
            "{}",
            line(c.iter().map(String::as_str).collect()).trim_end()
        );
    }
}

const INSTANCE_COLS: &[(&str, &str)] = &[
    ("id", "ID"),
    ("state", "STATE"),
    ("instance_type", "TYPE"),
    ("ip", "IP"),
    ("image_id", "IMAGE"),
    ("reason", "REASON"),
];

const USAGE_COLS: &[(&str, &str)] = &[
    ("instance_id", "INSTANCE"),
    ("instance_type", "TYPE"),
    ("running_seconds", "RUNNING_S"),
    ("stopped_seconds", "STOPPED_S"),
    ("vcpu_seconds", "VCPU_S"),
    ("memory_mib_seconds", "MEM_MIB_S"),
    ("block_read_bytes", "BLK_READ"),
    ("block_write_bytes", "BLK_WRITE"),
    ("net_rx_bytes", "NET_RX"),
    ("net_tx_bytes", "NET_TX"),
];

/// A usage record with its figures formatted for the table (seconds to 0.1, bytes in
/// binary units).
fn usage_row(u: &Value) -> Value {
    let mut row = u.clone();
    for (k, _) in USAGE_COLS {
        let v = &u[*k];
        if k.ends_with("_seconds") {
            row[*k] = Value::String(format!("{:.1}", v.as_f64().unwrap_or(0.0)));
        } else if k.ends_with("_bytes") {
            row[*k] = Value::String(bytes(v.as_u64().unwrap_or(0)));
        }
    }
    row
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// emberd, reached through one client on a current-thread runtime (emberctl makes one
/// request at a time; a runtime with no worker threads starts in microseconds).
struct Emberd {
    client: Client,
    rt: tokio::runtime::Runtime,
}

impl Emberd {
    fn new(socket: PathBuf) -> Result<Emberd, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot start: {e}"))?;
        Ok(Emberd {
            client: Client::new(socket, REQUEST_TIMEOUT),
            rt,
        })
    }

    /// The message of a failed request, as emberctl has always printed it.
    fn message(&self, e: uds_client::Error) -> String {
        match e {
            uds_client::Error::Connect { socket, source } => {
                format!("cannot reach emberd at {}: {source}", socket.display())
            }
            e @ uds_client::Error::Status { .. } => e.to_string(),
            e => format!("emberd: {e}"),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        self.rt
            .block_on(self.client.get(path))
            .map_err(|e| self.message(e))
    }

    fn post<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, String> {
        self.rt
            .block_on(self.client.post(path, body))
            .map_err(|e| self.message(e))
    }

    fn delete(&self, path: &str) -> Result<(), String> {
        self.rt
            .block_on(self.client.delete(path))
            .map_err(|e| self.message(e))
    }

    /// Polls until every instance of `ids` has reached `goal`, showing progress on stderr;
    /// returns how they are described at the end.
    fn wait(&self, ids: &[String], goal: Goal) -> Result<InstanceList, String> {
        use wait::Progress;
        let t0 = std::time::Instant::now();
        let path = format!("/v1/instances?id={}", ids.join(","));
        loop {
            let now: InstanceList = self.get(&path)?;
            let progress = goal.assess(now.instances.iter().map(|v| &v.instance));
            let secs = t0.elapsed().as_secs_f64();
            match progress {
                Progress::Done => {
                    eprintln!(
                        "\remberctl: {n}/{n} {} ({secs:.0} s)",
                        goal.name(),
                        n = ids.len()
                    );
                    return Ok(now);
                }
                Progress::Waiting { arrived } => {
                    eprint!(
                        "\remberctl: {arrived}/{} {} ({secs:.0} s)",
                        ids.len(),
                        goal.name()
                    );
                }
                Progress::Failed { id, state, reason } => {
                    eprintln!();
                    return Err(format!(
                        "{id} did not reach {}: it is {state} ({reason})",
                        goal.name()
                    ));
                }
            }
            if t0.elapsed() > WAIT_LIMIT {
                eprintln!();
                return Err(format!("gave up waiting after {} s", WAIT_LIMIT.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// How long emberctl waits for instances to arrive.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

/// `v` as a JSON value (for `--json` and the tables, which show any field by name).
fn value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn run(cli: Cli) -> Result<(), String> {
    let d = Emberd::new(cli.socket.clone())?;
    let out = |v: &Value, rows: &str, cols: &[(&str, &str)]| {
        if cli.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            match v[rows].as_array() {
                Some(a) => table(a, cols),
                None => table(std::slice::from_ref(v), cols),
            }
        }
    };
    // A lifecycle verb on one instance: its answer, or (waiting) how it ends up.
    let verb = |id: &str, answer: InstanceView, goal: Option<Goal>| -> Result<(), String> {
        let last = match goal {
            Some(goal) => {
                let mut all = d.wait(&[id.to_string()], goal)?;
                all.instances.pop().unwrap_or(answer)
            }
            None => answer,
        };
        out(&value(&last), "", INSTANCE_COLS);
        Ok(())
    };
    let wait_unless = |no_wait: bool, goal: Goal| (!no_wait).then_some(goal);
    match cli.cmd {
        Cmd::Types => out(
            &value(&d.get::<TypeList>("/v1/types")?),
            "instance_types",
            &[
                ("name", "NAME"),
                ("vcpus", "VCPUS"),
                ("memory_mib", "MEMORY_MIB"),
            ],
        ),
        Cmd::Images { op: None } => out(
            &value(&d.get::<ImageList>("/v1/images")?),
            "images",
            &[
                ("id", "ID"),
                ("name", "NAME"),
                ("rootfs_sha256", "ROOTFS_SHA256"),
            ],
        ),
        Cmd::Images {
            op:
                Some(ImageOp::Register {
                    name,
                    kernel,
                    initrd,
                    rootfs,
                    boot_args,
                }),
        } => {
            let req = RegisterImage {
                name,
                kernel,
                initrd,
                rootfs,
                boot_args,
            };
            let image: Image = d.post("/v1/images", Some(&req))?;
            out(&value(&image), "", &[("id", "ID"), ("name", "NAME")])
        }
        Cmd::Images {
            op: Some(ImageOp::Deregister { id }),
        } => d.delete(&format!("/v1/images/{id}"))?,
        Cmd::Run {
            image,
            instance_type,
            count,
            tags,
            user_data,
            client_token,
            data_volumes,
            no_wait,
        } => {
            let mut tagmap = BTreeMap::new();
            for t in tags {
                let (k, v) = t
                    .split_once('=')
                    .ok_or(format!("--tag {t:?}: expected KEY=VALUE"))?;
                tagmap.insert(k.to_string(), v.to_string());
            }
            let req = RunRequest {
                image_id: image,
                instance_type,
                count: Some(count),
                user_data,
                tags: Some(tagmap),
                client_token,
                data_volumes_mib: data_volumes,
            };
            let made: InstanceList<Instance> = d.post("/v1/instances", Some(&req))?;
            let ids: Vec<String> = made.instances.iter().map(|i| i.id.clone()).collect();
            if no_wait {
                out(&value(&made), "instances", INSTANCE_COLS)
            } else {
                out(
                    &value(&d.wait(&ids, Goal::Running)?),
                    "instances",
                    INSTANCE_COLS,
                )
            }
        }
        Cmd::Ls { state } => {
            let q = state.map(|s| format!("?state={s}")).unwrap_or_default();
            let all: InstanceList = d.get(&format!("/v1/instances{q}"))?;
            out(&value(&all), "instances", INSTANCE_COLS)
        }
        Cmd::Describe { id } => {
            let v = value(&d.get::<InstanceView>(&format!("/v1/instances/{id}"))?);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if let Some(o) = v.as_object() {
                for (k, val) in o {
                    println!("{k:<16} {}", s(val));
                }
            }
        }
        Cmd::Stop {
            id,
            force,
            hibernate,
            no_wait,
        } => {
            let body = StopRequest { force, hibernate };
            let answer = d.post(&format!("/v1/instances/{id}/stop"), Some(&body))?;
            verb(&id, answer, wait_unless(no_wait, Goal::Stopped))?
        }
        Cmd::Start { id } => {
            let answer = d.post(&format!("/v1/instances/{id}/start"), None::<&()>)?;
            verb(&id, answer, None)?
        }
        Cmd::Reboot { id, no_wait } => {
            let answer: InstanceView =
                d.post(&format!("/v1/instances/{id}/reboot"), None::<&()>)?;
            let goal = Goal::Rebooted {
                old_pid: answer.instance.pid,
            };
            verb(&id, answer, wait_unless(no_wait, goal))?
        }
        Cmd::Terminate { id, no_wait } => {
            let answer = d.post(&format!("/v1/instances/{id}/terminate"), None::<&()>)?;
            verb(&id, answer, wait_unless(no_wait, Goal::Terminated))?
        }
        Cmd::Usage {
            from,
            to,
            instances,
        } => {
            let mut q = Vec::new();
            if let Some(f) = from {
                q.push(format!("from={f}"));
            }
            if let Some(t) = to {
                q.push(format!("to={t}"));
            }
            if !instances.is_empty() {
                q.push(format!("instance={}", instances.join(",")));
            }
            let report: UsageReport = d.get(&format!("/v1/usage?{}", q.join("&")))?;
            let v = value(&report);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("usage from {} to {}", report.from, report.to);
                let rows: Vec<Value> = report
                    .instances
                    .iter()
                    .map(|u| usage_row(&value(u)))
                    .collect();
                table(&rows, USAGE_COLS);
            }
        }
        Cmd::Console { id, kib } => {
            let c: ConsoleOutput = d.get(&format!("/v1/instances/{id}/console?kib={kib}"))?;
            if cli.json {
                println!("{}", value(&c));
            } else {
                print!("{}", c.output);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emberctl: {e}");
            ExitCode::FAILURE
        }
    }
}
