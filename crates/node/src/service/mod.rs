//! The tokio driver: accepts connections and runs each one's
//! [`ServerConn`] state machine, doing the I/O its actions ask for.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seqfeed_transport::{RegionInfo, RegionTable};
use seqfeed_wire::{ClientCounters, Frame, NodeCounters, ServerPolicy};
use tokio::sync::{watch, Notify};

use crate::auth::AuthGuard;
use crate::logs::{safe_bounded, WarnKind, WarnLimiter};
use crate::{GuardStats, NodeConfig, NodeError, NodeStats, VerbsAcceptor};

mod conn;

use conn::connection;

/// Longest client name in a stats reply, in characters after escaping.
const MAX_STATS_NAME: usize = 128;

#[derive(Default)]
struct Counters {
    connections_total: AtomicU64,
    connections_open: AtomicU64,
    refused: AtomicU64,
    batches: AtomicU64,
    reads: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    shed: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
    over_budget: AtomicU64,
    buffered: AtomicU64,
    buffered_peak: AtomicU64,
    accept_errors: AtomicU64,
}

/// The node's defences against hostile clients (from [`NodeConfig`]).
#[derive(Debug, Clone, Copy)]
struct Guards {
    idle_timeout: Duration,
    handshake_timeout: Duration,
    frame_timeout: Duration,
    write_timeout: Duration,
    max_connections: usize,
    max_unauthenticated: usize,
    max_buffered_bytes: u64,
    stats_max_clients: usize,
}

struct ClientEntry {
    name: Mutex<String>,
    peer: String,
    /// The peer's address (what failed proofs are counted by).
    ip: IpAddr,
    batches: AtomicU64,
    reads: AtomicU64,
    bytes: AtomicU64,
}

impl ClientEntry {
    fn snapshot(&self) -> ClientCounters {
        ClientCounters {
            client: self.name.lock().map(|n| n.clone()).unwrap_or_default(),
            peer: self.peer.clone(),
            batches: self.batches.load(Relaxed),
            reads: self.reads.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
        }
    }
}

struct Shared {
    node: String,
    policy: Arc<ServerPolicy>,
    table: Arc<RegionTable>,
    started: Instant,
    counters: Counters,
    clients: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
    next_conn: AtomicU64,
    verbs: Option<Arc<dyn VerbsAcceptor>>,
    /// Per-connection quota and node-wide cap of verbs QPs.
    verbs_qp_limits: seqfeed_verbs::QpLimits,
    guards: Guards,
    /// Connections still in their handshake, oldest first, each with the
    /// signal that sheds it.
    pending: Mutex<BTreeMap<u64, Arc<Notify>>>,
    warns: Mutex<WarnLimiter>,
    warn_interval: Duration,
    auth: AuthGuard,
    /// Time to serve each read batch (the /metrics histogram).
    latency: crate::metrics::ReadLatency,
    /// The encoded [`Frame::ManifestsOk`] (every source manifest), when the
    /// node serves a dataset; `None` for plain files with a fixed
    /// fingerprint.
    manifests: Option<Vec<u8>>,
}

impl Shared {
    fn node_counters(&self) -> NodeCounters {
        let c = &self.counters;
        NodeCounters {
            uptime_ms: self.started.elapsed().as_millis() as u64,
            connections_total: c.connections_total.load(Relaxed),
            connections_open: c.connections_open.load(Relaxed),
            refused: c.refused.load(Relaxed),
            batches: c.batches.load(Relaxed),
            reads: c.reads.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            errors: c.errors.load(Relaxed),
        }
    }

    /// Logs a per-connection warning through the rate limiter: `emit`
    /// writes the WARN line when this one is within the budget of its
    /// kind; a window's suppressed warnings come out as one summary line.
    fn warn(&self, kind: WarnKind, peer: IpAddr, emit: impl FnOnce()) {
        let (log, summary) = match self.warns.lock() {
            Ok(mut l) => l.admit(Instant::now(), kind, peer),
            Err(_) => (true, None),
        };
        if let Some(s) = summary {
            tracing::warn!(node = %self.node, "{s}");
        }
        if log {
            emit();
        }
    }

    /// Logs the summaries of the warning windows that ended (all: every
    /// window, at shutdown).
    fn flush_warnings(&self, all: bool) {
        let summaries = match self.warns.lock() {
            Ok(mut l) => l.flush(Instant::now(), all),
            Err(_) => Vec::new(),
        };
        for s in summaries {
            tracing::warn!(node = %self.node, "{s}");
        }
    }

