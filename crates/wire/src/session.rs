//! Sans-IO session logic: an incremental [`FrameReader`], the node side of
//! a connection ([`ServerConn`]) and the client's handshake check
//! ([`check_welcome`]). No sockets and no clock: drivers feed bytes in and
//! carry the resulting actions out.

use std::sync::Arc;

use crate::auth;
use crate::frame::{
    decode, Decoded, ErrorCode, Frame, Hello, Limits, ReadBatch, RegionInfo, VerbsConnect, Welcome,
    WireError, NONCE_LEN, PROOF_LEN, PROTOCOL_VERSION,
};

/// Largest frame body a node accepts before the handshake succeeded.
///
/// The only frames a client may send then are [`Hello`], at most 4,396
/// body bytes (magic 4, version 2, client name 2 +
/// [`MAX_STRING`](crate::MAX_STRING), nonce 32, auth flag 1, fingerprint
/// 1 + 2 + [`MAX_FINGERPRINT`](crate::MAX_FINGERPRINT)), and a 32-byte
/// [`Frame::Proof`]; a version 2 Hello (which carried the secret) is at
/// most 8,462 bytes and still gets its version refusal. 16 KiB leaves a
/// margin while an unauthenticated peer cannot make the node buffer more
/// than that per connection.
pub const MAX_PRE_AUTH_FRAME: u32 = 16 << 10;

/// Accumulates received bytes and yields whole frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    pos: usize,
    limits: Limits,
}

impl FrameReader {
    /// A reader applying `limits`.
    pub fn new(limits: Limits) -> Self {
        FrameReader {
            buf: Vec::new(),
            pos: 0,
            limits,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Replaces the limits applied to the frames not yet decoded.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Bytes received and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        match decode(&self.buf[self.pos..], &self.limits)? {
            Decoded::NeedMore { .. } => Ok(None),
            Decoded::Frame { frame, consumed } => {
                self.pos += consumed;
                Ok(Some(frame))
            }
        }
    }

    /// Takes up to `max` buffered raw bytes (the payload after a
    /// [`Frame::ReadData`] header).
    pub fn take_raw(&mut self, max: usize) -> &[u8] {
        let n = max.min(self.buffered());
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
}

/// What a node enforces and publishes on every connection.
#[derive(Debug, Clone)]
pub struct ServerPolicy {
    /// Node name sent in [`Welcome`].
    pub node: String,
    /// Fingerprint of the served dataset.
    pub fingerprint: String,
    /// Shared secret clients must prove they hold, if any (it never
    /// crosses the network: see [`crate::auth`]).
    pub secret: Option<String>,
    /// The region table (sorted by id).
    pub regions: Vec<RegionInfo>,
    /// Decoding limits.
    pub limits: Limits,
}

/// What the driver of a [`ServerConn`] must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAction {
    /// Send this frame.
    Send(Frame),
    /// Serve a validated batch: send `Frame::ReadData { id, total }`, then
    /// the bytes of every read in order. Every read is inside its region.
    ServeReads {
        /// The batch.
        batch: ReadBatch,
        /// Sum of its lengths.
        total: u64,
    },
    /// Answer with [`Frame::HealthOk`] (the driver holds the counters).
    Health,
    /// Answer with [`Frame::StatsOk`].
    Stats,
    /// Answer with [`Frame::ManifestsOk`] (the driver holds the manifests),
    /// or an error when the node has none to publish.
    Manifests,
    /// Answer a verbs connect request (with `VerbsAccept` or an `Error`).
    VerbsConnect(VerbsConnect),
    /// Send `frame` if any, then close the connection; `reason` is for the
    /// node's log.
    Close {
        /// Last frame to send (an `Error` or `Refused`).
        frame: Option<Frame>,
        /// Why the connection closes.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitProof { hello: Box<Hello> },
    Ready { client: String },
    Closed,
}

/// The node side of one connection.
#[derive(Debug)]
pub struct ServerConn {
    policy: Arc<ServerPolicy>,
    reader: FrameReader,
    state: State,
    nonce: [u8; NONCE_LEN],
    blocked: Option<String>,
    auth_failed: bool,
    proved: bool,
}

impl ServerConn {
    /// A fresh connection awaiting [`Hello`]. `nonce` is the node's
    /// challenge when the policy has a secret: fresh random bytes from the
    /// OS RNG for every connection (unused, and may be zero, without one).
    pub fn new(policy: Arc<ServerPolicy>, nonce: [u8; NONCE_LEN]) -> Self {
        // Until the handshake succeeds only a small Hello is accepted.
        let limits = Limits {
            max_frame: policy.limits.max_frame.min(MAX_PRE_AUTH_FRAME),
            ..policy.limits
        };
        ServerConn {
            policy,
            reader: FrameReader::new(limits),
            state: State::AwaitHello,
            nonce,
            blocked: None,
            auth_failed: false,
            proved: false,
        }
    }

    /// Refuses the rest of the handshake with `reason` (the peer is being
    /// rate-limited): a Hello or Proof that arrives from now on is answered
    /// with [`Frame::Refused`], without checking any proof.
    pub fn block(&mut self, reason: String) {
        self.blocked = Some(reason);
    }

    /// True while the handshake is not done (the connection is neither
    /// open nor closed).
    pub fn in_handshake(&self) -> bool {
        matches!(self.state, State::AwaitHello | State::AwaitProof { .. })
    }

    /// True once the client sent a wrong proof of the shared secret (the
    /// connection is closed with a refusal); what a node rate-limits.
    pub fn auth_failed(&self) -> bool {
        self.auth_failed
    }

    /// True once the client proved it holds the shared secret.
    pub fn proved(&self) -> bool {
        self.proved
    }

    /// The client's name once the handshake succeeded.
    pub fn client(&self) -> Option<&str> {
        match &self.state {
            State::Ready { client } => Some(client),
            _ => None,
        }
    }

    /// True while part of a frame has been received and not yet decoded.
    pub fn has_partial_frame(&self) -> bool {
        self.reader.buffered() > 0
    }

    /// Bytes received and not yet decoded (a partly received frame, or
    /// frames waiting to be polled).
    pub fn buffered(&self) -> usize {
        self.reader.buffered()
    }

    /// True once the connection must be closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.is_closed() {
            self.reader.feed(bytes);
        }
    }

