//! One HTTP request in, one response out: Firecracker's MMDS behaviour for the guest.
//!
//! Framing ([`parse_request`]) is separate from answering ([`respond`]) so the TCP side
//! can feed bytes as they arrive and skip request bodies without buffering them.

use crate::store::MmdsStore;
use crate::token::TokenAuthority;
use serde_json::Value;
use std::time::Instant;
use thiserror::Error;

/// The largest request head (request line and headers) accepted, in bytes.
pub const HEAD_LIMIT: usize = 4096;
/// The only path a `PUT` may name: it issues a session token.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// Headers a request may have at most.
const MAX_HEADERS: usize = 32;

/// How the guest must authenticate. Version 1 needs nothing (a token, if sent, is
/// ignored); version 2 needs a valid session token on every `GET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// Plain request/response; tokens may be fetched but are not required.
    #[default]
    V1,
    /// Session-oriented: `GET` needs `X-metadata-token`.
    V2,
}

/// Why a request head could not be framed. Each one is answered and the connection closed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HttpError {
    /// The head did not end within [`HEAD_LIMIT`] bytes.
    #[error("Request head larger than {HEAD_LIMIT} bytes.")]
    HeadTooLarge,
    /// httparse refused the head.
    #[error("Malformed request: {0}.")]
    Malformed(String),
    /// `Content-Length` is not a number, or two of them disagree.
    #[error("Invalid Content-Length header.")]
    BadContentLength,
    /// `Transfer-Encoding` bodies are not supported.
    #[error("Transfer-Encoding is not supported.")]
    TransferEncoding,
    /// The request target has no absolute path.
    #[error("Invalid URI.")]
    InvalidUri,
}

impl HttpError {
    /// The status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::TransferEncoding => 501,
            _ => 400,
        }
    }

    /// The response for this error; it closes the connection.
    pub fn response(&self) -> Response {
        let mut r = Response::text(self.status(), self.to_string());
        r.close = true;
        r
    }
}

/// A framed request: what answering it needs, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method as sent.
    pub method: String,
    /// The absolute path (an absolute-form target's scheme and host removed, the query dropped).
    pub path: String,
    /// `Accept: application/json` was sent: answer JSON, not the IMDS format.
    pub accept_json: bool,
    /// `X-metadata-token` or `X-aws-ec2-metadata-token`.
    pub token: Option<String>,
    /// `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds`, unparsed.
    pub ttl: Option<String>,
    /// `X-Forwarded-For` was present.
    pub forwarded_for: bool,
    /// The connection stays open after the response.
    pub keep_alive: bool,
    /// `Content-Length` of the body (to be skipped), 0 if none.
    pub body_len: u64,
}

/// The outcome of framing the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head has not ended yet (and is within the limit).
    Incomplete,
    /// A whole head: the request and the head's length in bytes (the body follows it).
    Complete {
        /// The framed request.
        request: Request,
        /// Bytes of `buf` the head took.
        head_len: usize,
    },
    /// Not a request we can frame.
    Invalid(HttpError),
}