    fn clients(&self) -> Vec<ClientCounters> {
        match self.clients.lock() {
            Ok(m) => m.values().map(|e| e.snapshot()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The stats reply's client list: the oldest `stats_max_clients`
    /// connections, names escaped and cut (they come from the wire).
    fn stats_clients(&self) -> Vec<ClientCounters> {
        let max = self.guards.stats_max_clients;
        let entries: Vec<Arc<ClientEntry>> = match self.clients.lock() {
            Ok(m) => m.values().take(max).cloned().collect(),
            Err(_) => Vec::new(),
        };
        entries
            .iter()
            .map(|e| {
                let mut c = e.snapshot();
                c.client = safe_bounded(&c.client, MAX_STATS_NAME);
                c
            })
            .collect()
    }

    fn unauthenticated(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Signals the oldest connection still in its handshake to close;
    /// false when there is none.
    fn shed_oldest_pending(&self) -> bool {
        let oldest = match self.pending.lock() {
            Ok(mut p) => p.pop_first(),
            Err(_) => None,
        };
        match oldest {
            Some((_, kill)) => {
                kill.notify_one();
                self.counters.shed.fetch_add(1, Relaxed);
                true
            }
            None => false,
        }
    }

    /// Whether a new connection may be served, shedding the oldest
    /// unauthenticated ones to make room. Called by the accept loop only,
    /// so admissions do not race each other.
    fn admit(&self) -> bool {
        let open = self.counters.connections_open.load(Relaxed) as usize;
        if open >= self.guards.max_connections && !self.shed_oldest_pending() {
            self.counters.rejected.fetch_add(1, Relaxed);
            return false;
        }
        if self.unauthenticated() >= self.guards.max_unauthenticated {
            self.shed_oldest_pending();
        }
        true
    }

    fn guard_stats(&self) -> GuardStats {
        let c = &self.counters;
        GuardStats {
            unauthenticated: self.unauthenticated() as u64,
            shed: c.shed.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            timed_out: c.timed_out.load(Relaxed),
            over_budget: c.over_budget.load(Relaxed),
            buffered_bytes: c.buffered.load(Relaxed),
            buffered_peak: c.buffered_peak.load(Relaxed),
            accept_errors: c.accept_errors.load(Relaxed),
            auth_failures: self.auth.failures.load(Relaxed),
            auth_refused_blocked: self.auth.refused_blocked.load(Relaxed),
            auth_peers: self.auth.peers() as u64,
        }
    }
}

/// This connection's share of the node-wide receive budget, given back
/// when it is dropped.
struct Budget<'a> {
    shared: &'a Shared,
    held: u64,
}

impl Budget<'_> {
    /// Takes `n` more bytes; false (taking nothing) when the node-wide
    /// budget would be exceeded.
    fn take(&mut self, n: u64) -> bool {
        let c = &self.shared.counters;
        let before = c.buffered.fetch_add(n, Relaxed);
        if before + n > self.shared.guards.max_buffered_bytes {
            c.buffered.fetch_sub(n, Relaxed);
            return false;
        }
        c.buffered_peak.fetch_max(before + n, Relaxed);
        self.held += n;
        true
    }

    /// Gives back what is held beyond `now` (bytes decoded since).
    fn settle(&mut self, now: u64) {
        if now < self.held {
            self.shared
                .counters
                .buffered
                .fetch_sub(self.held - now, Relaxed);
            self.held = now;
        }
    }
}

impl Drop for Budget<'_> {
    fn drop(&mut self) {
        self.settle(0);
    }
}

/// A running node. Dropping it (or [`NodeHandle::shutdown`]) stops the
/// service and closes every connection.
pub struct NodeHandle {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    fingerprint: String,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("node", &self.shared.node)
            .field("local_addr", &self.local_addr)
            .field("regions", &self.shared.table.len())
            .finish()
    }
}

