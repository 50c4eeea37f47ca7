//! For tests: an agent in a temporary directory with no VMMs (ember and its jailer are not
//! there, so a launch fails before it makes anything on the host), and instance records
//! added to it directly, as a launch that never got a VMM leaves them.

use super::{jail::JailSettings, Agent, Settings};
use crate::db::{self, Instance};
use crate::meter;
use agent_types::InstanceState;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// An agent under `<tmp>/emberd-<kind>-<pid>-<name>` (made afresh) on `subnet`; and that
/// directory.
pub fn agent(kind: &str, name: &str, subnet: Ipv4Addr) -> (Arc<Agent>, PathBuf) {
    let base = std::env::temp_dir().join(format!("emberd-{kind}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let agent = Agent::open(Settings {
        state_dir: base.join("state"),
        bridge: "ember-test0".into(),
        subnet,
        ember: "/nonexistent/ember".into(),
        stop_timeout: Duration::from_secs(1),
        run_dir: base.join("run"),
        sample_interval: Duration::from_secs(5),
        availability_zone: "ember-1a".into(),
        jail: JailSettings {
            jailer: "/nonexistent/ember-jailer".into(),
            chroot_base: base.join("state/jail"),
            uid_start: 100_000,
            memory_overhead_mib: 64,
            cgroup_root: base.join("cgroup"),
        },
    })
    .expect("test agent");
    (agent, base)
}

/// An `e1.nano` instance record in `state` with a directory and a meter, and no VMM;
/// launched at `launched_at` (Unix seconds), its address the subnet's .2 onwards by it.
pub fn add(a: &Agent, id: &str, state: InstanceState, launched_at: i64) -> Instance {
    let dir = a.settings.state_dir.join("instances").join(id);
    std::fs::create_dir_all(&dir).expect("instance dir");
    let o = a.settings.subnet.octets();
    let host = u8::try_from(2 + launched_at.rem_euclid(200)).unwrap_or(2);
    let inst = Instance {
        id: id.into(),
        image_id: "img-0123456789abcdef0".into(),
        instance_type: "e1.nano".into(),
        state,
        reason: "user request".into(),
        pid: None,
        pid_start: None,
        dir: dir.display().to_string(),
        ip: Ipv4Addr::new(o[0], o[1], o[2], host).to_string(),
        // No such link: removing it fails harmlessly.
        tap: "em-nosuchtap0".into(),
        mac: format!("06:00:{:02x}:{:02x}:{:02x}:{host:02x}", o[0], o[1], o[2]),
        client_token: None,
        user_data: None,
        tags: Default::default(),
        launched_at,
        changed_at: launched_at,
        terminated_at: None,
    };
    a.db(|c| {
        db::insert_instance(c, &inst)?;
        meter::open(
            c,
            id,
            "e1.nano",
            128,
            &dir.join("metrics.jsonl"),
            meter::now_ms(),
        )
    })
    .expect("instance record");
    inst
}
