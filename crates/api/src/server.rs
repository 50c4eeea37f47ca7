//! The API thread. It owns the listening socket and every client connection, all
//! non-blocking under one epoll: a client that sends half a request, or never reads its
//! answers, only holds its own buffers (bounded), never the thread, and only for a while:
//! a request must arrive whole within [`REQUEST_TIMEOUT`] of its first byte (else 408 and
//! the connection is closed), answers must be taken within it, and a connection with
//! nothing in flight is closed after [`IDLE_TIMEOUT`], or at once when all
//! [`MAX_CLIENTS`] slots are taken and a new client comes. Complete requests go to the
//! VMM one at a time; the VMM answers quickly (it never waits on the guest).

use crate::http::{self, Response};
use crate::routes::{self, path_label, ParsedRequest};
use model::rpc::{Answer, Outcome, Request, RequestError};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Most clients connected at once; more are accepted and closed at once.
pub const MAX_CLIENTS: usize = 64;
/// How long the API waits for the VMM's answer before telling the client it is busy.
const VMM_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request may take to arrive whole (from its first byte), and a client to take
/// its answers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection with nothing in flight stays open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Answers a client may leave untaken before its further pipelined requests wait.
const MAX_PENDING_OUT: usize = 64 * 1024;

/// Errors starting the API server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A file that is not a socket is in the way.
    #[error("API socket {0}: a file that is not a socket is in the way")]
    NotASocket(PathBuf),
    /// Binding, removing the stale socket or setting its mode failed.
    #[error("API socket {0}: {1}")]
    Socket(PathBuf, io::Error),
    /// The server's epoll or eventfd could not be made.
    #[error("API server: {0}")]
    Setup(io::Error),
    /// The thread could not be started.
    #[error("API server: cannot start its thread: {0}")]
    Spawn(io::Error),
}

/// The VMM's end: requests arrive on `requests` (with `wake` written once per request),
/// and each gets exactly one outcome on `answers`, in order.
pub struct VmmLink {
    /// Requests from clients.
    pub requests: Receiver<Request>,
    /// The outcomes, one per request.
    pub answers: Sender<Outcome>,
    /// Readable when an action waits.
    pub wake: EventFd,
}

/// Requests served, by method and path (`put_drives`), for the metrics.
#[derive(Debug, Default)]
pub struct ApiCounters {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl ApiCounters {
    fn count(&self, key: String) {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(key).or_insert(0) += 1;
    }

    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A bound API socket, ready to serve on its own thread.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    max_payload: usize,
    to_vmm: Sender<Request>,
    from_vmm: Receiver<Outcome>,
    wake: EventFd,
    counters: Arc<ApiCounters>,
    late_answers: usize,
    request_timeout: Duration,
    idle_timeout: Duration,
}

impl ApiServer {
    /// Binds `path` (a stale socket there is replaced; the socket is mode 0600).
    pub fn bind(path: &Path, max_payload: usize) -> Result<(ApiServer, VmmLink), ServerError> {
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_socket() => std::fs::remove_file(path)
                .map_err(|e| ServerError::Socket(path.to_path_buf(), e))?,
            Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
            Err(_) => {}
        }
        // SAFETY: umask only changes this process's file creation mask; the old mask is
        // put back right after the bind, so no other file is created with the narrow one
        // (the API socket is bound before any other thread starts).
        let old_mask = unsafe { libc::umask(0o077) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old_mask) };
        let listener = bound.map_err(|e| ServerError::Socket(path.to_path_buf(), e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ServerError::Socket(path.to_path_buf(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ServerError::Socket(path.to_path_buf(), e))?;
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(ServerError::Setup)?;
        let (to_vmm, requests) = mpsc::channel();
        let (answers, from_vmm) = mpsc::channel();
        let link = VmmLink {
            requests,
            answers,
            wake: wake.try_clone().map_err(ServerError::Setup)?,
        };
        Ok((
            ApiServer {
                listener,
                path: path.to_path_buf(),
                max_payload,
                to_vmm,
                from_vmm,
                wake,
                counters: Arc::default(),
                late_answers: 0,
                request_timeout: REQUEST_TIMEOUT,
                idle_timeout: IDLE_TIMEOUT,
            },
            link,
        ))
    }

    /// Other timeouts than [`REQUEST_TIMEOUT`] and [`IDLE_TIMEOUT`] (tests use short ones).
    pub fn with_timeouts(mut self, request: Duration, idle: Duration) -> Self {
        self.request_timeout = request;
        self.idle_timeout = idle;
        self
    }

    /// The request counters, shared with the metrics writer.
    pub fn counters(&self) -> Arc<ApiCounters> {
        self.counters.clone()
    }

    /// Serves on a thread named `api` until the process ends.
    pub fn start(self) -> Result<(), ServerError> {
        let epoll = Epoll::new().map_err(ServerError::Setup)?;
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                // Before the first connection is accepted.
                seccomp::confine_or_exit(seccomp::ThreadKind::Api);
                if let Err(e) = self.serve(epoll) {
                    log::error!("API server stopped: {e}");
                }
            })
            .map(|_| ())
            .map_err(ServerError::Spawn)
    }