/// Frames one request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= HEAD_LIMIT {
                Parsed::Invalid(HttpError::HeadTooLarge)
            } else {
                Parsed::Incomplete
            };
        }
        Err(e) => return Parsed::Invalid(HttpError::Malformed(e.to_string())),
    };
    if head_len > HEAD_LIMIT {
        return Parsed::Invalid(HttpError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Invalid(HttpError::Malformed("incomplete request line".into()));
    };
    let Some(path) = absolute_path(target) else {
        return Parsed::Invalid(HttpError::InvalidUri);
    };
    let mut request = Request {
        method: method.to_string(),
        path,
        accept_json: false,
        token: None,
        ttl: None,
        forwarded_for: false,
        keep_alive: minor == 1,
        body_len: 0,
    };
    let mut content_length: Option<u64> = None;
    for h in req.headers.iter() {
        let name = h.name;
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let Ok(n) = value.parse::<u64>() else {
                return Parsed::Invalid(HttpError::BadContentLength);
            };
            if content_length.is_some_and(|m| m != n) {
                return Parsed::Invalid(HttpError::BadContentLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Invalid(HttpError::TransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            for opt in value.split(',').map(str::trim) {
                if opt.eq_ignore_ascii_case("close") {
                    request.keep_alive = false;
                } else if opt.eq_ignore_ascii_case("keep-alive") && minor == 0 {
                    request.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("accept") {
            request.accept_json |= value.split(',').any(|m| {
                m.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
        } else if name.eq_ignore_ascii_case("x-metadata-token")
            || name.eq_ignore_ascii_case("x-aws-ec2-metadata-token")
        {
            request.token.get_or_insert_with(|| value.to_string());
        } else if name.eq_ignore_ascii_case("x-metadata-token-ttl-seconds")
            || name.eq_ignore_ascii_case("x-aws-ec2-metadata-token-ttl-seconds")
        {
            request.ttl.get_or_insert_with(|| value.to_string());
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            request.forwarded_for = true;
        }
    }
    request.body_len = content_length.unwrap_or(0);
    Parsed::Complete { request, head_len }
}

/// The absolute path of an origin-form (`/a/b`) or absolute-form (`http://host/a/b`)
/// target, without its query or fragment. `None` when there is none.
fn absolute_path(target: &str) -> Option<String> {
    let rest = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..7).map(str::to_ascii_lowercase);
        if lower.as_deref() != Some("http://") {
            return None;
        }
        let after = target.get(7..)?;
        &after[after.find('/')?..]
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let path = &rest[..end];
    (!path.is_empty()).then(|| path.to_string())
}

/// Media type of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `text/plain`: IMDS listings and strings, tokens, errors.
    Text,
    /// `application/json`.
    Json,
}

/// One response, serialised with [`Response::into_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body's media type.
    pub content_type: ContentType,
    /// The body.
    pub body: Vec<u8>,
    /// Send `Allow: GET, PUT` (a 405).
    pub allow: bool,
    /// Close the connection after this response.
    pub close: bool,
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: ContentType::Text,
            body: body.into().into_bytes(),
            allow: false,
            close: false,
        }
    }

    /// The body as text (lossy), for tests and logs.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Status line, headers and body.
    pub fn into_bytes(self) -> Vec<u8> {
        let ct = match self.content_type {
            ContentType::Text => "text/plain",
            ContentType::Json => "application/json",
        };
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: Ember MMDS\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, PUT\r\n");
        }
        if self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = Vec::with_capacity(head.len() + self.body.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// The reason phrase for the statuses this module produces.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// Answers `req` from `store`; tokens are issued from and checked against `tokens` at `now`.
/// The response's `close` follows the request's keep-alive.
pub fn respond(
    req: &Request,
    store: &MmdsStore,
    tokens: &mut TokenAuthority,
    version: Version,
    now: Instant,
) -> Response {
    let mut r = match req.method.as_str() {
        "GET" => get(req, store, tokens, version, now),
        "PUT" => put(req, tokens, now),
        _ => {
            let mut r = Response::text(405, "Not allowed HTTP method.");
            r.allow = true;
            r
        }
    };
    r.close |= !req.keep_alive;
    r
}

fn get(
    req: &Request,
    store: &MmdsStore,
    tokens: &TokenAuthority,
    version: Version,
    now: Instant,
) -> Response {
    if version == Version::V2 {
        match &req.token {
            None => {
                return Response::text(
                    401,
                    "No MMDS token provided. Use `X-metadata-token` header to specify the session token.",
                )
            }
            Some(t) if !tokens.is_valid(t, now) => {
                return Response::text(401, "MMDS token not valid.")
            }
            Some(_) => {}
        }
    }
    let pointer = json_pointer(&req.path);
    let pointer = pointer.strip_suffix('/').unwrap_or(&pointer);
    let Some(value) = store.get().pointer(pointer) else {
        return Response::text(404, format!("Resource not found: {}.", req.path));
    };
    if req.accept_json {
        let mut r = Response::text(200, value.to_string());
        r.content_type = ContentType::Json;
        return r;
    }
    match imds_format(value) {
        Some(text) => Response::text(200, text),
        None => Response::text(
            501,
            "Cannot retrieve value. The value has an unsupported type.",
        ),
    }
}

fn put(req: &Request, tokens: &mut TokenAuthority, now: Instant) -> Response {
    if req.forwarded_for {
        return Response::text(400, "Unsupported header name. Key: X-Forwarded-For");
    }
    if json_pointer(&req.path) != TOKEN_PATH {
        return Response::text(404, format!("Resource not found: {}.", req.path));
    }
    let Some(ttl) = &req.ttl else {
        return Response::text(
            400,
            "Token time to live value not found. Use `X-metadata-token-ttl-seconds` header to specify the token's lifetime.",
        );
    };
    match tokens.issue_from_header(ttl, now) {
        Ok(token) => Response::text(200, token),
        Err(e @ crate::token::TokenError::InvalidTtl(_)) => Response::text(400, e.to_string()),
        Err(e) => {
            log::error!("mmds: {e}");
            Response::text(500, e.to_string())
        }
    }
}

/// The path with runs of `/` collapsed to one: a JSON pointer into the store.
fn json_pointer(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// IMDS text: an object lists its keys one a line (an object-valued key ends in `/`), a
/// string is itself; anything else cannot be shown (`None`).
fn imds_format(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect();
            Some(keys.join("\n"))
        }
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn store() -> MmdsStore {
        let mut s = MmdsStore::default();
        s.put(json!({
            "latest": {"meta-data": {"ami-id": "ami-1", "reservation-id": "r-2",
                                     "network": {"mac": "x"}}},
            "age": 43, "list": ["a", "b"], "flag": true
        }))
        .unwrap();
        s
    }

    fn req(text: &str) -> Request {
        match parse_request(text.as_bytes()) {
            Parsed::Complete { request, .. } => request,
            other => panic!("{other:?}"),
        }
    }

    fn ask(text: &str, ta: &mut TokenAuthority, v: Version, now: Instant) -> Response {
        respond(&req(text), &store(), ta, v, now)
    }

    #[test]
    fn get_imds_format() {
        let now = Instant::now();
        let mut ta = TokenAuthority::default();
        let r = ask(
            "GET /latest/meta-data HTTP/1.1\r\n\r\n",
            &mut ta,
            Version::V1,
            now,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, ContentType::Text);
        assert_eq!(r.body_text(), "ami-id\nnetwork/\nreservation-id");
        let r = ask(
            "GET /latest/meta-data/ HTTP/1.1\r\n\r\n",
            &mut ta,
            Version::V1,
            now,
        );
        assert_eq!(r.body_text(), "ami-id\nnetwork/\nreservation-id");
        let r = ask(
            "GET //latest//meta-data/ami-id HTTP/1.1\r\nAccept: */*\r\n\r\n",
            &mut ta,
            Version::V1,
            now,
        );
        assert_eq!((r.status, r.body_text().as_str()), (200, "ami-1"));
        let r = ask("GET / HTTP/1.1\r\n\r\n", &mut ta, Version::V1, now);
        assert_eq!(r.body_text(), "age\nflag\nlatest/\nlist");
        let r = ask("GET /list/1 HTTP/1.1\r\n\r\n", &mut ta, Version::V1, now);
        assert_eq!(r.body_text(), "b");
        for p in ["/age", "/list", "/flag"] {
            let r = ask(
                &format!("GET {p} HTTP/1.1\r\n\r\n"),
                &mut ta,
                Version::V1,
                now,
            );
            assert_eq!(r.status, 501, "{p}");
            assert_eq!(
                r.body_text(),
                "Cannot retrieve value. The value has an unsupported type."
            );
        }
    }

    #[test]
    fn get_json_format_and_404() {
        let now = Instant::now();
        let mut ta = TokenAuthority::default();
        let j = "Accept: application/json\r\n";
        let r = ask(
            &format!("GET /latest/meta-data/ami-id HTTP/1.1\r\n{j}\r\n"),
            &mut ta,
            Version::V1,
            now,
        );
        assert_eq!((r.status, r.body_text().as_str()), (200, "\"ami-1\""));
        assert_eq!(r.content_type, ContentType::Json);
        let r = ask(
            &format!("GET http://169.254.169.254/age?x=1 HTTP/1.1\r\n{j}\r\n"),
            &mut ta,
            Version::V1,
            now,
        );
        assert_eq!(r.body_text(), "43");
        let r = ask(
            &format!("GET / HTTP/1.1\r\n{j}\r\n"),
            &mut ta,
            Version::V1,
            now,
        );
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(&v, store().get());
        let r = ask("GET /nope/x HTTP/1.1\r\n\r\n", &mut ta, Version::V1, now);
        assert_eq!(
            (r.status, r.body_text().as_str()),
            (404, "Resource not found: /nope/x.")
        );
    }

    #[test]
    fn v2_token_flow() {
        let now = Instant::now();
        let mut ta = TokenAuthority::default();
        let r = ask(
            "GET /age HTTP/1.1\r\nAccept: application/json\r\n\r\n",
            &mut ta,
            Version::V2,
            now,
        );
        assert_eq!(r.status, 401);
        assert!(r.body_text().starts_with("No MMDS token provided"));
        let r = ask("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\nContent-Length: 3\r\n\r\n", &mut ta, Version::V2, now);
        assert_eq!((r.status, r.content_type), (200, ContentType::Text));
        let token = r.body_text();
        let get = |tok: &str, ta: &mut TokenAuthority, at: Instant| {
            ask(
                &format!(
                    "GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {tok}\r\n\r\n"
                ),
                ta,
                Version::V2,
                at,
            )
        };
        let r = get(&token, &mut ta, now);
        assert_eq!((r.status, r.body_text().as_str()), (200, "ami-1"));
        let r = ask(&format!("GET /age HTTP/1.1\r\nx-aws-ec2-metadata-token: {token}\r\nAccept: application/json\r\n\r\n"), &mut ta, Version::V2, now);
        assert_eq!(r.status, 200);
        let r = get("bogus", &mut ta, now);
        assert_eq!(
            (r.status, r.body_text().as_str()),
            (401, "MMDS token not valid.")
        );
        let r = get(&token, &mut ta, now + Duration::from_secs(5));
        assert_eq!(r.status, 401, "expired");
        // Version 1 ignores a bad token, and also hands tokens out.
        let r = get("bogus", &mut ta, now);
        assert_eq!(r.status, 401);
        let r = ask(
            "GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: bogus\r\n\r\n",
            &mut ta,
            Version::V1,
            now,
        );
        assert_eq!(r.status, 200);
        let r = ask(
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n",
            &mut ta,
            Version::V1,
            now,
        );
        assert_eq!(r.status, 200);
    }

    #[test]
    fn put_token_errors() {
        let now = Instant::now();
        let mut ta = TokenAuthority::default();
        let v = Version::V2;
        let r = ask("PUT /latest/api/token HTTP/1.1\r\n\r\n", &mut ta, v, now);
        assert_eq!(r.status, 400);
        assert!(r
            .body_text()
            .starts_with("Token time to live value not found"));
        for bad in ["0", "21601", "abc", ""] {
            let r = ask(
                &format!(
                    "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: {bad}\r\n\r\n"
                ),
                &mut ta,
                v,
                now,
            );
            assert_eq!(r.status, 400, "{bad}");
            assert!(r
                .body_text()
                .starts_with("Invalid time to live value provided for token"));
        }
        let r = ask("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", &mut ta, v, now);
        assert_eq!(r.status, 400);
        assert!(r.body_text().contains("X-Forwarded-For"));
        let r = ask(
            "PUT /latest/api/toke HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
            &mut ta,
            v,
            now,
        );
        assert_eq!(
            (r.status, r.body_text().as_str()),
            (404, "Resource not found: /latest/api/toke.")
        );
        assert!(ta.is_empty());
    }

    #[test]
    fn other_methods_405() {
        let now = Instant::now();
        let mut ta = TokenAuthority::default();
        for m in ["POST", "PATCH", "DELETE", "HEAD"] {
            for v in [Version::V1, Version::V2] {
                let r = ask(&format!("{m} / HTTP/1.1\r\n\r\n"), &mut ta, v, now);
                assert_eq!((r.status, r.allow), (405, true));
                let bytes = String::from_utf8(r.into_bytes()).unwrap();
                assert!(bytes.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
                assert!(bytes.contains("\r\nAllow: GET, PUT\r\n"));
            }
        }
    }

    #[test]
    fn framing() {
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Incomplete
        );
        assert_eq!(parse_request(b""), Parsed::Incomplete);
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(HEAD_LIMIT));
        assert_eq!(
            parse_request(big.as_bytes()),
            Parsed::Invalid(HttpError::HeadTooLarge)
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(HEAD_LIMIT));
        assert_eq!(
            parse_request(big.as_bytes()),
            Parsed::Invalid(HttpError::HeadTooLarge)
        );
        for bad in [
            &b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
            b"GET  HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse_request(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        assert_eq!(
            parse_request(b"GET * HTTP/1.1\r\n\r\n"),
            Parsed::Invalid(HttpError::InvalidUri)
        );
        assert_eq!(
            parse_request(b"GET http://h HTTP/1.1\r\n\r\n"),
            Parsed::Invalid(HttpError::InvalidUri)
        );
        assert_eq!(
            parse_request(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Parsed::Invalid(HttpError::BadContentLength)
        );
        assert_eq!(
            parse_request(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Parsed::Invalid(HttpError::BadContentLength)
        );
        let e = HttpError::TransferEncoding;
        assert_eq!(
            parse_request(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Invalid(e)
        );
        let r = HttpError::HeadTooLarge.response();
        assert_eq!((r.status, r.close), (400, true));
        // Keep-alive rules.
        assert!(req("GET / HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!req("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        let r = req("PUT /x HTTP/1.1\r\nContent-Length: 12\r\n\r\nbody");
        assert_eq!(r.body_len, 12);
        match parse_request(b"GET / HTTP/1.1\r\n\r\nGET /") {
            Parsed::Complete { head_len, .. } => assert_eq!(head_len, 18),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn serialised_response() {
        let mut r = Response::text(200, "hi");
        r.close = true;
        assert_eq!(
            String::from_utf8(r.into_bytes()).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: Ember MMDS\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
    }
}
