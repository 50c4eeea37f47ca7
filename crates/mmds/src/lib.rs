//! The microVM metadata service (MMDS): a JSON store the host fills through the API and
//! the guest reads over HTTP at a link-local address, as Firecracker's does.
//!
//! Pure logic, no sockets: the net device hands every frame the guest transmits to
//! [`MmdsStack::handle_guest_frame`] first (a consumed frame never reaches the tap) and
//! delivers what [`MmdsStack::next_frame`] produces to the guest's receive queue, calling
//! [`MmdsStack::tick`] by [`MmdsStack::next_deadline`].
//!
//! - [`store`]: the metadata, put and merge-patched within a size limit.
//! - [`token`]: version 2 session tokens.
//! - [`http`]: one request to one response (IMDS and JSON formats, V1/V2 rules).
//! - [`wire`]: Ethernet, ARP, IPv4 and TCP headers.
//! - [`tcp`]: one TCP connection serving HTTP.
//! - [`stack`]: [`MmdsStack`], ARP and the connections of one address.

pub mod http;
pub mod stack;
pub mod store;
pub mod tcp;
pub mod token;
pub mod wire;

pub use http::Version;
pub use stack::{MmdsStack, DEFAULT_IPV4, MMDS_MAC};
pub use store::{MmdsStore, StoreError, DEFAULT_SIZE_LIMIT};
pub use token::TokenAuthority;

#[cfg(test)]
mod tests;
