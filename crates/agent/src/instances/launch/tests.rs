use super::*;
use agent_types::{Image, Instance};
use std::collections::BTreeMap;

fn instance(user_data: Option<&str>) -> Instance {
    Instance {
        id: "i-0123456789abcdef0".into(),
        image_id: "img-0123456789abcdef0".into(),
        instance_type: "e1.medium".into(),
        state: InstanceState::Pending,
        reason: "user request".into(),
        pid: None,
        pid_start: None,
        dir: "/var/lib/emberd/instances/i-0123456789abcdef0".into(),
        ip: "172.31.0.7".into(),
        tap: "em-0123456789ab".into(),
        mac: "06:00:ac:1f:00:07".into(),
        client_token: None,
        user_data: user_data.map(str::to_string),
        tags: BTreeMap::new(),
        launched_at: 0,
        changed_at: 0,
        terminated_at: None,
    }
}

fn image(initrd: Option<&str>) -> Image {
    Image {
        id: "img-0123456789abcdef0".into(),
        name: "t".into(),
        kernel: "/img/kernel".into(),
        initrd: initrd.map(str::to_string),
        rootfs: "/img/rootfs.img".into(),
        boot_args: "console=ttyS0".into(),
        rootfs_sha256: String::new(),
        created_at: 0,
    }
}

fn volume(path: &str, root: bool) -> Volume {
    Volume {
        id: "vol-0123456789abcdef0".into(),
        instance_id: "i-0123456789abcdef0".into(),
        path: path.into(),
        size_bytes: 1 << 20,
        root,
    }
}

/// Each body, as sent, read back by the model crate's strict parser (what ember uses).
fn strict<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let text = serde_json::to_vec(v).unwrap();
    let back: T = model::from_json(&text).unwrap();
    assert_eq!(&back, v);
}

#[test]
fn the_configuration_is_the_types_the_image_and_the_volumes() {
    let inst = instance(Some("hello"));
    let itype = types::find("e1.medium").unwrap();
    let vols = [volume("/d/root.img", true), volume("/d/data0.img", false)];
    let dir = Path::new(&inst.dir);
    let s = VmmSetup::new(
        &inst,
        &image(None),
        &itype,
        &vols,
        dir,
        Ipv4Addr::new(172, 31, 0, 1),
        "ember-1a",
    );
    assert_eq!(
        s.boot.boot_args.as_deref(),
        Some("console=ttyS0 ip=172.31.0.7::172.31.0.1:255.255.255.0::eth0:off ember_user_data=1")
    );
    assert_eq!(s.boot.initrd_path, None);
    // EC2's metadata, over MMDS V2 on eth0.
    assert_eq!(s.mmds_config.version, model::MmdsVersion::V2);
    assert_eq!(s.mmds_config.network_interfaces, vec!["eth0".to_string()]);
    let v = serde_json::to_value(&s.metadata).unwrap();
    let md = &v["latest"]["meta-data"];
    assert_eq!(md["instance-id"], inst.id.as_str());
    assert_eq!(md["local-ipv4"], inst.ip.as_str());
    assert_eq!(md["instance-type"], inst.instance_type.as_str());
    assert_eq!(md["placement"]["availability-zone"], "ember-1a");
    assert_eq!(md["hostname"], "ip-172-31-0-7.ember.internal");
    assert_eq!(v["latest"]["user-data"].as_str(), inst.user_data.as_deref());
    assert_eq!((s.machine.vcpu_count, s.machine.mem_size_mib), (2, 1024));
    let ids: Vec<&str> = s.drives.iter().map(|d| d.drive_id.as_str()).collect();
    assert_eq!(ids, ["rootfs", "data0", "user_data"]);
    assert!(s.drives[0].is_root_device && !s.drives[1].is_root_device);
    assert_eq!(s.drives[0].cache_type, Some(CacheType::Writeback));
    assert_eq!(s.drives[2].is_read_only, Some(true));
    assert_eq!(s.drives[2].cache_type, None);
    assert_eq!(
        s.drives[2].path_on_host.as_deref(),
        Some("/var/lib/emberd/instances/i-0123456789abcdef0/user-data.img")
    );
    assert_eq!(s.net.host_dev_name, "em-0123456789ab");
    assert_eq!(s.net.guest_mac.as_deref(), Some("06:00:ac:1f:00:07"));
    assert!(s.metrics.metrics_path.ends_with("/metrics.jsonl"));
    // ember takes every body: strict parsing and its validation.
    strict(&s.boot);
    strict(&s.machine);
    s.machine.validate().unwrap();
    for d in &s.drives {
        strict(d);
    }
    model::drive::validate_drives(&s.drives).unwrap();
    strict(&s.net);
    model::net::validate_interface(&s.net).unwrap();
    strict(&s.metrics);
    strict(&InstanceActionInfo::new(ActionType::InstanceStart));
}

