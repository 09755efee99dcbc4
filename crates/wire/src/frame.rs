//! Frame types and their codec.
//!
//! Every frame on the wire is `len: u32 LE | kind: u8 | body (len bytes)`.
//! Integers are little-endian; strings are `u16 LE length | UTF-8 bytes`;
//! optional strings are a `u8` tag (0 or 1) then the string; lists are a
//! `u32 LE count` then the items. Every length and count is checked against
//! [`Limits`] and against the bytes actually present before anything is
//! allocated, and a body must be consumed exactly (no trailing bytes).
//!
//! A [`Frame::ReadData`] header is followed on the stream by `total` raw
//! bytes (the payloads of the batch's reads in request order); they are not
//! part of the frame, so the receiver can place them straight into its
//! destination buffer.

use std::fmt;

/// Protocol version spoken by this crate; a node refuses other versions.
///
/// Version 2 added [`QpEndpoint::rd_atomic`] (the RDMA READ depth).
/// Version 3 replaced the cleartext secret of the [`Hello`] with a
/// challenge-response ([`Frame::Challenge`], [`Frame::Proof`],
/// [`Welcome::proof`]; see [`crate::auth`]).
/// Version 4 added [`VerbsConnect::rail`] and [`VerbsConnect::replaces`]
/// (rail pairing and QP replacement on the node).
pub const PROTOCOL_VERSION: u16 = 4;

/// Bytes of a handshake nonce ([`Hello::nonce`], [`Frame::Challenge`]).
pub const NONCE_LEN: usize = 32;

/// Bytes of a handshake proof (an HMAC-SHA256 tag).
pub const PROOF_LEN: usize = 32;

/// Magic bytes opening a [`Hello`] body.
pub const HELLO_MAGIC: [u8; 4] = *b"SQFD";

/// Bytes of a frame header (`len: u32`, `kind: u8`).
pub const HEADER_LEN: usize = 5;

/// Longest string field (names, messages) in bytes.
pub const MAX_STRING: usize = 4096;

/// Longest dataset fingerprint in bytes.
pub const MAX_FINGERPRINT: usize = 256;

/// Most queue pairs in one verbs connect frame.
pub const MAX_QPS: usize = 1024;

/// Most per-client entries in one stats frame.
pub const MAX_CLIENTS: usize = 65_536;

/// Bounds applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body in bytes.
    pub max_frame: u32,
    /// Most reads in one [`ReadBatch`].
    pub max_reads: u32,
    /// Most payload bytes one [`ReadBatch`] may ask for (sum of lengths).
    pub max_batch_bytes: u64,
}

impl Limits {
    /// The defaults: 16 MiB frames, 65,536 reads and 256 MiB per batch.
    pub const DEFAULT: Limits = Limits {
        max_frame: 16 << 20,
        max_reads: 1 << 16,
        max_batch_bytes: 256 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Identifies one registered memory region on one storage node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u32);

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "region {}", self.0)
    }
}

/// One entry of a node's region table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region id, unique within the node.
    pub id: RegionId,
    /// What the region holds: the sequence file's path relative to the
    /// dataset root (e.g. `web/part-00000.seq`).
    pub name: String,
    /// Length of the region in bytes.
    pub len: u64,
    /// Remote virtual address of the region's first byte (RDMA only; 0 otherwise).
    pub addr: u64,
    /// Remote key of the region's memory registration (RDMA only; 0 otherwise).
    pub rkey: u32,
}

/// Client's first frame.
///
/// Its body starts with the magic, the version and the client name in
/// every protocol version, so a node decodes that much of a Hello of any
/// version and refuses another version by name ([`decode_body`] fills the
/// other fields with defaults then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u16,
    /// Client name for the node's logs and counters (e.g. `rank3@host`).
    pub client: String,
    /// Fresh random bytes of the client, bound into both proofs so a
    /// recorded node answer cannot be replayed to it.
    pub nonce: [u8; NONCE_LEN],
    /// Whether the client holds a shared secret (it then expects a
    /// [`Frame::Challenge`] and a node proof). The secret itself never
    /// crosses the network.
    pub auth: bool,
    /// The dataset fingerprint the client expects; the node refuses a
    /// mismatch. `None` accepts any dataset.
    pub fingerprint: Option<String>,
}