impl NodeHandle {
    /// The address the node listens on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the Prometheus endpoint, when
    /// [`NodeConfig::metrics_listen`](crate::NodeConfig::metrics_listen) was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.shared.node
    }

    /// The dataset fingerprint the node publishes.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The published region table.
    pub fn regions(&self) -> &[RegionInfo] {
        self.shared.table.infos()
    }

    /// The mapped regions.
    pub fn table(&self) -> &Arc<RegionTable> {
        &self.shared.table
    }

    /// Whether verbs is enabled on this node.
    pub fn verbs_enabled(&self) -> bool {
        self.shared.verbs.is_some()
    }

    /// RDMA queue pairs the node holds now for its clients (`None`: verbs
    /// not enabled, or the acceptor does not count them). Each control
    /// connection's QPs are released when it closes.
    pub fn verbs_open_qps(&self) -> Option<usize> {
        self.shared.verbs.as_ref().and_then(|v| v.open_qps())
    }

    /// Counters of the defences against hostile clients (deadlines,
    /// connection caps, receive budget).
    pub fn guard_stats(&self) -> GuardStats {
        self.shared.guard_stats()
    }

    /// Current counters, node-wide and per open connection.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            node: self.shared.node_counters(),
            clients: self.shared.clients(),
        }
    }

    /// Takes over SIGINT and SIGTERM for this process: from now on they
    /// no longer kill it but are delivered to [`NodeHandle::wait_for_signal`].
    /// Call it before announcing the node, so that a signal arriving early
    /// still stops it cleanly.
    pub fn catch_signals(&mut self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        if self.signals.is_some() {
            return Ok(());
        }
        let Some(rt) = &self.runtime else {
            return Ok(());
        };
        let _guard = rt.enter();
        self.signals = Some((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ));
        Ok(())
    }

    /// Blocks until SIGINT or SIGTERM arrives and returns its name (calling
    /// [`NodeHandle::catch_signals`] first if needed). The service keeps
    /// running; call [`NodeHandle::shutdown`] afterwards.
    pub fn wait_for_signal(&mut self) -> std::io::Result<&'static str> {
        self.catch_signals()?;
        let (Some(rt), Some((int, term))) = (&self.runtime, &mut self.signals) else {
            return Ok("shutdown");
        };
        Ok(rt.block_on(async {
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        }))
    }

    /// Stops accepting, closes every connection (each releasing its verbs
    /// queue pairs) and stops the runtime (waiting at most a second for the
    /// connections to end and two more for blocking work).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            let _ = self.shutdown_tx.send(true);
            // Let the connections end on their own (briefly), so each one
            // releases what it holds (its verbs queue pairs) in order.
            let deadline = Instant::now() + Duration::from_secs(1);
            while self.shared.counters.connections_open.load(Relaxed) > 0
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            // The signal streams belong to the runtime: drop them first.
            self.signals = None;
            rt.shutdown_timeout(Duration::from_secs(2));
            self.shared.flush_warnings(true);
            tracing::info!(node = %self.shared.node, "node stopped");
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn start(
    config: NodeConfig,
    fingerprint: String,
    table: Arc<RegionTable>,
    manifests: Option<Vec<String>>,
) -> Result<NodeHandle, NodeError> {
    let node = config.node_name.clone();
    let io_err = |what, source| NodeError::Io {
        node: node.clone(),
        what,
        addr: config.listen,
        source,
    };
    let verbs = match &config.verbs {
        None => None,
        Some(factory) => Some(factory(&table).map_err(|what| NodeError::Verbs {
            node: node.clone(),
            what,
        })?),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.max(1))
        .thread_name("seqfeed-node")
        .enable_all()
        .build()
        .map_err(|e| io_err("starting the runtime for", e))?;
    // SO_REUSEADDR lets a restarted node take its port back at once;
    // SO_KEEPALIVE (inherited by accepted sockets on Linux) lets the kernel
    // drop connections of clients that vanished while idle.
    let listener = {
        let _guard = runtime.enter();
        let socket = if config.listen.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|e| io_err("creating a socket for", e))?;
        socket
            .set_reuseaddr(true)
            .and_then(|()| socket.set_keepalive(true))
            .map_err(|e| io_err("configuring the socket for", e))?;
        socket
            .bind(config.listen)
            .map_err(|e| io_err("binding", e))?;
        socket.listen(1024).map_err(|e| io_err("listening on", e))?
    };
    let local_addr = listener
        .local_addr()
        .map_err(|e| io_err("reading the address of", e))?;
    let policy = Arc::new(ServerPolicy {
        node: node.clone(),
        fingerprint: fingerprint.clone(),
        secret: config.secret.clone(),
        regions: table.infos().to_vec(),
        limits: config.limits,
    });
    let welcome = Frame::Welcome(seqfeed_wire::Welcome {
        version: seqfeed_wire::PROTOCOL_VERSION,
        node: node.clone(),
        fingerprint: fingerprint.clone(),
        regions: policy.regions.clone(),
        proof: Some([0; seqfeed_wire::PROOF_LEN]),
    })
    .to_bytes();
    if welcome.len() - seqfeed_wire::HEADER_LEN > config.limits.max_frame as usize {
        return Err(NodeError::TableTooLarge {
            node,
            regions: policy.regions.len(),
            bytes: welcome.len(),
            max: config.limits.max_frame,
        });
    }
    let manifests = match manifests {
        None => None,
        Some(manifests) => {
            let sources = manifests.len();
            let bytes = Frame::ManifestsOk { manifests }.to_bytes();
            if bytes.len() - seqfeed_wire::HEADER_LEN > config.limits.max_frame as usize {
                return Err(NodeError::ManifestsTooLarge {
                    node,
                    sources,
                    bytes: bytes.len(),
                    max: config.limits.max_frame,
                });
            }
            Some(bytes)
        }
    };
    let shared = Arc::new(Shared {
        node: node.clone(),
        policy,
        table,
        started: Instant::now(),
        counters: Counters::default(),
        clients: Mutex::new(BTreeMap::new()),
        next_conn: AtomicU64::new(0),
        verbs,
        verbs_qp_limits: config.verbs_qp_limits,
        guards: Guards {
            idle_timeout: config.idle_timeout,
            handshake_timeout: config.handshake_timeout,
            frame_timeout: config.frame_timeout,
            write_timeout: config.write_timeout,
            max_connections: config.max_connections.max(1),
            max_unauthenticated: config.max_unauthenticated.max(1),
            max_buffered_bytes: config.max_buffered_bytes,
            stats_max_clients: config.stats_max_clients,
        },
        pending: Mutex::new(BTreeMap::new()),
        warns: Mutex::new(WarnLimiter::new(config.warn_limit)),
        warn_interval: config.warn_limit.interval.max(Duration::from_millis(10)),
        auth: AuthGuard::new(config.auth_limit),
        latency: crate::metrics::ReadLatency::new(),
        manifests,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    runtime.spawn(warning_summaries(Arc::clone(&shared), shutdown_rx.clone()));
    let metrics_addr = match config.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = {
                let _guard = runtime.enter();
                crate::metrics::bind(addr)
            }
            .map_err(|source| NodeError::Io {
                node: node.clone(),
                what: "binding the metrics endpoint of",
                addr,
                source,
            })?;
            let bound = listener.local_addr().map_err(|source| NodeError::Io {
                node: node.clone(),
                what: "reading the metrics address of",
                addr,
                source,
            })?;
            let weak = Arc::downgrade(&shared);
            let snapshot: crate::metrics::SnapshotFn = Arc::new(move || {
                let s = weak.upgrade();
                crate::metrics::Snapshot {
                    node: s.as_ref().map(|s| s.node_counters()).unwrap_or_default(),
                    guards: s.as_ref().map(|s| s.guard_stats()).unwrap_or_default(),
                    qps: s
                        .as_ref()
                        .and_then(|s| s.verbs.as_ref().and_then(|v| v.open_qps())),
                }
            });
            let registry = crate::metrics::registry(snapshot, shared.latency.clone());
            runtime.spawn(crate::metrics::serve(
                listener,
                Arc::new(registry),
                shutdown_rx.clone(),
            ));
            tracing::info!(node = %node, addr = %bound, "metrics endpoint serving GET /metrics");
            Some(bound)
        }
    };
    runtime.spawn(accept_loop(listener, Arc::clone(&shared), shutdown_rx));
    tracing::info!(
        node = %node,
        addr = %local_addr,
        regions = shared.table.len(),
        fingerprint = %fingerprint,
        secret = config.secret.is_some(),
        verbs = shared.verbs.is_some(),
        "node serving"
    );
    Ok(NodeHandle {
        local_addr,
        metrics_addr,
        fingerprint,
        shared,
        shutdown_tx,
        signals: None,
        runtime: Some(runtime),
    })
}

