//! The `tcp` backend: one-sided reads emulated over TCP.
//!
//! [`TcpTransport::connect`] opens [`ConnectOptions::connections`] TCP
//! connections to one node (each with its own handshake). A batch is split
//! into contiguous runs of destination ranges, one run per connection, and
//! each connection sends one [`ReadBatch`] frame per run (more when a run
//! exceeds the protocol limits) and receives the payload with vectored reads
//! straight into the destination slices: no intermediate buffer. Every
//! socket has read and write timeouts, so a dead node is an error, never a
//! hang.
//!
//! The connections of one batch are received in parallel by the calling
//! thread and the transport's receive workers: a small thread pool
//! (`rayon-core`) started by [`TcpTransport::connect`] and stopped when the
//! transport is dropped, so no thread is started per batch. The workers
//! borrow the batch's destination slices through a scope that ends before
//! `read_batch` returns.
//!
//! [`ControlClient`] is the reusable blocking client of the control
//! protocol (connect with retries, handshake, one request/one response);
//! the verbs backend uses it to send [`seqfeed_wire::VerbsConnect`].

use std::io::{IoSliceMut, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use seqfeed_wire::{
    decode_body, decode_header, ClientHandshake, ClientStep, Frame, HandshakeError, HealthOk,
    Limits, ReadBatch, StatsOk, Welcome, WireRead, HEADER_LEN, NONCE_LEN,
};

use crate::{BatchStats, ReadRequest, RegionInfo, Transport, TransportError};

/// Largest piece of one read sent as one wire read (bigger reads, or reads
/// bigger than the batch limit, are split).
const MAX_PIECE: usize = 16 << 20;

/// Below this many bytes per connection a batch uses fewer connections
/// (a thread hand-off costs more than it saves).
const MIN_BYTES_PER_CONNECTION: u64 = 256 << 10;

/// Most slices handed to one `readv`.
const MAX_IOV: usize = 1024;

/// How to connect to a node.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Client name shown in the node's logs and counters.
    pub client_name: String,
    /// Shared secret, when the node requires one. It never crosses the
    /// network: the client answers the node's challenge with an HMAC and
    /// checks the node's own proof ([`seqfeed_wire::auth`]).
    pub secret: Option<String>,
    /// Local address to connect from (`None`: the system picks), e.g. to
    /// use one NIC of several.
    pub local_addr: Option<IpAddr>,
    /// Dataset fingerprint the node must serve (`None` accepts any).
    pub expected_fingerprint: Option<String>,
    /// Parallel TCP connections per node (default 4).
    pub connections: usize,
    /// Timeout of one TCP connect attempt (default 2 s).
    pub connect_timeout: Duration,
    /// Read/write timeout of every socket operation (default 10 s).
    pub io_timeout: Duration,
    /// Connect attempts after the first one fails (default 4).
    pub retries: u32,
    /// Wait before the first retry; doubled after each, capped at 2 s
    /// (default 100 ms).
    pub backoff: Duration,
    /// Protocol limits (must not exceed the node's).
    pub limits: Limits,
    /// Threads receiving one batch in parallel; connections beyond this
    /// count are driven by the same threads with their requests pipelined.
    /// 0 (the default) picks half the CPUs, at least 1. The calling thread
    /// is one of them; the others are workers the transport keeps from
    /// connect until it is dropped.
    pub receive_threads: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            client_name: format!("seqfeed-client/{}", std::process::id()),
            secret: None,
            local_addr: None,
            expected_fingerprint: None,
            connections: 4,
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(10),
            retries: 4,
            backoff: Duration::from_millis(100),
            limits: Limits::DEFAULT,
            receive_threads: 0,
        }
    }
}

/// A blocking connection to a node's control service, after a successful
/// handshake.
///
/// ```no_run
/// use seqfeed_transport::tcp::{ConnectOptions, ControlClient};
/// let mut c = ControlClient::connect("127.0.0.1:7000", &ConnectOptions::default()).unwrap();
/// println!("{} regions", c.welcome().regions.len());
/// let health = c.health().unwrap();
/// println!("{} bytes served", health.node.bytes);
/// ```
#[derive(Debug)]
pub struct ControlClient {
    stream: TcpStream,
    node: String,
    welcome: Welcome,
    limits: Limits,
}

