//! The per-VM API: Firecracker's v1 API, HTTP/1.1 with JSON bodies on a Unix socket.
//!
//! - [`http`]: parsing one request from a connection's bytes, formatting a response.
//! - [`routes`]: which method and path mean which [`routes::Action`].
//! - [`server`]: the API thread: accepts clients, reads requests without ever blocking on
//!   one, hands each action to the VMM over a channel (plus an eventfd that wakes the
//!   VMM's event loop) and writes back the VMM's answer.
//!
//! This crate knows HTTP and the API's shape; what an action does is the VMM's business.

pub mod http;
pub mod routes;
pub mod server;

pub use http::{Method, Response};
pub use routes::{Action, ParsedRequest};
pub use server::{ApiServer, ServerError, VmmLink};