    /// The next action, `None` when more bytes are needed (or closed).
    pub fn poll(&mut self) -> Option<ServerAction> {
        if self.is_closed() {
            return None;
        }
        let frame = match self.reader.next_frame() {
            Ok(None) => return None,
            Ok(Some(f)) => f,
            Err(e) => {
                let code = match e {
                    WireError::TooLarge { .. } => ErrorCode::TOO_LARGE,
                    _ => ErrorCode::BAD_FRAME,
                };
                return Some(self.fail(code, format!("bad frame: {e}")));
            }
        };
        Some(match (&self.state, frame) {
            (State::AwaitHello, Frame::Hello(h)) => self.hello(h),
            (State::AwaitHello, f) => self.fail(
                ErrorCode::UNEXPECTED,
                format!("expected Hello, got {}", f.name()),
            ),
            (State::AwaitProof { .. }, Frame::Proof { proof }) => self.proof(&proof),
            (State::AwaitProof { .. }, f) => self.fail(
                ErrorCode::UNEXPECTED,
                format!("expected Proof, got {}", f.name()),
            ),
            (State::Ready { .. }, Frame::ReadBatch(b)) => self.batch(b),
            (State::Ready { .. }, Frame::Health) => ServerAction::Health,
            (State::Ready { .. }, Frame::Stats) => ServerAction::Stats,
            (State::Ready { .. }, Frame::Manifests) => ServerAction::Manifests,
            (State::Ready { .. }, Frame::VerbsConnect(v)) => ServerAction::VerbsConnect(v),
            (State::Ready { .. }, f) => self.fail(
                ErrorCode::UNEXPECTED,
                format!("unexpected {} frame from a client", f.name()),
            ),
            (State::Closed, _) => return None,
        })
    }