fn io_err(node: &str, what: impl Into<String>, source: std::io::Error) -> TransportError {
    TransportError::Io {
        node: node.to_owned(),
        what: what.into(),
        source,
    }
}

fn proto(node: &str, what: impl Into<String>) -> TransportError {
    TransportError::Protocol {
        node: node.to_owned(),
        what: what.into(),
    }
}

impl ControlClient {
    /// Connects to `addr` (retrying with backoff when the node cannot be
    /// reached) and performs the handshake. A refusal (wrong secret,
    /// fingerprint, version) is not retried.
    pub fn connect(
        addr: impl ToSocketAddrs,
        opts: &ConnectOptions,
    ) -> Result<Self, TransportError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| io_err("?", "resolving the node address", e))?
            .collect();
        let Some(&first) = addrs.first() else {
            return Err(proto("?", "the node address resolves to nothing"));
        };
        let node = first.to_string();
        let mut backoff = opts.backoff;
        let mut attempt = 0u32;
        loop {
            match Self::connect_once(first, opts) {
                Ok(c) => return Ok(c),
                Err(e) if attempt < opts.retries && matches!(e, TransportError::Io { .. }) => {
                    attempt += 1;
                    tracing::debug!(node = %node, attempt, error = %e, "connect failed; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(TransportError::Io { node, what, source }) if attempt > 0 => {
                    return Err(TransportError::Io {
                        node,
                        what: format!("{what} (gave up after {} attempts)", attempt + 1),
                        source,
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One connect attempt and handshake, no retries.
    pub fn connect_once(addr: SocketAddr, opts: &ConnectOptions) -> Result<Self, TransportError> {
        let node = addr.to_string();
        let stream = match opts.local_addr {
            None => TcpStream::connect_timeout(&addr, opts.connect_timeout)
                .map_err(|e| io_err(&node, "connecting", e))?,
            Some(local) => connect_from(local, addr, opts.connect_timeout)
                .map_err(|e| io_err(&node, format!("connecting from local address {local}"), e))?,
        };
        let set =
            |r: std::io::Result<()>| r.map_err(|e| io_err(&node, "configuring the socket", e));
        set(stream.set_nodelay(true))?;
        set(stream.set_read_timeout(Some(opts.io_timeout)))?;
        set(stream.set_write_timeout(Some(opts.io_timeout)))?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|e| {
            proto(
                &node,
                format!("drawing a handshake nonce from the OS RNG: {e}"),
            )
        })?;
        let mut hs = ClientHandshake::new(
            &opts.client_name,
            opts.secret.as_deref().map(str::as_bytes),
            opts.expected_fingerprint.as_deref(),
            nonce,
        );
        let mut c = ControlClient {
            stream,
            node,
            welcome: Welcome {
                version: 0,
                node: String::new(),
                fingerprint: String::new(),
                regions: Vec::new(),
                proof: None,
            },
            limits: opts.limits,
        };
        c.send(&Frame::Hello(hs.hello().clone()))?;
        let w = loop {
            let answer = c.recv()?;
            match hs.on_frame(answer) {
                Ok(ClientStep::Send(f)) => c.send(&f)?,
                Ok(ClientStep::Done(w)) => break w,
                Err(HandshakeError::Refused(reason)) => {
                    return Err(TransportError::Refused {
                        node: c.node.clone(),
                        reason,
                    })
                }
                Err(e @ HandshakeError::SecretRequired) => {
                    return Err(TransportError::Refused {
                        node: c.node.clone(),
                        reason: format!("{e} (set SEQFEED_SECRET or --secret-file)"),
                    })
                }
                Err(other) => return Err(proto(&c.node, format!("handshake: {other}"))),
            }
        };
        c.node = format!("{} ({})", w.node, c.node);
        // The proof is checked and differs per connection: compare tables without it.
        c.welcome = Welcome { proof: None, ..w };
        tracing::debug!(node = %c.node, regions = c.welcome.regions.len(), "connected");
        Ok(c)
    }

    /// The node's answer to the handshake (name, fingerprint, regions).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The node as `name (address)`, for errors.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Sends one frame.
    pub fn send(&mut self, frame: &Frame) -> Result<(), TransportError> {
        let bytes = frame.to_bytes();
        self.stream
            .write_all(&bytes)
            .map_err(|e| io_err(&self.node, format!("sending {}", frame.name()), e))
    }

    /// Receives one frame (an `Error` frame is returned as a frame).
    pub fn recv(&mut self) -> Result<Frame, TransportError> {
        let mut header = [0u8; HEADER_LEN];
        self.stream
            .read_exact(&mut header)
            .map_err(|e| io_err(&self.node, "receiving a frame header", e))?;
        let (len, kind) = decode_header(&header, &self.limits)
            .map_err(|e| proto(&self.node, format!("bad frame header: {e}")))?;
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| io_err(&self.node, "receiving a frame body", e))?;
        decode_body(kind, &body, &self.limits)
            .map_err(|e| proto(&self.node, format!("bad frame: {e}")))
    }

    /// Sends `frame` and returns the answer; an `Error` or `Refused` answer
    /// becomes [`TransportError::Protocol`] naming the node.
    pub fn request(&mut self, frame: &Frame) -> Result<Frame, TransportError> {
        self.send(frame)?;
        match self.recv()? {
            Frame::Error { code, message } => Err(proto(
                &self.node,
                format!("{} answered with error {code}: {message}", frame.name()),
            )),
            Frame::Refused { reason } => Err(TransportError::Refused {
                node: self.node.clone(),
                reason,
            }),
            f => Ok(f),
        }
    }

    /// Node-wide and this connection's counters.
    pub fn health(&mut self) -> Result<HealthOk, TransportError> {
        match self.request(&Frame::Health)? {
            Frame::HealthOk(h) => Ok(h),
            f => Err(proto(
                &self.node,
                format!("expected HealthOk, got {}", f.name()),
            )),
        }
    }

    /// Node-wide counters and every open connection's.
    pub fn stats(&mut self) -> Result<StatsOk, TransportError> {
        match self.request(&Frame::Stats)? {
            Frame::StatsOk(s) => Ok(s),
            f => Err(proto(
                &self.node,
                format!("expected StatsOk, got {}", f.name()),
            )),
        }
    }

    /// The manifests of every source of the node's dataset, as JSON texts
    /// (`manifest.json`), sorted by source name. A node that publishes none
    /// (plain files, or a node from before the request existed) gives an
    /// error naming it.
    pub fn manifests(&mut self) -> Result<Vec<String>, TransportError> {
        let answer = self.request(&Frame::Manifests).map_err(|e| match e {
            TransportError::Io { node, what, source } => TransportError::Io {
                node,
                what: format!(
                    "{what} after asking for the source manifests (a node from before seqfeed published them closes the connection here)"
                ),
                source,
            },
            other => other,
        })?;
        match answer {
            Frame::ManifestsOk { manifests } => Ok(manifests),
            f => Err(proto(
                &self.node,
                format!("expected ManifestsOk, got {}", f.name()),
            )),
        }
    }

    /// The underlying socket (timeouts set), e.g. to read raw payloads.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Sends one read batch frame for `pieces`.
    fn send_reads(
        &mut self,
        id: u64,
        pieces: &[(WireRead, &mut [u8])],
    ) -> Result<(), TransportError> {
        let batch = ReadBatch {
            id,
            reads: pieces.iter().map(|p| p.0).collect(),
        };
        self.send(&Frame::ReadBatch(batch))
    }

    /// Receives the answer to [`ControlClient::send_reads`] straight into
    /// the pieces' slices (one per read, in order, each exactly as long as
    /// its read).
    fn recv_reads(
        &mut self,
        id: u64,
        pieces: &mut [(WireRead, &mut [u8])],
    ) -> Result<(), TransportError> {
        let total: u64 = pieces.iter().map(|p| u64::from(p.0.len)).sum();
        match self.recv()? {
            Frame::ReadData { id: got, total: t } if got == id && t == total => {}
            Frame::ReadData { id: got, total: t } => {
                return Err(proto(
                    &self.node,
                    format!("answer to batch {id} ({total} bytes) is batch {got} ({t} bytes)"),
                ))
            }
            Frame::Error { code, message } => {
                return Err(proto(
                    &self.node,
                    format!("batch {id}: error {code}: {message}"),
                ))
            }
            f => {
                return Err(proto(
                    &self.node,
                    format!("batch {id}: unexpected {} frame", f.name()),
                ))
            }
        }
        let mut done = 0u64;
        let mut start = 0usize;
        while start < pieces.len() {
            let end = (start + MAX_IOV).min(pieces.len());
            let mut bufs: Vec<IoSliceMut<'_>> = pieces[start..end]
                .iter_mut()
                .map(|p| IoSliceMut::new(&mut *p.1))
                .collect();
            let mut rest: &mut [IoSliceMut<'_>] = &mut bufs;
            IoSliceMut::advance_slices(&mut rest, 0);
            while !rest.is_empty() {
                let n = match self.stream.read_vectored(rest) {
                    Ok(0) => {
                        return Err(io_err(
                            &self.node,
                            format!("batch {id}: connection closed after {done} of {total} bytes"),
                            std::io::ErrorKind::UnexpectedEof.into(),
                        ))
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(io_err(
                            &self.node,
                            format!("batch {id}: receiving data after {done} of {total} bytes"),
                            e,
                        ))
                    }
                };
                done += n as u64;
                IoSliceMut::advance_slices(&mut rest, n);
            }
            start = end;
        }
        Ok(())
    }
}

/// Connects to `addr` from the local address `local` (any port).
fn connect_from(local: IpAddr, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(local, 0).into())?;
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

/// One-sided reads from one node over several TCP connections.
#[derive(Debug)]
pub struct TcpTransport {
    addr: SocketAddr,
    node: String,
    opts: ConnectOptions,
    welcome: Welcome,
    conns: Vec<Option<ControlClient>>,
    next_id: u64,
    /// Receive workers besides the calling thread (`None`: one thread).
    workers: Option<rayon_core::ThreadPool>,
}

impl TcpTransport {
    /// Connects `opts.connections` connections to the node at `addr`
    /// (each retried with backoff) and checks they agree on the region table.
    pub fn connect(
        addr: impl ToSocketAddrs,
        opts: &ConnectOptions,
    ) -> Result<Self, TransportError> {
        let first = ControlClient::connect(addr, opts)?;
        let addr = first
            .stream
            .peer_addr()
            .map_err(|e| io_err(first.node(), "reading the peer address", e))?;
        let welcome = first.welcome().clone();
        let node = first.node().to_owned();
        let mut conns = vec![Some(first)];
        for _ in 1..opts.connections.max(1) {
            let c = ControlClient::connect(addr, opts)?;
            if c.welcome() != &welcome {
                return Err(proto(&node, "connections disagree on the region table"));
            }
            conns.push(Some(c));
        }
        let workers = receive_workers(&node, addr, opts, conns.len())?;
        Ok(TcpTransport {
            addr,
            node,
            opts: opts.clone(),
            welcome,
            conns,
            next_id: 0,
            workers,
        })
    }

    /// Receive worker threads this transport keeps (the calling thread of
    /// [`Transport::read_batch`] receives too).
    pub fn receive_workers(&self) -> usize {
        self.workers
            .as_ref()
            .map_or(0, rayon_core::ThreadPool::current_num_threads)
    }

    /// The node's handshake answer.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The node's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of connections (open or broken).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Reopens broken connections (one attempt each).
    fn heal(&mut self) -> Result<(), TransportError> {
        for slot in &mut self.conns {
            if slot.is_none() {
                let c = ControlClient::connect_once(self.addr, &self.opts)?;
                if c.welcome() != &self.welcome {
                    return Err(proto(&self.node, "the node's region table changed"));
                }
                *slot = Some(c);
            }
        }
        Ok(())
    }
}

/// Cuts `dst` into one disjoint slice per wire piece, sorted by destination.
fn carve<'a>(
    piece_max: usize,
    node: &str,
    regions: &[RegionInfo],
    reads: &[ReadRequest],
    dst: &'a mut [u8],
) -> Result<Vec<(WireRead, &'a mut [u8])>, TransportError> {
    let mut order: Vec<&ReadRequest> = Vec::with_capacity(reads.len());
    for r in reads {
        let info = seqfeed_wire::find_region(regions, r.region).ok_or_else(|| {
            TransportError::UnknownRegion {
                node: node.to_owned(),
                region: r.region,
            }
        })?;
        r.check(info.len, dst.len()).map_err(|e| match e {
            TransportError::OutOfBounds { what } => TransportError::OutOfBounds {
                what: format!("{what} ({} on node {node})", info.name),
            },
            e => e,
        })?;
        if r.len > 0 {
            order.push(r);
        }
    }
    order.sort_by_key(|r| r.dst_offset);
    let mut out = Vec::with_capacity(order.len());
    let mut rest: &'a mut [u8] = dst;
    let mut pos = 0u64;
    for r in order {
        if r.dst_offset < pos {
            return Err(TransportError::OutOfBounds {
                what: format!(
                    "destination ranges overlap at byte {} ({} offset {})",
                    r.dst_offset, r.region, r.offset
                ),
            });
        }
        // check() proved dst_offset + len <= dst.len().
        let skip = (r.dst_offset - pos) as usize;
        let tail = std::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut(skip);
        let (mine, tail) = tail.split_at_mut(r.len as usize);
        rest = tail;
        pos = r.dst_offset + u64::from(r.len);
        let mut off = r.offset;
        for piece in mine.chunks_mut(piece_max) {
            let len = piece.len() as u32;
            out.push((
                WireRead {
                    region: r.region,
                    offset: off,
                    len,
                },
                piece,
            ));
            off += u64::from(len);
        }
    }
    Ok(out)
}

type Piece<'a> = (WireRead, &'a mut [u8]);

/// Cuts a run of pieces into frames within `limits` (at least one piece
/// per frame; pieces already fit in `max_batch_bytes`).
fn frames<'r, 'a>(mut run: &'r mut [Piece<'a>], limits: &Limits) -> Vec<&'r mut [Piece<'a>]> {
    let mut out = Vec::new();
    while !run.is_empty() {
        let mut end = 0;
        let mut bytes = 0u64;
        while end < run.len()
            && (end == 0
                || (end < limits.max_reads as usize
                    && bytes + u64::from(run[end].0.len) <= limits.max_batch_bytes))
        {
            bytes += u64::from(run[end].0.len);
            end += 1;
        }
        let (frame, rest) = std::mem::take(&mut run).split_at_mut(end);
        out.push(frame);
        run = rest;
    }
    out
}

