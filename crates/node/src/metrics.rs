//! The node's Prometheus endpoint: `GET /metrics` on a listener of its own
//! (`NodeConfig::metrics_listen`, `seqfeed serve --metrics-listen`).
//!
//! Values are read from the node's counters at scrape time and encoded by
//! `prometheus-client` (OpenMetrics text). The endpoint is unauthenticated,
//! like every Prometheus exporter: it exposes counts, never client names or
//! data, and should listen on a management address. Requests are bounded:
//! 8 KiB of request head, 5 s to send it and to take the answer, at most
//! 16 scrapes at once.
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use seqfeed_wire::NodeCounters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::GuardStats;

/// Longest request head (request line and headers) accepted.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time a scraper gets to send its request and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more connections are closed at once.
const MAX_SCRAPES: usize = 16;
/// The content type of `prometheus_client::encoding::text`.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reports, read from the node at scrape time.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// Node-wide counters (the `Health` frame's).
    pub node: NodeCounters,
    /// Counters of the defences against hostile clients.
    pub guards: GuardStats,
    /// Queue pairs open for RDMA clients (`None` without verbs).
    pub qps: Option<usize>,
}

/// Reads a [`Snapshot`] from the running node.
pub(crate) type SnapshotFn = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// Time to serve one read batch, from the request to its last byte handed
/// to the kernel: buckets from 50 µs doubling to ~6.6 s.
#[derive(Debug, Clone)]
pub(crate) struct ReadLatency(Histogram);

impl ReadLatency {
    pub(crate) fn new() -> Self {
        ReadLatency(Histogram::new(exponential_buckets(50e-6, 2.0, 18)))
    }

    /// Records one batch.
    pub(crate) fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

struct NodeCollector {
    snapshot: SnapshotFn,
    latency: ReadLatency,
}

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCollector").finish_non_exhaustive()
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = (self.snapshot)();
        let (n, g) = (&s.node, &s.guards);
        gauge(
            &mut e,
            "seqfeed_node_uptime_seconds",
            "Seconds since the node started.",
            sat(n.uptime_ms / 1000),
        )?;
        counter(
            &mut e,
            "seqfeed_node_connections_accepted",
            "Connections accepted since start.",
            n.connections_total,
        )?;
        {
            let open = ConstGauge::new(0i64);
            let mut m = e.encode_descriptor(
                "seqfeed_node_connections_open",
                "Connections open now, by handshake state.",
                None,
                open.metric_type(),
            )?;
            let unauth = g.unauthenticated.min(n.connections_open);
            for (state, v) in [
                ("authenticated", n.connections_open - unauth),
                ("unauthenticated", unauth),
            ] {
                let labels = [("state", state)];
                ConstGauge::new(sat(v)).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut e,
            "seqfeed_node_batches_served",
            "Read batches served.",
            n.batches,
        )?;
        counter(
            &mut e,
            "seqfeed_node_reads_served",
            "Reads (sequence ranges) served.",
            n.reads,
        )?;
        counter(
            &mut e,
            "seqfeed_node_bytes_served",
            "Payload bytes served over tcp (RDMA reads bypass the node's CPU and are not counted).",
            n.bytes,
        )?;
        {
            let c = ConstCounter::new(0u64);
            let mut m = e.encode_descriptor(
                "seqfeed_node_errors",
                "Connections refused or closed, by kind: handshake_refused (any refused handshake), \
                 auth_failure (wrong proof of the secret), auth_blocked (peer blocked after failures), \
                 timed_out (handshake, frame, idle or write deadline), shed and rejected (connection caps), \
                 over_budget (receive budget), accept (accept failed, e.g. EMFILE), \
                 connection (protocol or I/O error).",
                None,
                c.metric_type(),
            )?;
            for (kind, v) in [
                ("handshake_refused", n.refused),
                ("auth_failure", g.auth_failures),
                ("auth_blocked", g.auth_refused_blocked),
                ("timed_out", g.timed_out),
                ("shed", g.shed),
                ("rejected", g.rejected),
                ("over_budget", g.over_budget),
                ("accept", g.accept_errors),
                ("connection", n.errors),
            ] {
                let labels = [("kind", kind)];
                ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut e,
            "seqfeed_node_buffered_bytes",
            "Received bytes of unfinished frames, over all connections.",
            sat(g.buffered_bytes),
        )?;
        gauge(
            &mut e,
            "seqfeed_node_buffered_peak_bytes",
            "The most seqfeed_node_buffered_bytes has been.",
            sat(g.buffered_peak),
        )?;
        if let Some(qps) = s.qps {
            gauge(
                &mut e,
                "seqfeed_node_queue_pairs_open",
                "RDMA queue pairs open for clients.",
                sat(qps as u64),
            )?;
        }
        let h = &self.latency.0;
        h.encode(e.encode_descriptor(
            "seqfeed_node_read_batch_seconds",
            "Time to serve one read batch over tcp, from its request to its last byte written.",
            None,
            h.metric_type(),
        )?)
    }
}

/// The registry a node's endpoint encodes.
pub(crate) fn registry(snapshot: SnapshotFn, latency: ReadLatency) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(NodeCollector { snapshot, latency }));
    r
}

/// The text a scrape returns.
pub(crate) fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Serves scrapes on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: too many scrapes at once; closing");
            continue;
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            if let Err(e) = scrape(stream, &registry).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
            drop(permit);
        });
    }
}

/// The request line of an HTTP request head, if the head is complete.
fn request_line(head: &[u8]) -> Option<&[u8]> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = &head[..end];
    Some(head.split(|&b| b == b'\n').next().unwrap_or(head))
}

/// The status and body answering one request line.
fn answer(line: &[u8], registry: &Registry) -> (&'static str, &'static str, String) {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => match render(registry) {
            Ok(body) => ("200 OK", CONTENT_TYPE, body),
            Err(_) => (
                "500 Internal Server Error",
                "text/plain",
                "encoding failed\n".into(),
            ),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "only /metrics is served here\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served here\n".into(),
        ),
    }
}

async fn scrape(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = async {
        let mut buf = [0u8; 1024];
        loop {
            if request_line(&head).is_some() {
                return Ok(true);
            }
            if head.len() >= MAX_REQUEST_HEAD {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the end of the request head",
                ));
            }
            head.extend_from_slice(&buf[..n]);
        }
    };
    let complete = tokio::time::timeout(IO_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
    let (status, ctype, body) = match request_line(&head) {
        Some(line) if complete => answer(line, registry),
        _ => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head over 8 KiB\n".into(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "writing the answer"))?
}

/// Binds the metrics listener (inside the node's runtime).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}