#[test]
fn without_user_data_there_is_no_drive_for_it_and_an_initrd_is_passed_on() {
    let inst = instance(None);
    let itype = types::find("e1.nano").unwrap();
    let vols = [volume("/d/root.img", true)];
    let s = VmmSetup::new(
        &inst,
        &image(Some("/img/initrd")),
        &itype,
        &vols,
        Path::new(&inst.dir),
        Ipv4Addr::new(172, 31, 0, 1),
        "ember-1a",
    );
    assert_eq!(s.drives.len(), 1);
    assert!(!s
        .boot
        .boot_args
        .unwrap_or_default()
        .contains("ember_user_data"));
    assert_eq!(s.boot.initrd_path.as_deref(), Some("/img/initrd"));
}

/// A fake ember on a socket: records each request line and body, answers 204 (or 400
/// with a fault for `fail_path`).
async fn fake_ember(
    sock: &Path,
    fail_path: Option<&'static str>,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(sock).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (line, body) = loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_string)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        let line = head.lines().next().unwrap_or("").to_string();
                        break (line, body.to_string());
                    }
                }
            };
            let fail = fail_path.is_some_and(|p| line.contains(&format!(" {p} ")));
            let answer = if fail {
                let b = r#"{"fault_message":"drive rootfs: path_on_host: no such file"}"#;
                format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                )
            } else {
                "HTTP/1.1 204 No Content\r\n\r\n".to_string()
            };
            s.write_all(answer.as_bytes()).await.unwrap();
            let _ = tx.send((line, body));
        }
    });
    rx
}

fn sock(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("emberd-launch-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[tokio::test(flavor = "current_thread")]
async fn apply_sends_every_resource_in_order_then_instance_start() {
    let p = sock("apply");
    let mut seen = fake_ember(&p, None).await;
    let inst = instance(None);
    let itype = types::find("e1.nano").unwrap();
    let vols = [volume("/d/root.img", true)];
    let s = VmmSetup::new(
        &inst,
        &image(None),
        &itype,
        &vols,
        Path::new("/d"),
        Ipv4Addr::new(172, 31, 0, 1),
        "ember-1a",
    );
    s.apply(&Client::new(&p, Duration::from_secs(5)))
        .await
        .unwrap();
    let mut lines = Vec::new();
    while let Ok((line, body)) = seen.try_recv() {
        lines.push(line);
        if lines.len() == 6 {
            assert!(
                body.contains(r#""instance-id":"i-0123456789abcdef0""#),
                "{body}"
            );
        }
        if lines.len() == 8 {
            assert_eq!(body, r#"{"action_type":"InstanceStart"}"#);
        }
    }
    assert_eq!(
        lines,
        [
            "PUT /boot-source HTTP/1.1",
            "PUT /machine-config HTTP/1.1",
            "PUT /drives/rootfs HTTP/1.1",
            "PUT /network-interfaces/eth0 HTTP/1.1",
            "PUT /mmds/config HTTP/1.1",
            "PUT /mmds HTTP/1.1",
            "PUT /metrics HTTP/1.1",
            "PUT /actions HTTP/1.1",
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_step_names_itself_and_embers_fault() {
    let p = sock("refused");
    let _seen = fake_ember(&p, Some("/drives/rootfs")).await;
    let inst = instance(None);
    let itype = types::find("e1.nano").unwrap();
    let vols = [volume("/d/root.img", true)];
    let s = VmmSetup::new(
        &inst,
        &image(None),
        &itype,
        &vols,
        Path::new("/d"),
        Ipv4Addr::new(172, 31, 0, 1),
        "ember-1a",
    );
    let e = s
        .apply(&Client::new(&p, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "PUT /drives/rootfs: drive rootfs: path_on_host: no such file"
    );
}
