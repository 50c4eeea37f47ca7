//! One HTTP/1.1 client over a Unix socket, on hyper: one request per connection (both
//! ember's API and emberd's serve many clients; a connection per request keeps neither
//! side holding idle state). Typed JSON helpers: [`Client::get`], [`Client::put`],
//! [`Client::post`], [`Client::delete`].
//!
//! An error answer's message is read from either body shape the project's servers use:
//! ember's `{"fault_message"}` (Firecracker's) and emberd's `{"code", "message"}`.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What can go wrong with one request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be connected (absent, refused, no permission).
    #[error("cannot connect to {}: {source}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No whole answer within the client's timeout.
    #[error("{method} {path}: no answer within {} ms", timeout.as_millis())]
    Timeout {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The limit.
        timeout: Duration,
    },
    /// The connection broke or the answer was not HTTP.
    #[error("{method} {path}: {source}")]
    Http {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The server answered with a status that is not 2xx.
    #[error("{}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Status {
        /// The status.
        status: StatusCode,
        /// The error code, where the body has one (emberd's `code`).
        code: Option<String>,
        /// The server's message (`fault_message` or `message`), or the body itself.
        message: String,
    },
    /// A 2xx answer whose body is not the JSON expected.
    #[error("{method} {path}: the answer is not the JSON expected: {source}")]
    Decode {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// serde's error, with the field at fault.
        source: serde_json::Error,
    },
    /// A request body that cannot be written as JSON (a map with non-string keys).
    #[error("{method} {path}: the request body cannot be written as JSON: {source}")]
    Encode {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// serde's error.
        source: serde_json::Error,
    },
    /// The request could not be built (a path that is not a valid URI).
    #[error("{method} {path}: not a valid request: {source}")]
    Request {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// http's error.
        source: hyper::http::Error,
    },
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its body.
    pub body: Bytes,
}

/// A client of the server on one Unix socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
    /// Where the socket must be, found without following links, and whose it must be.
    verified: Option<Verified>,
}

/// A socket inside a directory tree that someone else may write (a jail): `rel` below
/// `dir` is opened component by component without following a link, and must be a socket
/// owned by `uid`, or the request is refused.
#[derive(Debug, Clone)]
struct Verified {
    dir: PathBuf,
    rel: PathBuf,
    uid: u32,
}

impl Verified {
    /// An `O_PATH` descriptor of the socket, checked.
    fn open(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::ffi::CString;
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        let cstr = |b: &[u8]| {
            CString::new(b).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
        };
        let open = |at: libc::c_int, name: &CString, flags: libc::c_int| {
            // SAFETY: a valid C string; the descriptor returned is owned below.
            let fd = unsafe {
                libc::openat(
                    at,
                    name.as_ptr(),
                    libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC | flags,
                )
            };
            if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                // SAFETY: `fd` was just opened and nothing else owns it.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        };
        let mut cur = open(
            libc::AT_FDCWD,
            &cstr(self.dir.as_os_str().as_bytes())?,
            libc::O_DIRECTORY,
        )?;
        let parts: Vec<_> = self.rel.components().collect();
        for (k, c) in parts.iter().enumerate() {
            let last = k + 1 == parts.len();
            let flags = if last { 0 } else { libc::O_DIRECTORY };
            cur = open(cur.as_raw_fd(), &cstr(c.as_os_str().as_bytes())?, flags)?;
        }
        // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes only the struct we pass, for a descriptor we own.
        if unsafe { libc::fstat(cur.as_raw_fd(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_uid != self.uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "not a socket of uid {} (mode {:o}, uid {})",
                    self.uid, st.st_mode, st.st_uid
                ),
            ));
        }
        Ok(cur)
    }
}

/// The error bodies this client understands (any field may be absent).
#[derive(serde::Deserialize)]
struct ErrorFields {
    fault_message: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

impl Client {
    /// A client of the server on `socket`; every request (connect to last byte) must
    /// finish within `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Client {
        Client {
            socket: socket.into(),
            timeout,
            verified: None,
        }
    }

