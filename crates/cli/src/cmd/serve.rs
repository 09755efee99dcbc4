//! `seqfeed serve`: run a storage node serving a dataset's sequence files
//! until SIGINT or SIGTERM.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use seqfeed_node::{Node, NodeConfig};
use seqfeed_transport::ClusterFile;

/// Flags of `seqfeed serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset root (one subdirectory per packed source).
    #[arg(long)]
    dataset: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:7000 (port 0 picks one and logs it).
    #[arg(long)]
    listen: SocketAddr,
    /// Serve only these dataset-relative files (comma-separated or repeated);
    /// default: every file of the dataset, or the node's files in --cluster.
    #[arg(long, value_delimiter = ',', conflicts_with = "cluster")]
    files: Vec<String>,
    /// Take the files to serve from this cluster file's entry for --name.
    #[arg(long, requires = "name")]
    cluster: Option<PathBuf>,
    /// Node name (handshake, logs, cluster entry). Default: node@LISTEN.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    secret: super::secret::SecretArgs,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Enable RDMA verbs (clients may connect queue pairs and read the
    /// mapped files with one-sided RDMA READs).
    #[arg(long)]
    verbs: bool,
    /// RDMA devices for --verbs (comma-separated or repeated; default:
    /// every device with an ACTIVE port).
    #[arg(long, value_delimiter = ',', requires = "verbs")]
    verbs_device: Vec<String>,
    /// Most RDMA queue pairs one client connection may hold (its quota;
    /// default 128). A request beyond it is refused, naming the quota.
    #[arg(long, requires = "verbs")]
    verbs_qp_quota: Option<usize>,
    /// Most RDMA queue pairs the node holds for all clients (default
    /// 16384). A request beyond it is refused; no client's QPs are evicted.
    #[arg(long, requires = "verbs")]
    verbs_max_qps: Option<usize>,
    /// Also listen for rdma_cm connect requests on this port (all RDMA
    /// devices): clients with SEQFEED_VERBS_CONNECT=cm connect their queue
    /// pairs with librdmacm (kernel route/neighbour or SA path resolution)
    /// instead of exchanging GIDs; authentication, regions and QP quotas
    /// stay on the control service.
    #[arg(long, requires = "verbs")]
    verbs_cm_port: Option<u16>,
    #[command(flatten)]
    fabric: super::fabric::FabricArgs,
    /// Write the bound address (host:port) to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g.
    /// 0.0.0.0:9400. Unauthenticated: counts only, no names or data; put it
    /// on a management network.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Most open connections (default 4096).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Most connections still in their handshake; the oldest are shed first (default 256).
    #[arg(long)]
    max_unauthenticated: Option<usize>,
    /// A client must finish its handshake within this many ms (default 5000).
    #[arg(long)]
    handshake_timeout_ms: Option<u64>,
    /// A frame, once started, must arrive whole within this many ms (default 10000).
    #[arg(long)]
    frame_timeout_ms: Option<u64>,
    /// A client that takes no byte of a reply for this many ms is dropped
    /// (default 30000; a slow client that keeps reading is not).
    #[arg(long)]
    write_timeout_ms: Option<u64>,
    /// Node-wide budget for partly received frames, in bytes (default 512 MiB).
    #[arg(long)]
    max_buffered_bytes: Option<u64>,
    /// Wrong proofs of the shared secret from one address within a minute
    /// that block it (default 5; 0 never blocks).
    #[arg(long)]
    auth_max_failures: Option<u32>,
    /// How long an address is first blocked, in ms; each further block
    /// doubles it, up to 5 min (default 1000).
    #[arg(long)]
    auth_backoff_ms: Option<u64>,
}

