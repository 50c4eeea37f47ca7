//! Talking to one `ember` over its API socket: HTTP/1.1, one request per connection.

use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Sends one request; returns the status and the body. `Err` for a socket that does not
/// answer within `timeout` or an answer that is not HTTP.
pub async fn call(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let fut = async {
        let mut s = UnixStream::connect(sock).await.map_err(|e| e.to_string())?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).to_string();
        let (head, rest) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no HTTP status")?;
        Ok((status, rest.to_string()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}

/// Sends a request that must succeed (2xx); the error carries ember's fault message.
pub async fn expect_ok(
    sock: &Path,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    let (status, text) = call(sock, method, path, Some(body), Duration::from_secs(30)).await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["fault_message"].as_str().map(str::to_string))
            .unwrap_or(text);
        Err(format!("{method} {path}: {status}: {msg}"))
    }
}

/// Asks the VMM to append a metrics line now; failures are only logged (the VMM may be
/// exiting, or older than metering), since a sample then reads what lines there are.
pub async fn flush_metrics(sock: &Path) {
    let body = serde_json::json!({"action_type": "FlushMetrics"});
    match call(sock, "PUT", "/actions", Some(&body), Duration::from_secs(2)).await {
        Ok((204, _)) | Ok((200, _)) => {}
        Ok((status, text)) => log::debug!("{}: FlushMetrics: {status} {text}", sock.display()),
        Err(e) => log::debug!("{}: FlushMetrics: {e}", sock.display()),
    }
}
