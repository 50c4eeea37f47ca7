//! The per-VM API: Firecracker's v1 API, HTTP/1.1 with JSON bodies on a Unix socket.
//!
//! - [`http`]: parsing one request from a connection's bytes, formatting a response.
//! - [`routes`]: which method and path mean which [`model::rpc::Request`], bodies parsed
//!   into the model's types.
//! - [`server`]: the API thread: accepts clients, reads requests without ever blocking on
//!   one, hands each request to the VMM over a channel (plus an eventfd that wakes the
//!   VMM's event loop) and turns the VMM's typed outcome into HTTP (the status code for
//!   each error is chosen here, in [`server::status_of`]).
//!
//! This crate knows HTTP and the API's shape; what a request does is the VMM's business.

pub mod http;
pub mod routes;
pub mod server;

pub use http::{Method, Response};
pub use routes::ParsedRequest;
pub use server::{ApiServer, ServerError, VmmLink};
