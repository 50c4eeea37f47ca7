//! `emberctl`: emberd's command-line client. Tables for people, `--json` for programs;
//! errors are emberd's `code: message` on one line, exit status 1.

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
    /// Stop (Ctrl-Alt-Del, then kill after the agent's timeout; --force kills at once).
    Stop {
        id: String,
        #[arg(long)]
        force: bool,
    },
    /// Start a stopped instance.
    Start { id: String },
    /// Reboot a running instance.
    Reboot { id: String },
    /// Terminate: the instance and its volumes are gone.
    Terminate { id: String },
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

fn call(sock: &PathBuf, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let mut s = UnixStream::connect(sock)
        .map_err(|e| format!("cannot reach emberd at {}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: emberd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or("emberd sent no HTTP answer")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let v: Value = if rest.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(rest).map_err(|e| format!("emberd's answer is not JSON: {e}"))?
    };
    if (200..300).contains(&status) {
        Ok(v)
    } else {
        Err(format!(
            "{}: {}",
            v["code"].as_str().unwrap_or("Error"),
            v["message"].as_str().unwrap_or("(no message)")
        ))
    }
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
            row[*k] = json!(format!("{:.1}", v.as_f64().unwrap_or(0.0)));
        } else if k.ends_with("_bytes") {
            row[*k] = json!(bytes(v.as_u64().unwrap_or(0)));
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

fn run(cli: Cli) -> Result<(), String> {
    let sock = &cli.socket;
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
    match cli.cmd {
        Cmd::Types => out(
            &call(sock, "GET", "/v1/types", None)?,
            "instance_types",
            &[
                ("name", "NAME"),
                ("vcpus", "VCPUS"),
                ("memory_mib", "MEMORY_MIB"),
            ],
        ),
        Cmd::Images { op: None } => out(
            &call(sock, "GET", "/v1/images", None)?,
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
            let mut b = json!({"name": name, "kernel": kernel, "rootfs": rootfs});
            if let Some(i) = initrd {
                b["initrd"] = json!(i);
            }
            if let Some(a) = boot_args {
                b["boot_args"] = json!(a);
            }
            out(
                &call(sock, "POST", "/v1/images", Some(b))?,
                "",
                &[("id", "ID"), ("name", "NAME")],
            )
        }
        Cmd::Images {
            op: Some(ImageOp::Deregister { id }),
        } => {
            call(sock, "DELETE", &format!("/v1/images/{id}"), None)?;
        }
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
            let mut tagmap = serde_json::Map::new();
            for t in tags {
                let (k, v) = t
                    .split_once('=')
                    .ok_or(format!("--tag {t:?}: expected KEY=VALUE"))?;
                tagmap.insert(k.into(), json!(v));
            }
            let mut b = json!({"image_id": image, "instance_type": instance_type, "count": count,
                               "tags": tagmap, "data_volumes_mib": data_volumes});
            if let Some(u) = user_data {
                b["user_data"] = json!(u);
            }
            if let Some(t) = client_token {
                b["client_token"] = json!(t);
            }
            let made = call(sock, "POST", "/v1/instances", Some(b))?;
            let ids: Vec<String> = made["instances"]
                .as_array()
                .map(|a| a.iter().map(|i| s(&i["id"])).collect())
                .unwrap_or_default();
            let mut last = made.clone();
            if !no_wait {
                let t0 = Instant::now();
                loop {
                    last = call(
                        sock,
                        "GET",
                        &format!("/v1/instances?id={}", ids.join(",")),
                        None,
                    )?;
                    let states: Vec<String> = last["instances"]
                        .as_array()
                        .map(|a| a.iter().map(|i| s(&i["state"])).collect())
                        .unwrap_or_default();
                    let running = states.iter().filter(|s| *s == "running").count();
                    eprint!(
                        "\remberctl: {running}/{} running ({:.0} s)",
                        ids.len(),
                        t0.elapsed().as_secs_f64()
                    );
                    if running == ids.len() {
                        eprintln!();
                        break;
                    }
                    if states.iter().any(|s| s != "pending" && s != "running") {
                        eprintln!();
                        out(&last, "instances", INSTANCE_COLS);
                        return Err("an instance did not reach running".into());
                    }
                    if t0.elapsed() > Duration::from_secs(600) {
                        eprintln!();
                        return Err("gave up waiting after 600 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
            out(&last, "instances", INSTANCE_COLS)
        }
        Cmd::Ls { state } => {
            let q = state.map(|s| format!("?state={s}")).unwrap_or_default();
            out(
                &call(sock, "GET", &format!("/v1/instances{q}"), None)?,
                "instances",
                INSTANCE_COLS,
            )
        }
        Cmd::Describe { id } => {
            let v = call(sock, "GET", &format!("/v1/instances/{id}"), None)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if let Some(o) = v.as_object() {
                for (k, val) in o {
                    println!("{k:<16} {}", s(val));
                }
            }
        }
        Cmd::Stop { id, force } => out(
            &call(
                sock,
                "POST",
                &format!("/v1/instances/{id}/stop"),
                Some(json!({"force": force})),
            )?,
            "",
            INSTANCE_COLS,
        ),
        Cmd::Start { id } => out(
            &call(sock, "POST", &format!("/v1/instances/{id}/start"), None)?,
            "",
            INSTANCE_COLS,
        ),
        Cmd::Reboot { id } => out(
            &call(sock, "POST", &format!("/v1/instances/{id}/reboot"), None)?,
            "",
            INSTANCE_COLS,
        ),
        Cmd::Terminate { id } => out(
            &call(sock, "POST", &format!("/v1/instances/{id}/terminate"), None)?,
            "",
            INSTANCE_COLS,
        ),
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
            let v = call(sock, "GET", &format!("/v1/usage?{}", q.join("&")), None)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("usage from {} to {}", s(&v["from"]), s(&v["to"]));
                let rows: Vec<Value> = v["instances"]
                    .as_array()
                    .map(|a| a.iter().map(usage_row).collect())
                    .unwrap_or_default();
                table(&rows, USAGE_COLS);
            }
        }
        Cmd::Console { id, kib } => {
            let v = call(
                sock,
                "GET",
                &format!("/v1/instances/{id}/console?kib={kib}"),
                None,
            )?;
            if cli.json {
                println!("{v}");
            } else {
                print!("{}", v["output"].as_str().unwrap_or(""));
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