/// Node's answer to an accepted [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version the node speaks.
    pub version: u16,
    /// Node name.
    pub node: String,
    /// Fingerprint of the dataset the node serves.
    pub fingerprint: String,
    /// The node's region table.
    pub regions: Vec<RegionInfo>,
    /// The node's proof that it holds the shared secret (after a
    /// [`Frame::Proof`]); `None` when the session is not authenticated.
    pub proof: Option<[u8; PROOF_LEN]>,
}

/// One read of a [`ReadBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireRead {
    /// Source region.
    pub region: RegionId,
    /// Byte offset in the region.
    pub offset: u64,
    /// Bytes to read.
    pub len: u32,
}

/// A batch of reads; the node answers [`Frame::ReadData`] then the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBatch {
    /// Request id, echoed in the answer.
    pub id: u64,
    /// The reads, answered in this order.
    pub reads: Vec<WireRead>,
}

impl ReadBatch {
    /// Sum of the read lengths.
    pub fn total_len(&self) -> u64 {
        self.reads.iter().map(|r| u64::from(r.len)).sum()
    }
}

/// Node-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Handshakes refused (secret, fingerprint, version).
    pub refused: u64,
    /// Read batches served.
    pub batches: u64,
    /// Reads served.
    pub reads: u64,
    /// Payload bytes served.
    pub bytes: u64,
    /// Connections closed on a protocol or I/O error.
    pub errors: u64,
}

/// Counters of one client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCounters {
    /// Client name from its [`Hello`].
    pub client: String,
    /// Peer socket address.
    pub peer: String,
    /// Read batches served.
    pub batches: u64,
    /// Reads served.
    pub reads: u64,
    /// Payload bytes served.
    pub bytes: u64,
}

/// Answer to [`Frame::Health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthOk {
    /// Node-wide counters.
    pub node: NodeCounters,
    /// The asking connection's counters.
    pub you: ClientCounters,
}

/// Answer to [`Frame::Stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsOk {
    /// Node-wide counters.
    pub node: NodeCounters,
    /// Open client connections; a node may list only some of them (seqfeed
    /// nodes: the oldest 256), `node.connections_open` counts them all.
    pub clients: Vec<ClientCounters>,
}

/// Error codes of [`Frame::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The frame could not be decoded.
    pub const BAD_FRAME: ErrorCode = ErrorCode(1);
    /// A frame arrived that is not allowed in this state.
    pub const UNEXPECTED: ErrorCode = ErrorCode(2);
    /// A read names a region the node does not publish.
    pub const UNKNOWN_REGION: ErrorCode = ErrorCode(3);
    /// A read falls outside its region.
    pub const OUT_OF_BOUNDS: ErrorCode = ErrorCode(4);
    /// A frame or batch exceeds a limit.
    pub const TOO_LARGE: ErrorCode = ErrorCode(5);
    /// The node does not support the request (e.g. verbs not enabled).
    pub const NOT_SUPPORTED: ErrorCode = ErrorCode(6);
    /// The node failed internally.
    pub const INTERNAL: ErrorCode = ErrorCode(7);
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            ErrorCode::BAD_FRAME => "bad frame",
            ErrorCode::UNEXPECTED => "unexpected frame",
            ErrorCode::UNKNOWN_REGION => "unknown region",
            ErrorCode::OUT_OF_BOUNDS => "out of bounds",
            ErrorCode::TOO_LARGE => "too large",
            ErrorCode::NOT_SUPPORTED => "not supported",
            ErrorCode::INTERNAL => "internal error",
            _ => "error",
        };
        write!(f, "{name} ({})", self.0)
    }
}

/// Connection parameters of one RDMA RC queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpEndpoint {
    /// Queue pair number.
    pub qp_num: u32,
    /// Initial packet sequence number.
    pub psn: u32,
    /// Port GID (RoCE: the IP-derived GID).
    pub gid: [u8; 16],
    /// Port LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Path MTU as the verbs enum value (1 = 256 .. 5 = 4096).
    pub mtu: u8,
    /// RDMA READ depth of this side: in a [`VerbsConnect`], how many reads
    /// the client keeps outstanding per QP (initiator depth,
    /// `max_qp_init_rd_atom`); in a [`VerbsAccept`], how many the node
    /// accepts per QP (responder resources, `max_qp_rd_atom`). Each side
    /// brings its QPs up with the smaller of its own and the peer's value.
    /// 0 means unknown (the peer then uses its own device limit).
    pub rd_atomic: u8,
}

