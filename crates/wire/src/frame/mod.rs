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

mod decode;

pub use decode::{decode, decode_body, decode_header, Decoded, WireError};

/// Protocol version spoken by this crate; a node refuses other versions.
///
/// Version 2 added [`QpEndpoint::rd_atomic`] (the RDMA READ depth).
/// Version 3 replaced the cleartext secret of the [`Hello`] with a
/// challenge-response ([`Frame::Challenge`], [`Frame::Proof`],
/// [`Welcome::proof`]; see [`crate::auth`]).
/// Version 4 added [`VerbsConnect::rail`] and [`VerbsConnect::replaces`]
/// (rail pairing and QP replacement on the node), and later the optional
/// [`Frame::Manifests`] request (a node without it closes the connection
/// with a bad-frame error, which a client reports as "does not publish its
/// manifests").
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

/// Most source manifests in one [`Frame::ManifestsOk`].
pub const MAX_MANIFESTS: usize = 65_536;

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
    /// Client: ask for the manifests of every source of the node's dataset
    /// (after the handshake, like every request).
    Manifests,
    /// Node: the manifests, each the JSON text of a source's
    /// `manifest.json`. A trainer host makes its plan from them and checks
    /// them against the dataset fingerprint of the [`Welcome`].
    ManifestsOk {
        /// One JSON document per source, sorted by source name.
        manifests: Vec<String>,
    },
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
    pub const MANIFESTS: u8 = 15;
    pub const MANIFESTS_OK: u8 = 16;
    /// The highest kind.
    pub const LAST: u8 = MANIFESTS_OK;
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
            Frame::Manifests => "Manifests",
            Frame::ManifestsOk { .. } => "ManifestsOk",
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
            Frame::Manifests => kind::MANIFESTS,
            Frame::ManifestsOk { .. } => kind::MANIFESTS_OK,
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
            Frame::Health | Frame::Stats | Frame::Manifests => {}
            Frame::ManifestsOk { manifests } => {
                w.u32(manifests.len() as u32);
                for m in manifests {
                    w.blob(m.as_bytes());
                }
            }
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
    fn blob(&mut self, b: &[u8]) {
        // Longer blobs are cut at u32::MAX and refused by the decoder
        // (max_frame), never silently misframed.
        let n = b.len().min(u32::MAX as usize);
        self.u32(n as u32);
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
