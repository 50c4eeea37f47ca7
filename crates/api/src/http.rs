//! HTTP/1.1 requests and responses, as much as the API needs: one request at a time per
//! connection, bodies by `Content-Length` (no chunked encoding), keep-alive by default.

use thiserror::Error;

/// Largest request head (request line and headers) we accept.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 32;
/// Firecracker's default limit for a request body (`--http-api-max-payload-size`).
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// The request methods the API serves; others are refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// PUT
    Put,
    /// PATCH
    Patch,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, without a query string.
    pub path: String,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
    /// Whether the client asked to close the connection after the answer.
    pub close: bool,
}

/// Why bytes from a client are not a request we can serve. Each answer is a 400 with
/// the message, after which the connection is closed (its framing can't be trusted).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HttpError {
    /// The head is not HTTP/1.x.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// The head is larger than [`MAX_HEAD`].
    #[error("request headers are larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] headers.
    #[error("more than {MAX_HEADERS} request headers")]
    TooManyHeaders,
    /// A method the API does not use.
    #[error("unsupported HTTP method {0}")]
    Method(String),
    /// HTTP/1.0 and older, or 2.
    #[error("unsupported HTTP version: only HTTP/1.1 is served")]
    Version,
    /// `Transfer-Encoding` (chunked bodies are not served).
    #[error("Transfer-Encoding is not supported: send a Content-Length")]
    TransferEncoding,
    /// `Content-Length` is not a number, or appears twice with different values.
    #[error("invalid Content-Length header")]
    ContentLength,
    /// The body is over the limit.
    #[error(
        "request payload with size {size} is larger than the limit of {limit} allowed by server"
    )]
    PayloadTooLarge {
        /// Content-Length of the request.
        size: u64,
        /// The server's limit.
        limit: usize,
    },
}

/// Tries to take one request from the front of `buf`. `Ok(None)`: not complete yet (read
/// more). `Ok(Some((request, consumed)))`: a request and how many bytes it used.
pub fn parse_request(
    buf: &[u8],
    max_payload: usize,
) -> Result<Option<(Request, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    if req.version != Some(1) {
        return Err(HttpError::Version);
    }
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        other => return Err(HttpError::Method(printable(other))),
    };
    let target = req.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    let mut content_length: Option<u64> = None;
    let mut close = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(HttpError::ContentLength)?;
            if content_length.is_some_and(|old| old != v) {
                return Err(HttpError::ContentLength);
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let len = content_length.unwrap_or(0);
    if len > max_payload as u64 {
        return Err(HttpError::PayloadTooLarge {
            size: len,
            limit: max_payload,
        });
    }
    let len = len as usize;
    if buf.len() - head_len < len {
        return Ok(None);
    }
    let body = buf[head_len..head_len + len].to_vec();
    Ok(Some((
        Request {
            method,
            path,
            body,
            close,
        },
        head_len + len,
    )))
}

/// An answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body, or empty (204).
    pub body: String,
}

impl Response {
    /// `204 No Content`.
    pub fn no_content() -> Self {
        Response {
            status: 204,
            body: String::new(),
        }
    }

    /// `200 OK` with a JSON body (a 500 if the value cannot be written as JSON).
    pub fn json<T: serde::Serialize>(value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Response { status: 200, body },
            Err(e) => Response::fault(500, format!("cannot encode the answer: {e}")),
        }
    }

    /// An error with Firecracker's `{"fault_message": ...}` body.
    pub fn fault(status: u16, message: impl Into<String>) -> Self {
        let fault = model::Fault {
            fault_message: message.into(),
        };
        Response {
            status,
            // A struct of one string always serialises.
            body: serde_json::to_string(&fault).unwrap_or_default(),
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self, close: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Payload Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Unknown",
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: Ember API\r\n",
            self.status, reason
        );
        if close {
            out.push_str("Connection: close\r\n");
        }
        if self.status == 204 {
            out.push_str("\r\n");
        } else {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                self.body.len(),
                self.body
            ));
        }
        out.into_bytes()
    }
}

/// Escapes control characters so client input never breaks a log line or a message.
pub fn printable(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Result<Option<(Request, usize)>, HttpError> {
        parse_request(s.as_bytes(), DEFAULT_MAX_PAYLOAD)
    }

    #[test]
    fn complete_requests_with_and_without_bodies() {
        let (r, n) = one("GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert_eq!(
            (r.method, r.path.as_str(), r.body.len(), n),
            (Method::Get, "/", 0, 27)
        );
        let s = "PUT /drives/a?x=1 HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}GET";
        let (r, n) = one(s).unwrap().unwrap();
        assert_eq!((r.method, r.path.as_str()), (Method::Put, "/drives/a"));
        assert_eq!((r.body, r.close, n), (b"{}".to_vec(), true, s.len() - 3));
    }

    #[test]
    fn partial_requests_wait_for_more() {
        assert_eq!(one("GET / HTTP/1.1\r\nHost"), Ok(None));
        assert_eq!(
            one("PUT / HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}"),
            Ok(None)
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(matches!(
            one("garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert_eq!(
            one("DELETE / HTTP/1.1\r\n\r\n"),
            Err(HttpError::Method("DELETE".into()))
        );
        assert_eq!(one("GET / HTTP/1.0\r\n\r\n"), Err(HttpError::Version));
        assert_eq!(
            one("PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(HttpError::ContentLength)
        );
        assert_eq!(
            one("PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HttpError::ContentLength)
        );
        assert_eq!(
            one("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::TransferEncoding)
        );
        assert_eq!(
            one("PUT / HTTP/1.1\r\nContent-Length: 51201\r\n\r\n"),
            Err(HttpError::PayloadTooLarge {
                size: 51201,
                limit: 51200
            })
        );
        let flood: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            one(&format!("GET / HTTP/1.1\r\n{flood}\r\n")),
            Err(HttpError::TooManyHeaders)
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD + 1));
        assert_eq!(one(&long), Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn responses_have_length_and_fault_messages() {
        let r = Response::fault(400, "bad \"thing\"").to_bytes(false);
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(s.ends_with(r#"{"fault_message":"bad \"thing\""}"#));
        let s = String::from_utf8(Response::no_content().to_bytes(true)).unwrap();
        assert!(s.starts_with("HTTP/1.1 204 No Content\r\n") && s.contains("Connection: close"));
    }
}