impl QpEndpoint {
    /// Encoded size of one endpoint in bytes.
    pub const ENCODED_LEN: usize = 4 + 4 + 16 + 2 + 1 + 1;
}

/// Client asks the node to connect RC queue pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerbsConnect {
    /// The client's queue pairs, one per QP it wants connected.
    pub qps: Vec<QpEndpoint>,
    /// The client's RDMA device name, for logs.
    pub device: String,
    /// Which of the node's devices ("rails", in the node's order) the QPs
    /// are for: rail k of a client pairs with rail k of the node on a
    /// rail-optimized fabric, or as the client's rail map says.
    pub rail: u32,
    /// Node QP numbers (from earlier [`VerbsAccept`]s on this connection)
    /// that these QPs replace: the node destroys them before connecting the
    /// new ones. Numbers the connection does not hold are ignored.
    pub replaces: Vec<u32>,
}

/// Remote access parameters of one region registered for RDMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionKey {
    /// Region id (as in the region table).
    pub id: RegionId,
    /// Remote virtual address of the region's first byte.
    pub addr: u64,
    /// Remote key.
    pub rkey: u32,
}

/// Node's answer to [`VerbsConnect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerbsAccept {
    /// The node's queue pairs, one per client QP, in the same order.
    pub qps: Vec<QpEndpoint>,
    /// Address and key of every region.
    pub regions: Vec<RegionKey>,
}

/// Every frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client: open the session.
    Hello(Hello),
    /// Node: session accepted.
    Welcome(Welcome),
    /// Node: session refused (wrong secret, fingerprint or version); the
    /// node closes the connection after it.
    Refused {
        /// Why.
        reason: String,
    },
    /// Node: answer to the [`Hello`] of a client when the node holds a
    /// shared secret: prove you hold it too.
    Challenge {
        /// Fresh random bytes of the node (from the OS RNG).
        nonce: [u8; NONCE_LEN],
    },
    /// Client: answer to a [`Frame::Challenge`], an HMAC-SHA256 of the
    /// handshake under the shared secret ([`crate::auth::client_proof`]).
    Proof {
        /// The tag.
        proof: [u8; PROOF_LEN],
    },
    /// Client: read these ranges.
    ReadBatch(ReadBatch),
    /// Node: `total` raw bytes follow (the reads of batch `id` in order).
    ReadData {
        /// The batch's request id.
        id: u64,
        /// Bytes that follow this header.
        total: u64,
    },
    /// Client: ask for counters.
    Health,
    /// Node: counters.
    HealthOk(HealthOk),
    /// Client: ask for every client's counters.
    Stats,
    /// Node: every client's counters.
    StatsOk(StatsOk),
    /// Either side: an error. After a protocol violation (bad frame,
    /// read outside a region, ...) the node closes the connection; after a
    /// refused request (e.g. verbs not enabled) it stays open.
    Error {
        /// Code.
        code: ErrorCode,
        /// Human-readable description.
        message: String,
    },
    /// Client: connect RDMA queue pairs.
    VerbsConnect(VerbsConnect),
    /// Node: queue pairs connected, with the regions' keys.
    VerbsAccept(VerbsAccept),
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const REFUSED: u8 = 3;
    pub const READ_BATCH: u8 = 4;
    pub const READ_DATA: u8 = 5;
    pub const HEALTH: u8 = 6;
    pub const HEALTH_OK: u8 = 7;
    pub const STATS: u8 = 8;
    pub const STATS_OK: u8 = 9;
    pub const ERROR: u8 = 10;
    pub const VERBS_CONNECT: u8 = 11;
    pub const VERBS_ACCEPT: u8 = 12;
    pub const CHALLENGE: u8 = 13;
    pub const PROOF: u8 = 14;
    /// The highest kind.
    pub const LAST: u8 = PROOF;
}