/// Runs `seqfeed serve`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut cfg = NodeConfig::new(&args.dataset, args.listen);
    if let Some(name) = &args.name {
        cfg.node_name = name.clone();
    }
    cfg.secret = args.secret.resolve()?;
    cfg.worker_threads = args.threads;
    cfg.metrics_listen = args.metrics_listen;
    let ms = Duration::from_millis;
    if let Some(n) = args.max_connections {
        cfg.max_connections = n;
    }
    if let Some(n) = args.max_unauthenticated {
        cfg.max_unauthenticated = n;
    }
    if let Some(t) = args.handshake_timeout_ms {
        cfg.handshake_timeout = ms(t);
    }
    if let Some(t) = args.frame_timeout_ms {
        cfg.frame_timeout = ms(t);
    }
    if let Some(t) = args.write_timeout_ms {
        cfg.write_timeout = ms(t);
    }
    if let Some(b) = args.max_buffered_bytes {
        cfg.max_buffered_bytes = b;
    }
    if let Some(n) = args.auth_max_failures {
        cfg.auth_limit.failures = n;
    }
    if let Some(t) = args.auth_backoff_ms {
        cfg.auth_limit.backoff = ms(t);
    }
    if args.fabric.any() && !args.verbs {
        bail!(
            "the fabric flags (--gid-index, --dscp, ...) set RDMA queue pairs: they need --verbs"
        );
    }
    if args.verbs {
        let devices = (!args.verbs_device.is_empty()).then(|| args.verbs_device.clone());
        if let Some(n) = args.verbs_qp_quota {
            cfg.verbs_qp_limits.per_connection = n;
        }
        if let Some(n) = args.verbs_max_qps {
            cfg.verbs_qp_limits.node = n;
        }
        let cm = args
            .verbs_cm_port
            .map(|p| SocketAddr::from(([0, 0, 0, 0], p)));
        cfg.verbs = Some(seqfeed_node::verbs_factory_cm(
            devices,
            Some(args.fabric.settings()?),
            cm,
        ));
    }
    if let Some(path) = &args.cluster {
        let cluster = ClusterFile::load(path)?;
        let name = cfg.node_name.clone();
        let Some(entry) = cluster.node(&name) else {
            bail!("cluster file {} has no node named {name:?}", path.display());
        };
        if entry.files.is_empty() {
            bail!(
                "node {name:?} holds no files in cluster file {}",
                path.display()
            );
        }
        cfg.files = Some(entry.files.clone());
    } else if !args.files.is_empty() {
        cfg.files = Some(args.files.clone());
    }
    let mut node = Node::start(cfg).context("starting the storage node")?;
    node.catch_signals()
        .context("installing SIGINT/SIGTERM handlers")?;
    let addr = node.local_addr();
    let bytes: u64 = node.regions().iter().map(|r| r.len).sum();
    eprintln!(
        "seqfeed serve: node {} listening on {addr}, {} files ({:.1} MiB), fingerprint {}",
        node.name(),
        node.regions().len(),
        bytes as f64 / (1 << 20) as f64,
        node.fingerprint()
    );
    if let Some(m) = node.metrics_addr() {
        eprintln!("seqfeed serve: metrics on http://{m}/metrics");
    }
    if let Some(path) = &args.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{addr}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "serving {} files on {addr}",
            node.regions().len()
        )),
    ]);
    let signal = node
        .wait_for_signal()
        .context("waiting for SIGINT/SIGTERM")?;
    let st = node.stats().node;
    tracing::info!(
        signal,
        batches = st.batches,
        bytes = st.bytes,
        connections = st.connections_total,
        refused = st.refused,
        errors = st.errors,
        "shutting down"
    );
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    node.shutdown();
    eprintln!(
        "seqfeed serve: stopped on {signal}: served {} batches, {} reads, {:.1} MiB to {} connections ({} refused, {} errors)",
        st.batches,
        st.reads,
        st.bytes as f64 / (1 << 20) as f64,
        st.connections_total,
        st.refused,
        st.errors
    );
    Ok(ExitCode::SUCCESS)
}

/// Tells systemd (a `Type=notify` unit: `NOTIFY_SOCKET` is set) that the
/// node is ready or stopping; does nothing outside systemd. A failure is
/// logged, never fatal: the node serves either way.
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd (NOTIFY_SOCKET)");
    }
}
