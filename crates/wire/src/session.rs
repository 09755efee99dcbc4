//! Sans-IO session logic: an incremental [`FrameReader`], the node side of
//! a connection ([`ServerConn`]) and the client's handshake check
//! ([`check_welcome`]). No sockets and no clock: drivers feed bytes in and
//! carry the resulting actions out.

use std::sync::Arc;

use crate::frame::{
    decode, Decoded, ErrorCode, Frame, Hello, Limits, ReadBatch, RegionInfo, VerbsConnect, Welcome,
    WireError, PROTOCOL_VERSION,
};

/// Largest frame body a node accepts before the handshake succeeded.
///
/// The only frame a client may send then is [`Hello`], at most 8,462 body
/// bytes (magic 4, version 2, client name 2 + [`MAX_STRING`](crate::MAX_STRING),
/// secret 1 + 2 + `MAX_STRING`, fingerprint 1 + 2 +
/// [`MAX_FINGERPRINT`](crate::MAX_FINGERPRINT)); 16 KiB leaves a margin of
/// almost 2x while an unauthenticated peer cannot make the node buffer
/// more than that per connection.
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
    /// Shared secret clients must present, if any.
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
    Ready { client: String },
    Closed,
}

/// The node side of one connection.
#[derive(Debug)]
pub struct ServerConn {
    policy: Arc<ServerPolicy>,
    reader: FrameReader,
    state: State,
}

impl ServerConn {
    /// A fresh connection awaiting [`Hello`].
    pub fn new(policy: Arc<ServerPolicy>) -> Self {
        // Until the handshake succeeds only a small Hello is accepted.
        let limits = Limits {
            max_frame: policy.limits.max_frame.min(MAX_PRE_AUTH_FRAME),
            ..policy.limits
        };
        ServerConn {
            policy,
            reader: FrameReader::new(limits),
            state: State::AwaitHello,
        }
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
            (State::Ready { .. }, Frame::ReadBatch(b)) => self.batch(b),
            (State::Ready { .. }, Frame::Health) => ServerAction::Health,
            (State::Ready { .. }, Frame::Stats) => ServerAction::Stats,
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
            reason: format!("refused: {reason}"),
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
        if let Some(want) = &p.secret {
            match &h.secret {
                None => {
                    return self.refuse(format!(
                        "node {} requires a shared secret and client {:?} sent none",
                        p.node, h.client
                    ))
                }
                Some(got) if !constant_time_eq(got.as_bytes(), want.as_bytes()) => {
                    return self.refuse(format!(
                        "wrong shared secret from client {:?} for node {}",
                        h.client, p.node
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(fp) = &h.fingerprint {
            if *fp != p.fingerprint {
                return self.refuse(format!(
                    "dataset fingerprint mismatch: client {:?} expects {fp}, node {} serves {}",
                    h.client, p.node, p.fingerprint
                ));
            }
        }
        self.state = State::Ready { client: h.client };
        self.reader.set_limits(p.limits);
        ServerAction::Send(Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            node: p.node.clone(),
            fingerprint: p.fingerprint.clone(),
            regions: p.regions.clone(),
        }))
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
}

/// Builds a [`Hello`] for this protocol version.
pub fn hello(client: &str, secret: Option<&str>, fingerprint: Option<&str>) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        client: client.to_owned(),
        secret: secret.map(str::to_owned),
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