    fn fail(&mut self, code: ErrorCode, message: String) -> ServerAction {
        self.state = State::Closed;
        ServerAction::Close {
            reason: message.clone(),
            frame: Some(Frame::Error { code, message }),
        }
    }

    fn refuse(&mut self, reason: String) -> ServerAction {
        self.state = State::Closed;
        ServerAction::Close {
            reason: reason.clone(),
            frame: Some(Frame::Refused { reason }),
        }
    }

    fn hello(&mut self, h: Hello) -> ServerAction {
        let p = Arc::clone(&self.policy);
        if h.version != PROTOCOL_VERSION {
            return self.refuse(format!(
                "client {:?} speaks protocol version {}, node {} speaks {}",
                h.client, h.version, p.node, PROTOCOL_VERSION
            ));
        }
        if let Some(why) = self.blocked.take() {
            return self.refuse(why);
        }
        match (&p.secret, h.auth) {
            (Some(_), false) => self.refuse(format!(
                "node {} requires a shared secret and client {:?} has none",
                p.node, h.client
            )),
            (None, true) => self.refuse(format!(
                "client {:?} holds a shared secret but node {} has none configured \
                 (configure the same secret on both sides, or on neither)",
                h.client, p.node
            )),
            (Some(_), true) => {
                self.state = State::AwaitProof { hello: Box::new(h) };
                ServerAction::Send(Frame::Challenge { nonce: self.nonce })
            }
            (None, false) => self.welcome(h, None),
        }
    }

    fn proof(&mut self, proof: &[u8; PROOF_LEN]) -> ServerAction {
        let p = Arc::clone(&self.policy);
        let State::AwaitProof { hello } = std::mem::replace(&mut self.state, State::Closed) else {
            return self.fail(ErrorCode::UNEXPECTED, "unexpected Proof".into());
        };
        if let Some(why) = self.blocked.take() {
            return self.refuse(why);
        }
        let secret = p.secret.as_deref().unwrap_or_default().as_bytes();
        if !auth::verify_client_proof(secret, &hello, &self.nonce, proof) {
            self.auth_failed = true;
            return self.refuse(format!(
                "wrong shared secret from client {:?} for node {}",
                hello.client, p.node
            ));
        }
        self.proved = true;
        self.welcome(*hello, Some(proof))
    }

    /// Checks the fingerprint and opens the session; `proof` is the
    /// client's verified proof when the session is authenticated.
    fn welcome(&mut self, h: Hello, proof: Option<&[u8; PROOF_LEN]>) -> ServerAction {
        let p = Arc::clone(&self.policy);
        if let Some(fp) = &h.fingerprint {
            if *fp != p.fingerprint {
                return self.refuse(format!(
                    "dataset fingerprint mismatch: client {:?} expects {fp}, node {} serves {}",
                    h.client, p.node, p.fingerprint
                ));
            }
        }
        let mut w = Welcome {
            version: PROTOCOL_VERSION,
            node: p.node.clone(),
            fingerprint: p.fingerprint.clone(),
            regions: p.regions.clone(),
            proof: None,
        };
        if let (Some(secret), Some(client_proof)) = (&p.secret, proof) {
            w.proof = Some(auth::node_proof(
                secret.as_bytes(),
                &h,
                &self.nonce,
                client_proof,
                &w,
            ));
        }
        self.state = State::Ready { client: h.client };
        self.reader.set_limits(p.limits);
        ServerAction::Send(Frame::Welcome(w))
    }

    fn batch(&mut self, b: ReadBatch) -> ServerAction {
        let p = Arc::clone(&self.policy);
        let mut total = 0u64;
        for (i, r) in b.reads.iter().enumerate() {
            let Some(info) = find_region(&p.regions, r.region) else {
                return self.fail(
                    ErrorCode::UNKNOWN_REGION,
                    format!(
                        "batch {} read {i}: node {} has no {}",
                        b.id, p.node, r.region
                    ),
                );
            };
            let inside = r
                .offset
                .checked_add(u64::from(r.len))
                .is_some_and(|end| end <= info.len);
            if !inside {
                return self.fail(
                    ErrorCode::OUT_OF_BOUNDS,
                    format!(
                        "batch {} read {i}: {} bytes at offset {} of {} ({}, length {}) on node {}",
                        b.id, r.len, r.offset, r.region, info.name, info.len, p.node
                    ),
                );
            }
            total += u64::from(r.len);
        }
        ServerAction::ServeReads { batch: b, total }
    }
}

