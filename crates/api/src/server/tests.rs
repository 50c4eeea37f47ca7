//! Slots and timeouts: half-sent requests and idle connections cannot keep the owner out.

use super::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

const REQUEST: Duration = Duration::from_millis(300);
const IDLE: Duration = Duration::from_millis(3000);

fn serve(name: &str) -> (PathBuf, VmmLink) {
    let path = std::env::temp_dir().join(format!("ember-api-{}-{name}.sock", std::process::id()));
    let (server, link) = ApiServer::bind(&path, 1024).unwrap();
    server.with_timeouts(REQUEST, IDLE).start().unwrap();
    (path, link)
}

/// A whole request the API answers itself (a wrong method), and its answer.
fn ask(path: &Path) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /actions HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn read_all(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn half_sent_requests_get_408_and_free_their_slots() {
    let (path, _link) = serve("slow");
    let mut slow: Vec<UnixStream> = (0..MAX_CLIENTS)
        .map(|_| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Le")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    // Every slot is mid-request: a newcomer is closed unanswered...
    let t0 = Instant::now();
    assert_eq!(ask(&path), "");
    // ...until the half-sent requests time out, each with a 408 and its reason.
    for s in &mut slow {
        let a = read_all(s);
        assert!(a.starts_with("HTTP/1.1 408"), "{a}");
        assert!(a.contains("did not arrive whole within 0.3 s"), "{a}");
    }
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(ask(&path).starts_with("HTTP/1.1 405"));
}

#[test]
fn idle_connections_make_room_for_a_new_client() {
    let (path, _link) = serve("idle");
    let mut idle: Vec<UnixStream> = (0..MAX_CLIENTS)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    // Answered at once, long before the idle timeout: the longest-idle connection goes.
    let t0 = Instant::now();
    assert!(ask(&path).starts_with("HTTP/1.1 405"));
    assert!(t0.elapsed() < IDLE);
    assert_eq!(read_all(&mut idle[0]), "");
}

#[test]
fn a_client_that_keeps_its_connection_is_served_again() {
    let (path, _link) = serve("keep");
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..3 {
        s.write_all(b"GET /actions HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 405"));
        // Slower than the request timeout between requests, faster than the idle one.
        std::thread::sleep(REQUEST * 2);
    }
}