impl Frame {
    /// Short name of the frame kind, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Welcome(_) => "Welcome",
            Frame::Refused { .. } => "Refused",
            Frame::ReadBatch(_) => "ReadBatch",
            Frame::ReadData { .. } => "ReadData",
            Frame::Health => "Health",
            Frame::HealthOk(_) => "HealthOk",
            Frame::Stats => "Stats",
            Frame::StatsOk(_) => "StatsOk",
            Frame::Error { .. } => "Error",
            Frame::VerbsConnect(_) => "VerbsConnect",
            Frame::VerbsAccept(_) => "VerbsAccept",
            Frame::Challenge { .. } => "Challenge",
            Frame::Proof { .. } => "Proof",
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Welcome(_) => kind::WELCOME,
            Frame::Refused { .. } => kind::REFUSED,
            Frame::ReadBatch(_) => kind::READ_BATCH,
            Frame::ReadData { .. } => kind::READ_DATA,
            Frame::Health => kind::HEALTH,
            Frame::HealthOk(_) => kind::HEALTH_OK,
            Frame::Stats => kind::STATS,
            Frame::StatsOk(_) => kind::STATS_OK,
            Frame::Error { .. } => kind::ERROR,
            Frame::VerbsConnect(_) => kind::VERBS_CONNECT,
            Frame::VerbsAccept(_) => kind::VERBS_ACCEPT,
            Frame::Challenge { .. } => kind::CHALLENGE,
            Frame::Proof { .. } => kind::PROOF,
        }
    }

    /// Appends the encoded frame (header and body) to `out`.
    ///
    /// Encoding never fails; a frame that breaks a limit (e.g. a string
    /// longer than [`MAX_STRING`]) is refused by the receiver's decoder, and
    /// [`Frame::encoded_checked`] catches it before sending.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        out[start + 4] = self.kind();
        let mut w = Writer(out);
        match self {
            Frame::Hello(h) => {
                w.bytes(&HELLO_MAGIC);
                w.u16(h.version);
                w.str(&h.client);
                w.bytes(&h.nonce);
                w.bytes(&[u8::from(h.auth)]);
                w.opt_str(h.fingerprint.as_deref());
            }
            Frame::Welcome(wl) => {
                w.u16(wl.version);
                w.str(&wl.node);
                w.str(&wl.fingerprint);
                w.u32(wl.regions.len() as u32);
                for r in &wl.regions {
                    w.u32(r.id.0);
                    w.str(&r.name);
                    w.u64(r.len);
                    w.u64(r.addr);
                    w.u32(r.rkey);
                }
                match &wl.proof {
                    None => w.bytes(&[0]),
                    Some(p) => {
                        w.bytes(&[1]);
                        w.bytes(p);
                    }
                }
            }
            Frame::Refused { reason } => w.str(reason),
            Frame::Challenge { nonce } => w.bytes(nonce),
            Frame::Proof { proof } => w.bytes(proof),
            Frame::ReadBatch(b) => {
                w.u64(b.id);
                w.u32(b.reads.len() as u32);
                for r in &b.reads {
                    w.u32(r.region.0);
                    w.u64(r.offset);
                    w.u32(r.len);
                }
            }
            Frame::ReadData { id, total } => {
                w.u64(*id);
                w.u64(*total);
            }
            Frame::Health | Frame::Stats => {}
            Frame::HealthOk(h) => {
                w.node_counters(&h.node);
                w.client_counters(&h.you);
            }
            Frame::StatsOk(s) => {
                w.node_counters(&s.node);
                w.u32(s.clients.len() as u32);
                for c in &s.clients {
                    w.client_counters(c);
                }
            }
            Frame::Error { code, message } => {
                w.u16(code.0);
                w.str(message);
            }
            Frame::VerbsConnect(v) => {
                w.u32(v.qps.len() as u32);
                for q in &v.qps {
                    w.qp(q);
                }
                w.str(&v.device);
                w.u32(v.rail);
                w.u32(v.replaces.len() as u32);
                for q in &v.replaces {
                    w.u32(*q);
                }
            }
            Frame::VerbsAccept(v) => {
                w.u32(v.qps.len() as u32);
                for q in &v.qps {
                    w.qp(q);
                }
                w.u32(v.regions.len() as u32);
                for r in &v.regions {
                    w.u32(r.id.0);
                    w.u64(r.addr);
                    w.u32(r.rkey);
                }
            }
        }
        let body = (out.len() - start - HEADER_LEN) as u32;
        out[start..start + 4].copy_from_slice(&body.to_le_bytes());
    }

    /// Encodes the frame and checks that the receiver's decoder (with
    /// `limits`) accepts it, so a sender learns about an oversized field
    /// before it goes out.
    pub fn encoded_checked(&self, limits: &Limits) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        self.encode(&mut out);
        match decode(&out, limits)? {
            Decoded::Frame { .. } => Ok(out),
            Decoded::NeedMore { .. } => Err(WireError::Truncated {
                what: "frame",
                at: out.len(),
            }),
        }
    }

    /// Encodes the frame into a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Result of [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The buffer holds no complete frame yet; at least `needed` more bytes
    /// are required.
    NeedMore {
        /// Minimum number of further bytes.
        needed: usize,
    },
    /// A complete frame, which took `consumed` bytes of the buffer.
    Frame {
        /// The frame.
        frame: Frame,
        /// Bytes consumed from the start of the buffer.
        consumed: usize,
    },
}

