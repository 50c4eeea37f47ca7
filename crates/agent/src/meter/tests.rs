//! The meter's tests: reading lines, splitting at hours, windows, states, pruning.

use super::*;
use agent_types::InstanceState;
use rusqlite::Connection;
use std::io::Write;

fn db() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    c.execute_batch("CREATE TABLE instances (id TEXT PRIMARY KEY);")
        .unwrap();
    init(&c).unwrap();
    c
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("emberd-meter-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("metrics.jsonl")
}

fn line(f: &mut std::fs::File, ts: i64, vcpu_us: u64, wbytes: u64) {
    writeln!(
        f,
        r#"{{"utc_timestamp_ms":{ts},"vcpu":{{"cpu_time_us":{vcpu_us}}},"block":{{"write_bytes":{wbytes},"write_count":1}},"net":{{"tx_bytes_count":7}}}}"#
    )
    .unwrap();
}

fn at(now_ms: i64, new_state: Option<InstanceState>) -> SampleAt {
    SampleAt {
        now_ms,
        new_state,
        rss_kib: Some(1024),
        exit_unseen: false,
    }
}

#[test]
fn metrics_lines_are_summed_once_and_a_partial_line_waits() {
    let p = tmp("read");
    let mut f = std::fs::File::create(&p).unwrap();
    line(&mut f, 10, 100, 4096);
    line(&mut f, 20, 50, 0);
    write!(f, r#"{{"utc_timestamp_ms":30,"vcpu":{{"cpu_ti"#).unwrap();
    let r = read_metrics(&p, 0).unwrap();
    assert_eq!(r.counters.vcpu_us, 150);
    assert_eq!(r.counters.block_write_bytes, 4096);
    assert_eq!(r.counters.block_write_ops, 2);
    assert_eq!(r.counters.net_tx_bytes, 14);
    assert_eq!(r.last_line_ms, Some(20));
    // Nothing new: nothing counted again.
    let again = read_metrics(&p, r.offset).unwrap();
    assert_eq!(again.counters, Usage::default());
    assert_eq!(again.offset, r.offset);
    // The line completes.
    writeln!(f, r#"me_us":5}}}}"#).unwrap();
    let last = read_metrics(&p, r.offset).unwrap();
    assert_eq!(last.counters.vcpu_us, 5);
    assert_eq!(last.last_line_ms, Some(30));
    // A missing file adds nothing.
    let none = read_metrics(&p.with_extension("missing"), 0).unwrap();
    assert_eq!(none.counters, Usage::default());
    // Garbage lines are skipped, not fatal.
    writeln!(f, "not json").unwrap();
    line(&mut f, 40, 1, 0);
    let g = read_metrics(&p, last.offset).unwrap();
    assert_eq!(g.counters.vcpu_us, 1);
}

#[test]
fn lines_already_read_give_their_disk_space_back_and_offsets_hold() {
    use std::os::unix::fs::MetadataExt;
    let p = tmp("punch");
    let mut f = std::fs::File::create(&p).unwrap();
    for k in 0..4000 {
        line(&mut f, k, 1, 0);
    }
    f.sync_all().unwrap();
    let r = read_metrics(&p, 0).unwrap();
    assert_eq!(r.counters.vcpu_us, 4000);
    let blocks = std::fs::metadata(&p).unwrap().blocks();
    super::read::release_read(&p, r.offset);
    let md = std::fs::metadata(&p).unwrap();
    assert_eq!(md.len(), r.offset, "the size (and so every offset) is kept");
    assert!(md.blocks() <= blocks);
    line(&mut f, 5000, 7, 0);
    let next = read_metrics(&p, r.offset).unwrap();
    assert_eq!(next.counters.vcpu_us, 7);
}

#[test]
fn samples_split_at_hours_and_whole_hour_windows_are_exact() {
    let c = db();
    let p = tmp("split");
    let mut f = std::fs::File::create(&p).unwrap();
    let h = 1_000 * HOUR_MS; // an hour boundary
    open(&c, "i-1", "e1.nano", 128, &p, h - 1000).unwrap();
    sample(&c, "i-1", at(h - 1000, Some(InstanceState::Running))).unwrap();
    // 10 s of running across the boundary, with 1000 us of vCPU and 10 writes.
    for _ in 0..10 {
        line(&mut f, h, 100, 1);
    }
    sample(&c, "i-1", at(h + 9000, None)).unwrap();
    let before = query(&c, h - HOUR_MS, h, None).unwrap();
    let after = query(&c, h, h + HOUR_MS, None).unwrap();
    let all = query(&c, h - HOUR_MS, h + HOUR_MS, None).unwrap();
    assert_eq!(before[0].usage.running_ms, 1000);
    assert_eq!(after[0].usage.running_ms, 9000);
    assert_eq!(before[0].usage.vcpu_us, 100);
    assert_eq!(after[0].usage.vcpu_us, 900);
    let mut sum = before[0].usage;
    sum.add(&after[0].usage);
    assert_eq!(sum, all[0].usage);
    assert_eq!(all[0].usage.block_write_bytes, 10);
    assert_eq!(all[0].usage.mem_mib_ms, 128 * 10_000);
    assert_eq!(all[0].usage.rss_kib_ms, 1024 * 10_000);
    // The whole-hour windows are the rollups, to the unit.
    let hourly: i64 = c
        .query_row(
            "SELECT vcpu_us FROM usage_hourly WHERE hour_ms = ?1",
            [h],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(hourly, 900);
    // A window inside the hour shares out the straddling sample by time.
    let mid = query(&c, h + 1000, h + 5500, None).unwrap();
    assert_eq!(mid[0].usage.running_ms, 4500);
    assert_eq!(mid[0].usage.vcpu_us, 450);
}

#[test]
fn states_accrue_to_the_state_they_were_in_and_terminated_stops_accruing() {
    let c = db();
    let p = tmp("states");
    let t = 5 * HOUR_MS + 100;
    open(&c, "i-2", "e1.micro", 256, &p, t).unwrap();
    sample(&c, "i-2", at(t + 2000, Some(InstanceState::Running))).unwrap();
    sample(&c, "i-2", at(t + 12_000, Some(InstanceState::Stopping))).unwrap();
    sample(&c, "i-2", at(t + 13_000, Some(InstanceState::Stopped))).unwrap();
    sample(&c, "i-2", at(t + 20_000, Some(InstanceState::Terminated))).unwrap();
    sample(&c, "i-2", at(t + 90_000, None)).unwrap();
    let u = query(&c, 0, t + 100_000, None).unwrap()[0].usage;
    assert_eq!(u.pending_ms, 2000);
    assert_eq!(u.running_ms, 10_000);
    assert_eq!(u.stopping_ms, 1000);
    assert_eq!(u.stopped_ms, 7000);
    // Memory only while a VMM held it.
    assert_eq!(u.mem_mib_ms, 256 * 13_000);
    assert!(metered(&c).unwrap().is_empty());
    assert_eq!(totals(&c).unwrap()[0].usage, u);
}

#[test]
fn an_exit_seen_late_ends_at_the_last_metrics_line() {
    let c = db();
    let p = tmp("late");
    let mut f = std::fs::File::create(&p).unwrap();
    let t = 7 * HOUR_MS;
    open(&c, "i-3", "e1.nano", 128, &p, t).unwrap();
    sample(&c, "i-3", at(t, Some(InstanceState::Running))).unwrap();
    line(&mut f, t + 4000, 10, 0);
    let late = SampleAt {
        exit_unseen: true,
        ..at(t + 60_000, Some(InstanceState::Stopped))
    };
    sample(&c, "i-3", late).unwrap();
    sample(&c, "i-3", at(t + 70_000, None)).unwrap();
    let u = query(&c, 0, t + HOUR_MS, None).unwrap()[0].usage;
    assert_eq!(u.running_ms, 4000);
    assert_eq!(u.stopped_ms, 66_000);
    assert_eq!(u.vcpu_us, 10);
}

#[test]
fn pruned_hours_are_shared_out_from_the_rollup_and_filters_apply() {
    let c = db();
    let p = tmp("prune");
    let t = 9 * HOUR_MS;
    open(&c, "i-4", "e1.nano", 128, &p, t).unwrap();
    open(&c, "i-5", "e1.nano", 128, &p.with_extension("other"), t).unwrap();
    sample(&c, "i-4", at(t, Some(InstanceState::Running))).unwrap();
    sample(&c, "i-4", at(t + HOUR_MS, None)).unwrap();
    sample(&c, "i-5", at(t + 10, Some(InstanceState::Running))).unwrap();
    prune(&c, t + 2 * HOUR_MS).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM usage_samples", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    let half = query(&c, t, t + HOUR_MS / 2, Some(&["i-4".to_string()])).unwrap();
    assert_eq!(half.len(), 1);
    assert_eq!(half[0].usage.running_ms, HOUR_MS / 2);
}

#[test]
fn a_line_ember_writes_with_the_model_type_is_read_whole() {
    use model::metrics::{BlockMetrics, NetMetrics, VcpuMetrics};
    let p = tmp("model");
    let mut line = model::MetricsLine {
        utc_timestamp_ms: 1234,
        block: Some(BlockMetrics {
            read_bytes: 1,
            write_bytes: 2,
            read_count: 3,
            write_count: 4,
            ..Default::default()
        }),
        net: Some(NetMetrics {
            rx_bytes_count: 5,
            tx_bytes_count: 6,
            rx_packets_count: 7,
            tx_packets_count: 8,
            ..Default::default()
        }),
        vcpu: Some(VcpuMetrics {
            cpu_time_us: 9,
            ..Default::default()
        }),
        ..Default::default()
    };
    // Per-device groups are not summed again: `block` and `net` are already the totals.
    line.block_devices
        .insert("rootfs".into(), line.block.unwrap_or_default());
    let mut text = serde_json::to_string(&line).unwrap();
    text.push('\n');
    std::fs::write(&p, text).unwrap();
    let r = read_metrics(&p, 0).unwrap();
    let want = Usage {
        vcpu_us: 9,
        block_read_bytes: 1,
        block_write_bytes: 2,
        block_read_ops: 3,
        block_write_ops: 4,
        net_rx_bytes: 5,
        net_tx_bytes: 6,
        net_rx_packets: 7,
        net_tx_packets: 8,
        ..Usage::default()
    };
    assert_eq!(r.counters, want);
    assert_eq!(r.last_line_ms, Some(1234));
}