/// Looks a region up by id in a table sorted by id.
pub fn find_region(regions: &[RegionInfo], id: crate::RegionId) -> Option<&RegionInfo> {
    match regions.get(id.0 as usize) {
        Some(r) if r.id == id => Some(r),
        _ => regions
            .binary_search_by_key(&id, |r| r.id)
            .ok()
            .map(|i| &regions[i]),
    }
}

/// Why a client's handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The node refused the session.
    #[error("refused by the node: {0}")]
    Refused(String),
    /// The node answered with an error frame.
    #[error("node error {code}: {message}")]
    Error {
        /// Code.
        code: ErrorCode,
        /// Message.
        message: String,
    },
    /// The node speaks another protocol version.
    #[error("node {node} speaks protocol version {node_version}, this client {PROTOCOL_VERSION}")]
    Version {
        /// Node name.
        node: String,
        /// Its version.
        node_version: u16,
    },
    /// The node serves a different dataset than expected.
    #[error("node {node} serves dataset {got}, expected {expected}")]
    Fingerprint {
        /// Node name.
        node: String,
        /// Expected fingerprint.
        expected: String,
        /// The node's fingerprint.
        got: String,
    },
    /// The node sent a frame that does not belong in a handshake.
    #[error("expected Welcome, got {0}")]
    Unexpected(&'static str),
    /// The node asks for a proof of a shared secret and this client has
    /// none.
    #[error("the node requires a shared secret and this client has none")]
    SecretRequired,
    /// The client holds a secret and the node opened the session without
    /// proving that it holds it too.
    #[error(
        "node {node} did not prove that it holds the shared secret: it has none configured, \
         or it is not the node meant; refusing to use it"
    )]
    NodeUnauthenticated {
        /// Node name (as it claims).
        node: String,
    },
    /// The node's proof of the shared secret is wrong.
    #[error(
        "node {node} failed to prove that it holds the shared secret: its secret differs \
         from this client's, or it is not the node meant; refusing to use it"
    )]
    BadNodeProof {
        /// Node name (as it claims).
        node: String,
    },
    /// The node could not decode this client's Hello, most likely because
    /// it runs an older seqfeed.
    #[error(
        "the node could not read this client's Hello ({0}); it probably speaks an older \
         protocol version than this client's {PROTOCOL_VERSION}"
    )]
    Incompatible(String),
}

/// Builds a [`Hello`] for a client without a shared secret (its nonce is
/// zero: no proof is asked of it). Clients with a secret use
/// [`ClientHandshake`](crate::ClientHandshake).
pub fn hello(client: &str, fingerprint: Option<&str>) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        client: client.to_owned(),
        nonce: [0; NONCE_LEN],
        auth: false,
        fingerprint: fingerprint.map(str::to_owned),
    }
}

/// Checks the node's answer to `hello`: a [`Welcome`] with our protocol
/// version and, when `hello` names one, the expected fingerprint.
pub fn check_welcome(hello: &Hello, answer: Frame) -> Result<Welcome, HandshakeError> {
    match answer {
        Frame::Welcome(w) => {
            if w.version != PROTOCOL_VERSION {
                return Err(HandshakeError::Version {
                    node: w.node,
                    node_version: w.version,
                });
            }
            if let Some(fp) = &hello.fingerprint {
                if *fp != w.fingerprint {
                    return Err(HandshakeError::Fingerprint {
                        node: w.node,
                        expected: fp.clone(),
                        got: w.fingerprint,
                    });
                }
            }
            Ok(w)
        }
        Frame::Refused { reason } => Err(HandshakeError::Refused(reason)),
        Frame::Error { code, message } => Err(HandshakeError::Error { code, message }),
        other => Err(HandshakeError::Unexpected(other.name())),
    }
}