/// A frame that cannot be decoded. Offsets count from the start of the
/// frame body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A length or count exceeds its limit.
    #[error("{what} is {value}, more than the limit {max}")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The body ends inside a field.
    #[error("frame body ends inside {what} at byte {at}")]
    Truncated {
        /// The field.
        what: &'static str,
        /// Offset of the field.
        at: usize,
    },
    /// The body has bytes after its last field.
    #[error("{extra} trailing bytes after a {frame} frame")]
    Trailing {
        /// Frame kind.
        frame: &'static str,
        /// Number of unread bytes.
        extra: usize,
    },
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A string field is not UTF-8.
    #[error("{what} at byte {at} is not UTF-8")]
    BadUtf8 {
        /// The field.
        what: &'static str,
        /// Offset of the field.
        at: usize,
    },
    /// A field holds an impossible value.
    #[error("{what} at byte {at}: {why}")]
    BadValue {
        /// The field.
        what: &'static str,
        /// Offset of the field.
        at: usize,
        /// What is wrong.
        why: &'static str,
    },
}

/// Decodes the first frame of `buf`.
///
/// Returns [`Decoded::NeedMore`] while the frame is incomplete (after
/// checking the announced length against `limits.max_frame`, so an
/// oversized frame fails as soon as its header arrives).
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Decoded, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(Decoded::NeedMore {
            needed: HEADER_LEN - buf.len(),
        });
    }
    let (len, kind) = decode_header(&buf[..HEADER_LEN], limits)?;
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Ok(Decoded::NeedMore {
            needed: total - buf.len(),
        });
    }
    let frame = decode_body(kind, &buf[HEADER_LEN..total], limits)?;
    Ok(Decoded::Frame {
        frame,
        consumed: total,
    })
}