/// Logs the suppressed-warning summaries of quiet windows (a busy window's
/// summary comes out with its next warning).
async fn warning_summaries(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.warn_interval) => shared.flush_warnings(false),
            _ = shutdown.changed() => break,
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    if !shared.admit() {
                        // Full of authenticated clients: close at once (the
                        // client sees a reset and retries with backoff).
                        drop(stream);
                        continue;
                    }
                    // Registered here, before the next accept, so the caps
                    // count it at once.
                    let id = shared.next_conn.fetch_add(1, Relaxed);
                    let kill = Arc::new(Notify::new());
                    if let Ok(mut p) = shared.pending.lock() {
                        p.insert(id, Arc::clone(&kill));
                    }
                    shared.counters.connections_total.fetch_add(1, Relaxed);
                    shared.counters.connections_open.fetch_add(1, Relaxed);
                    tokio::spawn(connection(stream, peer, id, kill, Arc::clone(&shared), shutdown.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: free a descriptor held by an
                    // unauthenticated connection, back off instead of
                    // spinning, and keep serving the open connections
                    // (they run on their own tasks). One line per warning
                    // interval; the rest are counted in its summary.
                    shared.counters.accept_errors.fetch_add(1, Relaxed);
                    if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) {
                        shared.shed_oldest_pending();
                    }
                    let any = IpAddr::from([0u8, 0, 0, 0]);
                    shared.warn(WarnKind::Accept, any, || {
                        tracing::warn!(node = %shared.node, error = %e, "accept failed; backing off");
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = shutdown.changed() => break,
                    }
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// `errno` values of a process (`EMFILE`) or the system (`ENFILE`) out of
/// file descriptors.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
