//! emberd's connections. Each request head is checked with `httparse` before hyper sees
//! it, because hyper answers a framing error (a bad request line, a bad header byte) with
//! a bare 400 and no body, and every error of emberd carries `{"code","message"}`. So a
//! connection serves one request (hyper with keep-alive off), the head arrives whole
//! within [`HEAD_TIMEOUT`] and [`MAX_HEAD`] bytes, and only then goes to hyper, its bytes
//! replayed ahead of the rest of the stream. The same handling serves the EC2 listener
//! (TCP, [`serve_tcp`]), whose framing errors get EC2's XML error document instead: each
//! listener says how its errors are written ([`ErrorWriter`]).

use agent_types::ErrorBody;
use axum::Router;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, UnixListener};

/// How long a client may take to send a request's head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last, head, body and answer together.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest request head.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in a request.
const MAX_HEADERS: usize = 64;

/// Writes a whole HTTP/1.1 error answer (status, code, message) for a request that never
/// reached the router: a malformed, oversized or late head.
pub type ErrorWriter = fn(u16, &str, &str) -> Vec<u8>;

/// Serves `app` on `listener` until accepting fails for good.
pub async fn serve(listener: UnixListener, app: Router) -> io::Result<()> {
    loop {
        if let Some((stream, _)) = accepted(listener.accept().await).await {
            spawn_connection(stream, app.clone(), error_response);
        }
    }
}

/// Serves `app` on a TCP `listener` (the EC2 API) with the same head checks and time
/// limits as the Unix socket; `errors` writes the answers to bad heads.
pub async fn serve_tcp(listener: TcpListener, app: Router, errors: ErrorWriter) -> io::Result<()> {
    loop {
        if let Some((stream, _)) = accepted(listener.accept().await).await {
            // Answers are small and written whole: no need to wait for more to fill a packet.
            let _ = stream.set_nodelay(true);
            spawn_connection(stream, app.clone(), errors);
        }
    }
}

/// An accepted connection; after a failure (out of descriptors, say), a pause rather than
/// a spin, then `None`: the loop goes on.
async fn accepted<T>(r: io::Result<T>) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(e) => {
            log::warn!("accept: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

fn spawn_connection<S>(stream: S, app: Router, errors: ErrorWriter)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection(stream, app, errors).await {
            log::debug!("connection: {e}");
        }
    });
}

/// What a head check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// More bytes are needed.
    Partial,
    /// A whole, well-formed head.
    Complete,
    /// Malformed: the status, the code and why.
    Bad(u16, &'static str, String),
}

/// Checks the bytes of a request head received so far.
pub fn check_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Head::Complete,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Head::Bad(
            431,
            "RequestHeaderFieldsTooLarge",
            format!("the request head is over {MAX_HEAD} bytes"),
        ),
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::Bad(
            431,
            "RequestHeaderFieldsTooLarge",
            format!("more than {MAX_HEADERS} headers"),
        ),
        Err(e) => Head::Bad(
            400,
            "MalformedRequest",
            format!("malformed HTTP request: {e}"),
        ),
    }
}

/// An error answer in emberd's form, then the connection closes.
pub fn error_response(status: u16, code: &str, message: &str) -> Vec<u8> {
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = serde_json::to_string(&ErrorBody {
        code: code.to_string(),
        message: message.to_string(),
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn connection<S>(mut stream: S, app: Router, errors: ErrorWriter) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut head = Vec::with_capacity(1024);
    let read_head = async {
        let mut chunk = [0u8; 4096];
        loop {
            match check_head(&head) {
                Head::Partial => {}
                other => return Ok::<Head, io::Error>(other),
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(Head::Partial);
            }
            head.extend_from_slice(&chunk[..n]);
        }
    };
    let verdict = match tokio::time::timeout(HEAD_TIMEOUT, read_head).await {
        Ok(r) => r?,
        Err(_) => Head::Bad(
            408,
            "RequestTimeout",
            format!(
                "the request head did not arrive within {} s",
                HEAD_TIMEOUT.as_secs()
            ),
        ),
    };
    match verdict {
        Head::Complete => {}
        // The client closed before a whole head: nothing to answer.
        Head::Partial => return Ok(()),
        Head::Bad(status, code, message) => {
            let _ = stream.write_all(&errors(status, code, &message)).await;
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
    let io = hyper_util::rt::TokioIo::new(Replay {
        head,
        at: 0,
        inner: stream,
    });
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, service);
    // A client that stalls in its body, or never takes its answer, does not hold its task
    // and descriptor for ever (emberd's answers are immediate; slow work runs behind them).
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(r) => r.map_err(io::Error::other),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection timed out",
        )),
    }
}

/// The stream with the head's bytes read again first.
struct Replay<S> {
    head: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.head.len() {
            let n = buf.remaining().min(self.head.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_judged_before_hyper() {
        assert_eq!(check_head(b"GET /v1/types HTTP/1.1\r\n"), Head::Partial);
        assert_eq!(
            check_head(b"GET /v1/types HTTP/1.1\r\nHost: x\r\n\r\n"),
            Head::Complete
        );
        let bad = [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /v1/types HTTP/1.1\r\nBad\x01Header: x\r\n\r\n",
            b"GET /v1/ty pes HTTP/1.1\r\n\r\n",
        ];
        for b in bad {
            assert!(
                matches!(check_head(b), Head::Bad(400, "MalformedRequest", _)),
                "{b:?}"
            );
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for k in 0..70 {
            many.extend_from_slice(format!("X-{k}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(check_head(&many), Head::Bad(431, _, _)));
        let big = [b'a'; MAX_HEAD + 10];
        let mut long = b"GET /".to_vec();
        long.extend_from_slice(&big);
        assert!(matches!(check_head(&long), Head::Bad(431, _, _)));
        let r = String::from_utf8(error_response(400, "MalformedRequest", "x")).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(r.ends_with("{\"code\":\"MalformedRequest\",\"message\":\"x\"}"));
    }
}
