//! `seqfeed health`: connect to a storage node, complete the handshake and
//! ask for its counters. Exit 0 when the node answers, 1 when it cannot be
//! reached or refuses. Used by container health checks and launchers to
//! wait for a node before starting the trainers.
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use seqfeed_transport::{ClusterFile, ConnectOptions, ControlClient};

/// Flags of `seqfeed health`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Node address (host:port), or a file holding it (what `serve --addr-file` writes).
    #[arg(required_unless_present = "cluster", conflicts_with = "cluster")]
    node: Option<String>,
    /// Check every node of this cluster file instead (exit 0 only if all answer).
    #[arg(long)]
    cluster: Option<PathBuf>,
    #[command(flatten)]
    secret: super::secret::SecretArgs,
    /// Dataset fingerprint the node must serve.
    #[arg(long)]
    fingerprint: Option<String>,
    /// Keep trying for this many ms until the node answers (0: one attempt).
    #[arg(long, default_value_t = 0)]
    wait_ms: u64,
    /// Timeout of one connect attempt and of each reply (ms).
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
    /// Print one JSON object instead of a line.
    #[arg(long)]
    json: bool,
}

/// Resolves the node argument: an address, or a file that holds one.
fn node_addr(node: &str) -> anyhow::Result<SocketAddr> {
    let path = PathBuf::from(node);
    let text = if path.is_file() {
        std::fs::read_to_string(&path)
            .with_context(|| format!("reading the node address from {}", path.display()))?
    } else {
        node.to_owned()
    };
    let text = text.trim();
    text.to_socket_addrs()
        .with_context(|| {
            format!("node address {text:?} (expected host:port or a file holding it)")
        })?
        .next()
        .with_context(|| format!("node address {text:?} resolves to nothing"))
}

/// Runs `seqfeed health`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let opts = ConnectOptions {
        client_name: format!("seqfeed-health/{}", std::process::id()),
        secret: args.secret.resolve()?,
        expected_fingerprint: args.fingerprint.clone(),
        connect_timeout: timeout,
        io_timeout: timeout,
        retries: 0,
        ..ConnectOptions::default()
    };
    let deadline = Instant::now() + Duration::from_millis(args.wait_ms);
    let targets: Vec<(String, String)> = match (&args.cluster, &args.node) {
        (Some(path), _) => {
            let cluster = ClusterFile::load(path)?;
            cluster
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.addr.clone()))
                .collect()
        }
        (None, Some(node)) => vec![(node.clone(), node.clone())],
        (None, None) => bail!("name a node (host:port or an address file) or --cluster FILE"),
    };
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for (name, node) in &targets {
        match check(node, &opts, deadline) {
            Ok(report) => reports.push(report),
            Err(e) if args.cluster.is_some() => {
                let msg = seqfeed_loader::error_message(e.as_ref());
                eprintln!("seqfeed health: node {name}: {msg}");
                failed.push(
                    serde_json::json!({ "node": name, "addr": node, "ok": false, "error": msg }),
                );
            }
            Err(e) => return Err(e),
        }
    }
    for r in &reports {
        if args.json {
            println!("{r}");
        } else {
            println!(
                "ok: node {} at {}, {} files, fingerprint {}, up {:.1} s, {} connections open, {} bytes served, health reply in {} us",
                r["node"].as_str().unwrap_or("?"),
                r["addr"].as_str().unwrap_or("?"),
                r["files"],
                r["fingerprint"].as_str().unwrap_or("?"),
                r["uptime_ms"].as_u64().unwrap_or(0) as f64 / 1e3,
                r["connections_open"],
                r["bytes"],
                r["rtt_us"],
            );
        }
    }
    if args.json {
        for f in &failed {
            println!("{f}");
        }
    }
    if !failed.is_empty() {
        bail!("{} of {} nodes did not answer", failed.len(), targets.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// Connects to one node (retrying until `deadline` while it is not up),
/// asks for its counters and returns them as a JSON object.
fn check(
    node: &str,
    opts: &ConnectOptions,
    deadline: Instant,
) -> anyhow::Result<serde_json::Value> {
    let mut attempts = 0u32;
    let (addr, mut client) = loop {
        attempts += 1;
        // The address file may appear only once the node listens.
        let attempt = node_addr(node).and_then(|addr| {
            ControlClient::connect_once(addr, opts)
                .map(|c| (addr, c))
                .map_err(anyhow::Error::from)
        });
        match attempt {
            Ok(ok) => break ok,
            Err(e) if Instant::now() < deadline && retryable(&e) => {
                tracing::debug!(attempts, error = %e, "node not ready; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(e.context(format!(
                    "node {node} is not healthy after {attempts} attempt(s)"
                )))
            }
        }
    };
    let t = Instant::now();
    let h = client
        .health()
        .with_context(|| format!("asking node {addr} for its counters"))?;
    let rtt_us = t.elapsed().as_micros() as u64;
    let w = client.welcome();
    Ok(serde_json::json!({
        "ok": true,
        "node": w.node,
        "addr": addr.to_string(),
        "fingerprint": w.fingerprint,
        "files": w.regions.len(),
        "uptime_ms": h.node.uptime_ms,
        "connections_open": h.node.connections_open,
        "batches": h.node.batches,
        "bytes": h.node.bytes,
        "errors": h.node.errors,
        "refused": h.node.refused,
        "rtt_us": rtt_us,
        "attempts": attempts,
    }))
}

/// Whether waiting can help: the node is not up yet (no address file, no
/// listener). A refusal (secret, fingerprint) will not change by waiting.
fn retryable(e: &anyhow::Error) -> bool {
    !e.chain().any(|c| {
        matches!(
            c.downcast_ref::<seqfeed_transport::TransportError>(),
            Some(seqfeed_transport::TransportError::Refused { .. })
        )
    })
}