/// Decodes a 5-byte frame header into `(body length, kind)`, checking the
/// length against `limits.max_frame` and the kind against known kinds.
pub fn decode_header(header: &[u8], limits: &Limits) -> Result<(usize, u8), WireError> {
    let Some(h) = header.get(..HEADER_LEN) else {
        return Err(WireError::Truncated {
            what: "frame header",
            at: 0,
        });
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let kind = h[4];
    if !(kind::HELLO..=kind::LAST).contains(&kind) {
        return Err(WireError::UnknownKind(kind));
    }
    if len > limits.max_frame {
        return Err(WireError::TooLarge {
            what: "frame length",
            value: u64::from(len),
            max: u64::from(limits.max_frame),
        });
    }
    Ok((len as usize, kind))
}

/// Decodes a frame body of kind `kind` (from [`decode_header`]).
pub fn decode_body(kind: u8, body: &[u8], limits: &Limits) -> Result<Frame, WireError> {
    let mut r = Reader { buf: body, pos: 0 };
    let frame = match kind {
        kind::HELLO => {
            let at = r.pos;
            let magic = r.take(4, "hello magic")?;
            if magic != HELLO_MAGIC {
                return Err(WireError::BadValue {
                    what: "hello magic",
                    at,
                    why: "not a seqfeed client",
                });
            }
            let version = r.u16("version")?;
            let client = r.str("client name", MAX_STRING)?;
            if version != PROTOCOL_VERSION {
                // Another version's fields follow: leave them unread, so
                // the node can refuse the version by name.
                return Ok(Frame::Hello(Hello {
                    version,
                    client,
                    nonce: [0; NONCE_LEN],
                    auth: false,
                    fingerprint: None,
                }));
            }
            Frame::Hello(Hello {
                version,
                client,
                nonce: r.array("client nonce")?,
                auth: r.flag("auth flag")?,
                fingerprint: r.opt_str("fingerprint", MAX_FINGERPRINT)?,
            })
        }
        kind::WELCOME => {
            let version = r.u16("version")?;
            let node = r.str("node name", MAX_STRING)?;
            let fingerprint = r.str("fingerprint", MAX_FINGERPRINT)?;
            // id 4 + name 2 + len 8 + addr 8 + rkey 4
            let n = r.count("region count", u32::MAX as usize, 26)?;
            let mut regions = Vec::with_capacity(n);
            for _ in 0..n {
                regions.push(RegionInfo {
                    id: RegionId(r.u32("region id")?),
                    name: r.str("region name", MAX_STRING)?,
                    len: r.u64("region length")?,
                    addr: r.u64("region address")?,
                    rkey: r.u32("region rkey")?,
                });
            }
            let proof = match r.flag("node proof tag")? {
                false => None,
                true => Some(r.array("node proof")?),
            };
            Frame::Welcome(Welcome {
                version,
                node,
                fingerprint,
                regions,
                proof,
            })
        }
        kind::REFUSED => Frame::Refused {
            reason: r.str("reason", MAX_STRING)?,
        },
        kind::CHALLENGE => Frame::Challenge {
            nonce: r.array("node nonce")?,
        },
        kind::PROOF => Frame::Proof {
            proof: r.array("client proof")?,
        },
        kind::READ_BATCH => {
            let id = r.u64("request id")?;
            let n = r.count("read count", limits.max_reads as usize, 16)?;
            let mut reads = Vec::with_capacity(n);
            let mut total = 0u64;
            for _ in 0..n {
                let read = WireRead {
                    region: RegionId(r.u32("read region")?),
                    offset: r.u64("read offset")?,
                    len: r.u32("read length")?,
                };
                total += u64::from(read.len); // <= 2^16 * 2^32: no overflow
                if total > limits.max_batch_bytes {
                    return Err(WireError::TooLarge {
                        what: "batch bytes",
                        value: total,
                        max: limits.max_batch_bytes,
                    });
                }
                reads.push(read);
            }
            Frame::ReadBatch(ReadBatch { id, reads })
        }
        kind::READ_DATA => {
            let id = r.u64("request id")?;
            let total = r.u64("data length")?;
            if total > limits.max_batch_bytes {
                return Err(WireError::TooLarge {
                    what: "data length",
                    value: total,
                    max: limits.max_batch_bytes,
                });
            }
            Frame::ReadData { id, total }
        }
        kind::HEALTH => Frame::Health,
        kind::STATS => Frame::Stats,
        kind::HEALTH_OK => Frame::HealthOk(HealthOk {
            node: r.node_counters()?,
            you: r.client_counters()?,
        }),
        kind::STATS_OK => {
            let node = r.node_counters()?;
            let n = r.count("client count", MAX_CLIENTS, 28)?;
            let mut clients = Vec::with_capacity(n);
            for _ in 0..n {
                clients.push(r.client_counters()?);
            }
            Frame::StatsOk(StatsOk { node, clients })
        }
        kind::ERROR => Frame::Error {
            code: ErrorCode(r.u16("error code")?),
            message: r.str("error message", MAX_STRING)?,
        },
        kind::VERBS_CONNECT => {
            let n = r.count("queue pair count", MAX_QPS, QpEndpoint::ENCODED_LEN)?;
            let mut qps = Vec::with_capacity(n);
            for _ in 0..n {
                qps.push(r.qp()?);
            }
            let device = r.str("device name", MAX_STRING)?;
            let rail = r.u32("rail")?;
            let n = r.count("replaced QP count", MAX_QPS, 4)?;
            let mut replaces = Vec::with_capacity(n);
            for _ in 0..n {
                replaces.push(r.u32("replaced QP number")?);
            }
            Frame::VerbsConnect(VerbsConnect {
                qps,
                device,
                rail,
                replaces,
            })
        }
        kind::VERBS_ACCEPT => {
            let n = r.count("queue pair count", MAX_QPS, QpEndpoint::ENCODED_LEN)?;
            let mut qps = Vec::with_capacity(n);
            for _ in 0..n {
                qps.push(r.qp()?);
            }
            let n = r.count("region key count", u32::MAX as usize, 16)?;
            let mut regions = Vec::with_capacity(n);
            for _ in 0..n {
                regions.push(RegionKey {
                    id: RegionId(r.u32("region id")?),
                    addr: r.u64("region address")?,
                    rkey: r.u32("region rkey")?,
                });
            }
            Frame::VerbsAccept(VerbsAccept { qps, regions })
        }
        other => return Err(WireError::UnknownKind(other)),
    };
    if r.pos != body.len() {
        return Err(WireError::Trailing {
            frame: frame.name(),
            extra: body.len() - r.pos,
        });
    }
    Ok(frame)
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        // Longer strings are cut here at u16::MAX and refused by the decoder
        // (MAX_STRING), never silently misframed.
        let b = s.as_bytes();
        let n = b.len().min(u16::MAX as usize);
        self.u16(n as u16);
        self.bytes(&b[..n]);
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.bytes(&[0]),
            Some(s) => {
                self.bytes(&[1]);
                self.str(s);
            }
        }
    }
    fn node_counters(&mut self, c: &NodeCounters) {
        for v in [
            c.uptime_ms,
            c.connections_total,
            c.connections_open,
            c.refused,
            c.batches,
            c.reads,
            c.bytes,
            c.errors,
        ] {
            self.u64(v);
        }
    }
    fn client_counters(&mut self, c: &ClientCounters) {
        self.str(&c.client);
        self.str(&c.peer);
        self.u64(c.batches);
        self.u64(c.reads);
        self.u64(c.bytes);
    }
    fn qp(&mut self, q: &QpEndpoint) {
        self.u32(q.qp_num);
        self.u32(q.psn);
        self.bytes(&q.gid);
        self.u16(q.lid);
        self.bytes(&[q.mtu, q.rd_atomic]);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < n {
            return Err(WireError::Truncated { what, at: self.pos });
        }
        self.pos += n;
        Ok(&rest[..n])
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let b = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn flag(&mut self, what: &'static str) -> Result<bool, WireError> {
        let at = self.pos;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::BadValue {
                what,
                at,
                why: "flag is neither 0 nor 1",
            }),
        }
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn str(&mut self, what: &'static str, max: usize) -> Result<String, WireError> {
        let at = self.pos;
        let n = self.u16(what)? as usize;
        if n > max {
            return Err(WireError::TooLarge {
                what,
                value: n as u64,
                max: max as u64,
            });
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::BadUtf8 { what, at })
    }
    fn opt_str(&mut self, what: &'static str, max: usize) -> Result<Option<String>, WireError> {
        let at = self.pos;
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(self.str(what, max)?)),
            _ => Err(WireError::BadValue {
                what,
                at,
                why: "option tag is neither 0 nor 1",
            }),
        }
    }
    /// Reads a count, checked against `max` and against the bytes left
    /// (each item takes at least `min_item` bytes), so a hostile count
    /// cannot trigger a large allocation.
    fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_item: usize,
    ) -> Result<usize, WireError> {
        let at = self.pos;
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(WireError::TooLarge {
                what,
                value: n as u64,
                max: max as u64,
            });
        }
        let left = self.buf.len() - self.pos;
        if n.saturating_mul(min_item) > left {
            return Err(WireError::Truncated { what, at });
        }
        Ok(n)
    }
    fn node_counters(&mut self) -> Result<NodeCounters, WireError> {
        Ok(NodeCounters {
            uptime_ms: self.u64("uptime")?,
            connections_total: self.u64("connections total")?,
            connections_open: self.u64("connections open")?,
            refused: self.u64("refused")?,
            batches: self.u64("batches")?,
            reads: self.u64("reads")?,
            bytes: self.u64("bytes")?,
            errors: self.u64("errors")?,
        })
    }
    fn client_counters(&mut self) -> Result<ClientCounters, WireError> {
        Ok(ClientCounters {
            client: self.str("client name", MAX_STRING)?,
            peer: self.str("peer address", MAX_STRING)?,
            batches: self.u64("batches")?,
            reads: self.u64("reads")?,
            bytes: self.u64("bytes")?,
        })
    }
    fn qp(&mut self) -> Result<QpEndpoint, WireError> {
        Ok(QpEndpoint {
            qp_num: self.u32("qp number")?,
            psn: self.u32("psn")?,
            gid: self.array("gid")?,
            lid: self.u16("lid")?,
            mtu: self.u8("mtu")?,
            rd_atomic: self.u8("rd atomic depth")?,
        })
    }
}