/// The part of a batch one connection carries.
struct Job<'r, 'a> {
    slot: usize,
    conn: &'r mut ControlClient,
    id: u64,
    frames: Vec<&'r mut [Piece<'a>]>,
    posts: u64,
    err: Option<TransportError>,
}

/// Drives several connections from one thread: the first frame of every
/// connection is sent up front (so all of them stream at once), then each
/// connection's answers are received in turn, later frames sent as earlier
/// ones complete.
fn drive(jobs: &mut [Job<'_, '_>]) {
    for job in jobs.iter_mut() {
        if let Some(first) = job.frames.first() {
            if let Err(e) = job.conn.send_reads(job.id, first) {
                job.err = Some(e);
            }
        }
    }
    for job in jobs.iter_mut() {
        if job.err.is_some() {
            continue;
        }
        let n = job.frames.len();
        for i in 0..n {
            let id = job.id + i as u64;
            if i > 0 {
                if let Err(e) = job.conn.send_reads(id, job.frames[i]) {
                    job.err = Some(e);
                    break;
                }
            }
            if let Err(e) = job.conn.recv_reads(id, job.frames[i]) {
                job.err = Some(e);
                break;
            }
            job.posts += 1;
        }
    }
}

/// Receive threads for `conns` connections: `requested`, or (0) half the
/// CPUs (on loopback the node's writers need the other half), at least 1.
fn receive_threads(requested: usize, conns: usize) -> usize {
    let auto = || {
        std::thread::available_parallelism()
            .map(|n| n.get() / 2)
            .unwrap_or(1)
    };
    let t = if requested == 0 { auto() } else { requested };
    t.clamp(1, conns.max(1))
}

