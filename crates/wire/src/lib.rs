//! seqfeed's wire protocol, sans-IO.
//!
//! Frames ([`Frame`]) are plain types with [`Frame::encode`] and
//! [`decode`]; nothing here touches a socket or a clock. The node's tokio
//! service and the clients' blocking sockets drive them:
//!
//! 1. the client sends [`Hello`] (protocol version, client name, a nonce,
//!    whether it holds a shared secret, expected dataset fingerprint);
//! 2. with a shared secret, the node answers [`Frame::Challenge`] and the
//!    client proves it holds the secret with [`Frame::Proof`] (an HMAC;
//!    the secret never crosses the network: [`auth`], [`ClientHandshake`]);
//! 3. the node answers [`Welcome`] (node name, fingerprint, region table,
//!    its own proof of the secret) or [`Frame::Refused`] and closes;
//! 4. the client sends [`ReadBatch`]es (many `(region, offset, len)` reads);
//!    the node answers each with [`Frame::ReadData`]`{ id, total }` followed
//!    by `total` raw bytes, the reads' payloads in request order, so the
//!    client can receive them straight into its destination buffer;
//! 5. [`Frame::Health`] / [`Frame::Stats`] return counters;
//!    [`VerbsConnect`] / [`VerbsAccept`] exchange RDMA queue-pair endpoints
//!    and region keys.
//!
//! Every length and count is checked against [`Limits`] before use; a bad
//! frame is a [`WireError`], never a panic. [`ServerConn`] is the node's
//! per-connection state machine (handshake, secret and fingerprint checks,
//! bounds checks of every read against the region table).
//!
//! ```
//! use seqfeed_wire::{decode, Decoded, Frame, Limits};
//! let bytes = Frame::Health.to_bytes();
//! match decode(&bytes, &Limits::DEFAULT).unwrap() {
//!     Decoded::Frame { frame, consumed } => {
//!         assert_eq!(frame, Frame::Health);
//!         assert_eq!(consumed, bytes.len());
//!     }
//!     Decoded::NeedMore { .. } => unreachable!(),
//! }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
#[cfg(test)]
mod auth_tests;
mod frame;
mod session;
#[cfg(test)]
mod tests;

pub use auth::{ClientHandshake, ClientStep};
pub use frame::{
    decode, decode_body, decode_header, ClientCounters, Decoded, ErrorCode, Frame, HealthOk, Hello,
    Limits, NodeCounters, QpEndpoint, ReadBatch, RegionId, RegionInfo, RegionKey, StatsOk,
    VerbsAccept, VerbsConnect, Welcome, WireError, WireRead, HEADER_LEN, HELLO_MAGIC, MAX_CLIENTS,
    MAX_FINGERPRINT, MAX_MANIFESTS, MAX_QPS, MAX_STRING, NONCE_LEN, PROOF_LEN, PROTOCOL_VERSION,
};
pub use session::{
    check_welcome, find_region, hello, FrameReader, HandshakeError, ServerAction, ServerConn,
    ServerPolicy, MAX_PRE_AUTH_FRAME,
};