    /// A client of the socket at `rel` below `dir`, where `dir` is trusted and what is
    /// below it may not be (a jail whose user owns its directories): the path is opened
    /// without following any link below `dir`, the socket must belong to `uid`, and the
    /// connection is made through that descriptor, so a link swapped in cannot redirect it.
    pub fn verified(
        dir: impl Into<PathBuf>,
        rel: impl Into<PathBuf>,
        uid: u32,
        timeout: Duration,
    ) -> Client {
        let (dir, rel) = (dir.into(), rel.into());
        Client {
            socket: dir.join(&rel),
            timeout,
            verified: Some(Verified { dir, rel, uid }),
        }
    }

    /// The same client with another timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Error> {
        let timed_out = || Error::Timeout {
            method: method.clone(),
            path: path.to_string(),
            timeout: self.timeout,
        };
        tokio::time::timeout(self.timeout, self.exchange(method.clone(), path, body))
            .await
            .map_err(|_| timed_out())?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Error> {
        let http = |source| Error::Http {
            method: method.clone(),
            path: path.to_string(),
            source,
        };
        let connect_err = |source| Error::Connect {
            socket: self.socket.clone(),
            source,
        };
        let stream = match &self.verified {
            None => tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(connect_err)?,
            Some(v) => {
                let fd = v.open().map_err(connect_err)?;
                // Through the descriptor: what is connected is the socket just checked.
                let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
                let s = tokio::net::UnixStream::connect(&via)
                    .await
                    .map_err(connect_err)?;
                drop(fd);
                s
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        // The connection is driven beside the request; it ends with the answer (the
        // request says `Connection: close`), or when the task is dropped on a timeout.
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONNECTION, "close")
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| Error::Request {
                method: method.clone(),
                path: path.to_string(),
                source,
            })?;
        let result = async {
            let resp = sender.send_request(req).await.map_err(http)?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
            Ok(Answer { status, body })
        }
        .await;
        driver.abort();
        result
    }

    /// Sends a request that must succeed (2xx); an error answer becomes [`Error::Status`]
    /// with the server's message.
    pub async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Bytes, Error> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|source| Error::Encode {
                method: method.clone(),
                path: path.to_string(),
                source,
            })?;
        let answer = self.send(method, path, body).await?;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(status_error(&answer))
        }
    }

    async fn call_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let bytes = self.call(method.clone(), path, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            method,
            path: path.to_string(),
            source,
        })
    }

    /// `GET path`, its answer read as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call_json(Method::GET, path, None::<&()>).await
    }

    /// `PUT path` with `body`; the answer's body is not read (ember answers 204).
    pub async fn put<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<(), Error> {
        self.call(Method::PUT, path, Some(body)).await.map(drop)
    }

    /// `PATCH path` with `body`; the answer's body is not read (ember answers 204).
    pub async fn patch<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<(), Error> {
        self.call(Method::PATCH, path, Some(body)).await.map(drop)
    }

    /// `POST path` with `body` (none: an empty body), its answer read as `T`.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        self.call_json(Method::POST, path, body).await
    }

    /// `DELETE path`; the answer's body is not read.
    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        self.call(Method::DELETE, path, None::<&()>).await.map(drop)
    }

    /// Whether the server answers `GET /` at all (any status): it is up.
    pub async fn answers(&self) -> bool {
        self.send(Method::GET, "/", None).await.is_ok()
    }
}

/// The error an answer that is not 2xx stands for.
fn status_error(answer: &Answer) -> Error {
    let text = String::from_utf8_lossy(&answer.body).trim().to_string();
    let (code, message) = match serde_json::from_slice::<ErrorFields>(&answer.body) {
        Ok(f) => match (f.fault_message, f.code, f.message) {
            (Some(m), code, _) => (code, m),
            (None, code, Some(m)) => (code, m),
            (None, code, None) => (code, text),
        },
        Err(_) => (None, text),
    };
    let message = if message.is_empty() {
        format!("HTTP {}", answer.status)
    } else {
        message
    };
    Error::Status {
        status: answer.status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests;