/// The persistent receive workers of a transport with `conns` connections:
/// one per receive thread besides the caller, named `sf-rx<port>-<i>`
/// after the node's port (Linux keeps 15 bytes of a thread name).
fn receive_workers(
    node: &str,
    addr: SocketAddr,
    opts: &ConnectOptions,
    conns: usize,
) -> Result<Option<rayon_core::ThreadPool>, TransportError> {
    let n = receive_threads(opts.receive_threads, conns) - 1;
    if n == 0 {
        return Ok(None);
    }
    let port = addr.port();
    rayon_core::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(move |i| format!("sf-rx{port}-{i}"))
        .build()
        .map(Some)
        .map_err(|e| {
            io_err(
                node,
                format!("starting {n} receive threads"),
                std::io::Error::other(e),
            )
        })
}

impl Transport for TcpTransport {
    fn backend(&self) -> &'static str {
        "tcp"
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn regions(&self) -> &[RegionInfo] {
        &self.welcome.regions
    }

    fn read_batch(
        &mut self,
        reads: &[ReadRequest],
        dst: &mut [u8],
    ) -> Result<BatchStats, TransportError> {
        let node = self.node.clone();
        let piece_max = (self.opts.limits.max_batch_bytes.min(MAX_PIECE as u64) as usize).max(1);
        let mut pieces = carve(piece_max, &node, &self.welcome.regions, reads, dst)?;
        let total: u64 = pieces.iter().map(|p| u64::from(p.0.len)).sum();
        if pieces.is_empty() {
            return Ok(BatchStats {
                reads: reads.len() as u64,
                ..BatchStats::default()
            });
        }
        self.heal()?;
        let want = total.div_ceil(MIN_BYTES_PER_CONNECTION).max(1) as usize;
        let k = want.min(self.conns.len()).min(pieces.len());
        // Split into k contiguous runs of about total/k bytes.
        let mut runs: Vec<&mut [(WireRead, &mut [u8])]> = Vec::with_capacity(k);
        let mut rest: &mut [(WireRead, &mut [u8])] = &mut pieces;
        let mut left = total;
        for i in 0..k {
            let runs_left = k - i;
            let (n, b) = if runs_left == 1 {
                (rest.len(), left)
            } else {
                let target = left / runs_left as u64;
                let (mut n, mut b) = (0usize, 0u64);
                // At least one piece per run; leave one for each later run.
                while n < rest.len() - (runs_left - 1) && (n == 0 || b < target) {
                    b += u64::from(rest[n].0.len);
                    n += 1;
                }
                (n, b)
            };
            let (run, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            left -= b;
            runs.push(run);
        }
        let base = self.next_id;
        self.next_id = self.next_id.wrapping_add(1 << 32);
        let limits = self.opts.limits;
        let threads = receive_threads(self.opts.receive_threads, k);
        let mut jobs: Vec<Job<'_, '_>> = Vec::with_capacity(k);
        for (slot, (conn, run)) in self.conns.iter_mut().zip(runs).enumerate() {
            let conn = conn.as_mut().ok_or_else(|| proto(&node, "no connection"))?;
            jobs.push(Job {
                slot,
                conn,
                id: base + ((slot as u64) << 24),
                frames: frames(run, &limits),
                posts: 0,
                err: None,
            });
        }
        match &self.workers {
            Some(pool) if threads > 1 => {
                // Connection i goes to thread i % threads; group 0 is ours.
                let mut groups: Vec<Vec<Job<'_, '_>>> = (0..threads).map(|_| Vec::new()).collect();
                for (i, job) in jobs.into_iter().enumerate() {
                    groups[i % threads].push(job);
                }
                let (mine, others) = groups.split_at_mut(1);
                // The scope returns when every spawned group is done, so the
                // workers' borrows of the batch end here (a panic in one is
                // re-raised here: drive() does not panic, so it is a bug).
                pool.in_place_scope(|s| {
                    for g in others.iter_mut() {
                        s.spawn(move |_| drive(g));
                    }
                    drive(&mut mine[0]);
                });
                jobs = groups.into_iter().flatten().collect();
            }
            _ => drive(&mut jobs),
        }
        let results: Vec<(usize, Result<u64, TransportError>)> = jobs
            .into_iter()
            .map(|j| (j.slot, j.err.map_or(Ok(j.posts), Err)))
            .collect();
        let mut posts = 0;
        let mut first_err = None;
        for (i, r) in results {
            match r {
                Ok(p) => posts += p,
                Err(e) => {
                    // The stream position is unknown: drop the connection.
                    self.conns[i] = None;
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(BatchStats {
            reads: reads.len() as u64,
            bytes: total,
            posts,
        })
    }
}
