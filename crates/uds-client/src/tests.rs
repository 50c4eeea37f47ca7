use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

fn sock(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("uds-client-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// A server that answers each connection with `answer` after reading one request, and
/// sends back the request it read on `seen`.
fn serve(path: &Path, answer: &'static str) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let listener = UnixListener::bind(path).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Head, then as much body as Content-Length says.
            loop {
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
                    if body.len() >= len || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&buf).to_string());
            if answer.is_empty() {
                // Never answer: hold the connection.
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            s.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    rx
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Thing {
    a: u32,
}

#[tokio::test(flavor = "current_thread")]
async fn typed_get_and_put_send_and_read_json() {
    let p = sock("ok");
    let mut seen = serve(
        &p,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":5}",
    );
    let c = Client::new(&p, Duration::from_secs(5));
    let t: Thing = c.get("/thing").await.unwrap();
    assert_eq!(t, Thing { a: 5 });
    let req = seen.recv().await.unwrap();
    assert!(req.starts_with("GET /thing HTTP/1.1\r\n"), "{req}");
    c.put("/thing", &Thing { a: 9 }).await.unwrap();
    let req = seen.recv().await.unwrap();
    assert!(req.starts_with("PUT /thing HTTP/1.1\r\n"), "{req}");
    assert!(
        req.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{req}"
    );
    assert!(req.ends_with("\r\n\r\n{\"a\":9}"), "{req}");
    // A body that is not what the caller expects names the path and the field.
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Other {
        b: u32,
    }
    let e = c.get::<Other>("/thing").await.unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e}");
    assert!(
        e.to_string().contains("GET /thing") && e.to_string().contains("`b`"),
        "{e}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn error_answers_carry_the_servers_message_in_either_shape() {
    let p = sock("fault");
    let _seen = serve(
        &p,
        "HTTP/1.1 400 Bad Request\r\nContent-Length: 29\r\n\r\n{\"fault_message\":\"bad drive\"}",
    );
    let c = Client::new(&p, Duration::from_secs(5));
    let e = c.put("/drives/x", &Thing { a: 1 }).await.unwrap_err();
    match &e {
        Error::Status {
            status,
            code,
            message,
        } => {
            assert_eq!(*status, StatusCode::BAD_REQUEST);
            assert_eq!(code, &None);
            assert_eq!(message, "bad drive");
        }
        other => panic!("{other}"),
    }
    let p = sock("code");
    let _seen = serve(
        &p,
        "HTTP/1.1 409 Conflict\r\nContent-Length: 56\r\n\r\n{\"code\":\"IncorrectInstanceState\",\"message\":\"is stopped\"}",
    );
    let e = Client::new(&p, Duration::from_secs(5))
        .post::<(), Thing>("/v1/instances/i-1/reboot", None)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "IncorrectInstanceState: is stopped");
}

#[tokio::test(flavor = "current_thread")]
async fn no_server_and_a_silent_server_are_errors_of_their_own() {
    let p = sock("absent");
    let c = Client::new(&p, Duration::from_secs(5));
    assert!(matches!(
        c.get::<Thing>("/").await,
        Err(Error::Connect { .. })
    ));
    assert!(!c.answers().await);
    let p = sock("silent");
    let _seen = serve(&p, "");
    let c = Client::new(&p, Duration::from_millis(200));
    let e = c.get::<Thing>("/slow").await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(e.to_string(), "GET /slow: no answer within 200 ms");
}

#[tokio::test(flavor = "current_thread")]
async fn an_empty_2xx_answer_is_fine_where_no_body_is_read() {
    let p = sock("empty");
    let _seen = serve(&p, "HTTP/1.1 204 No Content\r\n\r\n");
    let c = Client::new(&p, Duration::from_secs(5));
    c.delete("/v1/images/img-1").await.unwrap();
    c.put("/actions", &Thing { a: 1 }).await.unwrap();
    assert!(c.answers().await);
}

#[tokio::test]
async fn a_verified_socket_is_reached_without_links_and_only_if_its_owners() {
    let dir = std::env::temp_dir().join(format!("uds-client-{}-jail", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root/run")).unwrap();
    let real = dir.join("root/run/api.sock");
    let _seen = serve(&real, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    let c = Client::verified(&dir, "root/run/api.sock", me, Duration::from_secs(5));
    assert!(c.answers().await, "the checked socket did not answer");
    // Another owner than the one expected: refused before connecting.
    let other = Client::verified(&dir, "root/run/api.sock", me + 1, Duration::from_secs(5));
    let e = other
        .send(Method::GET, "/", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a socket of uid"), "{e}");
    // A link in its place (the socket elsewhere), or a linked directory: refused.
    let elsewhere = dir.join("elsewhere.sock");
    std::fs::rename(&real, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &real).unwrap();
    assert!(!c.answers().await, "a link to another socket was followed");
    std::fs::remove_file(&real).unwrap();
    std::fs::rename(&elsewhere, &real).unwrap();
    std::fs::rename(dir.join("root/run"), dir.join("root/run2")).unwrap();
    std::os::unix::fs::symlink(dir.join("root/run2"), dir.join("root/run")).unwrap();
    assert!(!c.answers().await, "a linked directory was followed");
    let _ = std::fs::remove_dir_all(&dir);
}