    fn serve(mut self, epoll: Epoll) -> io::Result<()> {
        const LISTENER: u64 = u64::MAX;
        epoll.ctl(
            ControlOperation::Add,
            self.listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        log::info!("API server listening on {}", self.path.display());
        let mut clients: HashMap<u64, Client> = HashMap::new();
        let mut next_id = 0u64;
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let now = Instant::now();
            let wait_ms = clients
                .values()
                .map(|c| self.deadline(c).saturating_duration_since(now))
                .min()
                .map_or(-1, |d| i32::try_from(d.as_millis() + 1).unwrap_or(i32::MAX));
            let n = match epoll.wait(wait_ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.expire(&epoll, &mut clients);
            for ev in &events[..n] {
                let key = ev.data();
                if key == LISTENER {
                    self.accept(&epoll, &mut clients, &mut next_id);
                    continue;
                }
                let Some(client) = clients.get_mut(&key) else {
                    continue;
                };
                let keep = self.service(client, ev.event_set());
                let done = !keep || (client.closing && client.out.is_empty());
                if done {
                    let _ = epoll.ctl(
                        ControlOperation::Delete,
                        client.stream.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    clients.remove(&key);
                } else {
                    let mut set = EventSet::IN | EventSet::READ_HANG_UP;
                    if !client.out.is_empty() {
                        // Answers not taken yet: stop reading until they are.
                        set = EventSet::OUT;
                    }
                    let _ = epoll.ctl(
                        ControlOperation::Modify,
                        client.stream.as_raw_fd(),
                        EpollEvent::new(set, key),
                    );
                }
            }
        }
    }

    /// When client `c` is cut off if nothing happens: a request or answer in flight must
    /// move within the request timeout, an idle connection within the idle timeout.
    fn deadline(&self, c: &Client) -> Instant {
        if c.out.is_empty() && c.input.is_empty() {
            c.since + self.idle_timeout
        } else {
            c.since + self.request_timeout
        }
    }

    /// Ends every client past its deadline: a half-sent request gets a 408 (one try, the
    /// socket is non-blocking), an idle or non-reading one is closed.
    fn expire(&self, epoll: &Epoll, clients: &mut HashMap<u64, Client>) {
        let now = Instant::now();
        let late: Vec<u64> = clients
            .iter()
            .filter(|(_, c)| self.deadline(c) <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            if let Some(mut c) = clients.remove(&key) {
                if c.out.is_empty() && !c.input.is_empty() {
                    self.counters.count("timed_out_requests".into());
                    let secs = self.request_timeout.as_secs_f64();
                    c.out = Response::fault(
                        408,
                        format!("the request did not arrive whole within {secs} s"),
                    )
                    .to_bytes(true);
                    c.flush();
                }
                let _ = epoll.ctl(
                    ControlOperation::Delete,
                    c.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
    }

    fn accept(&self, epoll: &Epoll, clients: &mut HashMap<u64, Client>, next_id: &mut u64) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if clients.len() >= MAX_CLIENTS {
                        // The longest-idle connection with nothing in flight makes room;
                        // if every one is mid-request, the newcomer is closed (the others
                        // are cut off within the request timeout).
                        let idle = clients
                            .iter()
                            .filter(|(_, c)| c.input.is_empty() && c.out.is_empty())
                            .min_by_key(|(_, c)| c.since)
                            .map(|(k, _)| *k);
                        match idle.and_then(|k| clients.remove(&k)) {
                            Some(old) => {
                                let _ = epoll.ctl(
                                    ControlOperation::Delete,
                                    old.stream.as_raw_fd(),
                                    EpollEvent::default(),
                                );
                            }
                            None => {
                                log::warn!(
                                    "API: {MAX_CLIENTS} clients mid-request; refusing another"
                                );
                                continue; // dropped: closed
                            }
                        }
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    *next_id += 1;
                    let ev = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, *next_id);
                    if epoll
                        .ctl(ControlOperation::Add, stream.as_raw_fd(), ev)
                        .is_ok()
                    {
                        clients.insert(*next_id, Client::new(stream));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, say: the listener stays readable, so pause
                    // rather than spin.
                    log::warn!("API: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            }
        }
    }

    /// Reads, answers and writes for one client; returns false when it is to be dropped.
    fn service(&mut self, c: &mut Client, set: EventSet) -> bool {
        let was_empty = c.input.is_empty();
        if !c.out.is_empty() {
            // (The clock is not restarted by partial progress: answers queued must all be
            // taken within the request timeout, so a client reading a byte at a time
            // cannot keep its slot.)
            if !c.flush() {
                return false;
            }
            if !c.out.is_empty() {
                return true;
            }
        }
        if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            let limit = http::MAX_HEAD + self.max_payload;
            let mut chunk = [0u8; 4096];
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        c.eof = true;
                        break;
                    }
                    Ok(n) => {
                        c.input.extend_from_slice(&chunk[..n]);
                        if c.input.len() > limit {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return false,
                }
            }
        }
        if was_empty && !c.input.is_empty() {
            // A new request's first bytes: it has the request timeout to arrive whole.
            c.since = Instant::now();
        }
        // Every complete request in the buffer, in order, while the answers waiting to be
        // taken stay under MAX_PENDING_OUT (pipelined requests beyond wait their turn).
        while !c.closing && c.out.len() < MAX_PENDING_OUT {
            match http::parse_request(&c.input, self.max_payload) {
                Ok(None) => break,
                Ok(Some((req, used))) => {
                    c.input.drain(..used);
                    let close = req.close;
                    let key = format!(
                        "{}_{}",
                        req.method.as_str().to_ascii_lowercase(),
                        path_label(&req.path)
                    );
                    self.counters.count(key);
                    let answer = match routes::route(req) {
                        ParsedRequest::Answer(r) => r,
                        ParsedRequest::Vmm(action) => self.ask_vmm(action),
                    };
                    c.out.extend_from_slice(&answer.to_bytes(close));
                    c.closing = close;
                    // Answered: the next request (or the taking of this answer) is timed
                    // from now.
                    c.since = Instant::now();
                }
                Err(e) => {
                    self.counters.count("bad_requests".into());
                    let answer = Response::fault(400, e.to_string());
                    c.out.extend_from_slice(&answer.to_bytes(true));
                    c.closing = true;
                }
            }
        }
        if c.eof && !c.closing {
            // A client that closed its side: answer what it sent, then drop it.
            c.closing = true;
        }
        c.flush()
    }

    fn ask_vmm(&mut self, request: Request) -> Response {
        // Answers to requests we gave up on come first: skip them.
        while self.late_answers > 0 {
            match self.from_vmm.recv_timeout(VMM_ANSWER_TIMEOUT) {
                Ok(_) => self.late_answers -= 1,
                Err(RecvTimeoutError::Timeout) => {
                    return Response::fault(503, "the VMM is busy with an earlier request")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Response::fault(503, "the VMM is no longer running")
                }
            }
        }
        if self.to_vmm.send(request).is_err() {
            return Response::fault(503, "the VMM is no longer running");
        }
        let _ = self.wake.write(1);
        match self.from_vmm.recv_timeout(VMM_ANSWER_TIMEOUT) {
            Ok(outcome) => to_response(outcome),
            Err(RecvTimeoutError::Timeout) => {
                self.late_answers += 1;
                Response::fault(503, "the VMM did not answer in time")
            }
            Err(RecvTimeoutError::Disconnected) => {
                Response::fault(503, "the VMM is no longer running")
            }
        }
    }
}

/// The HTTP status for each of the VMM's errors: the VMM's own failures are 500s, every
/// refusal of what the client asked is a 400 (Firecracker's convention).
pub fn status_of(e: &RequestError) -> u16 {
    match e {
        RequestError::Internal(_) => 500,
        RequestError::Config(_)
        | RequestError::PreBoot(_)
        | RequestError::AlreadyStarted
        | RequestError::NotStarted(_)
        | RequestError::IdMismatch { .. }
        | RequestError::NoSuchDrive(_)
        | RequestError::Unsupported(_)
        | RequestError::Invalid(_)
        | RequestError::Start(_) => 400,
    }
}

/// The HTTP answer for a VMM outcome.
pub fn to_response(outcome: Outcome) -> Response {
    match outcome {
        Ok(Answer::Empty) => Response::no_content(),
        Ok(Answer::InstanceInfo(i)) => Response::json(&i),
        Ok(Answer::Version(v)) => Response::json(&v),
        Ok(Answer::VmConfig(c)) => Response::json(&c),
        Ok(Answer::MachineConfig(m)) => Response::json(&m),
        Ok(Answer::Balloon(b)) => Response::json(&b),
        Ok(Answer::BalloonStats(s)) => Response::json(&s),
        Ok(Answer::Mmds(v)) => Response::json(&v),
        Err(e) => Response::fault(status_of(&e), e.to_string()),
    }
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    out: Vec<u8>,
    closing: bool,
    eof: bool,
    /// When the current wait began: the connection's last answer (idle), the first byte
    /// of a request in flight, or the last progress in taking its answers.
    since: Instant,
}

impl Client {
    fn new(stream: UnixStream) -> Self {
        Client {
            stream,
            input: Vec::new(),
            out: Vec::new(),
            closing: false,
            eof: false,
            since: Instant::now(),
        }
    }

    /// Writes what it can of the pending answers; false when the client is gone.
    fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
