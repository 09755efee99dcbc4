//! One client connection: the handshake and its deadlines, the request
//! loop (reads, health, stats, verbs set-up), and how it ends (logged,
//! counted, its queue pairs released).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seqfeed_wire::{ErrorCode, Frame, HealthOk, ServerAction, ServerConn, StatsOk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant as TokioInstant;

use super::{Budget, ClientEntry, Shared};
use crate::logs::{safe, WarnKind};
use crate::send::{linger_close, serve_reads, write_frame, write_slices};
use crate::ClientId;

enum End {
    /// The client closed or the node shuts down.
    Normal,
    /// The handshake was refused.
    Refused(String),
    /// The handshake was refused because the peer is blocked for failed
    /// proofs (counted, logged at debug level only).
    Blocked(String),
    /// A protocol or I/O error.
    Error(String),
}

pub(super) async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    kill: Arc<Notify>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let entry = Arc::new(ClientEntry {
        name: Mutex::new(String::new()),
        peer: peer.to_string(),
        ip: peer.ip(),
        batches: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    if let Ok(mut m) = shared.clients.lock() {
        m.insert(id, Arc::clone(&entry));
    }
    tracing::debug!(node = %shared.node, %peer, "connection opened");
    let mut verbs_used = false;
    let end = drive(
        &mut stream,
        &shared,
        &entry,
        ClientId(id),
        &mut verbs_used,
        &kill,
        shutdown,
    )
    .await;
    drop(stream);
    if let Ok(mut p) = shared.pending.lock() {
        p.remove(&id);
    }
    // The name comes from the wire: escaped before it reaches a log line.
    let client = safe(&entry.name.lock().map(|n| n.clone()).unwrap_or_default());
    if verbs_used {
        // The connection's queue pairs die with it (destroying QPs may block).
        if let Some(acceptor) = shared.verbs.clone() {
            let done =
                tokio::task::spawn_blocking(move || acceptor.disconnected(ClientId(id))).await;
            if let Err(e) = done {
                tracing::warn!(node = %shared.node, %peer, %client, "releasing verbs queue pairs failed: {e}");
            }
        }
    }
    match end {
        End::Normal => tracing::debug!(node = %shared.node, %peer, %client, "connection closed"),
        End::Blocked(why) => {
            shared.counters.refused.fetch_add(1, Relaxed);
            shared.auth.refused_blocked.fetch_add(1, Relaxed);
            tracing::debug!(node = %shared.node, %peer, "handshake refused: {}", safe(&why));
        }
        End::Refused(why) => {
            shared.counters.refused.fetch_add(1, Relaxed);
            shared.warn(WarnKind::Refused, peer.ip(), || {
                let why = safe(&why);
                tracing::warn!(node = %shared.node, %peer, "handshake refused: {why}");
            });
        }
        End::Error(why) => {
            shared.counters.errors.fetch_add(1, Relaxed);
            shared.warn(WarnKind::ConnectionError, peer.ip(), || {
                let why = safe(&why);
                tracing::warn!(node = %shared.node, %peer, %client, "closing connection: {why}");
            });
        }
    }
    if let Ok(mut m) = shared.clients.lock() {
        m.remove(&id);
    }
    shared.counters.connections_open.fetch_sub(1, Relaxed);
}

async fn drive(
    stream: &mut TcpStream,
    shared: &Arc<Shared>,
    entry: &Arc<ClientEntry>,
    id: ClientId,
    verbs_used: &mut bool,
    kill: &Notify,
    mut shutdown: watch::Receiver<bool>,
) -> End {
    let g = shared.guards;
    let ip = entry.ip;
    let mut nonce = [0u8; seqfeed_wire::NONCE_LEN];
    if shared.policy.secret.is_some() {
        if let Err(e) = getrandom::getrandom(&mut nonce) {
            return End::Error(format!("drawing a handshake nonce from the OS RNG: {e}"));
        }
    }
    let mut conn = ServerConn::new(Arc::clone(&shared.policy), nonce);
    let mut was_blocked = false;
    let mut budget = Budget { shared, held: 0 };
    let mut buf = vec![0u8; 64 * 1024];
    let handshake_deadline = TokioInstant::now() + g.handshake_timeout;
    let mut frame_deadline: Option<TokioInstant> = None;
    let write_late = |what: &str| {
        shared.counters.timed_out.fetch_add(1, Relaxed);
        End::Error(format!(
            "write deadline: the client took no byte of {what} for {:?}",
            g.write_timeout
        ))
    };
    loop {
        let mut decoded = false;
        while let Some(action) = conn.poll() {
            decoded = true;
            let r = match action {
                ServerAction::Send(f) => {
                    if let (Frame::Welcome(_), Some(c)) = (&f, conn.client()) {
                        if let Ok(mut n) = entry.name.lock() {
                            *n = c.to_owned();
                        }
                        // Authenticated: no longer counted (or shed) as pending.
                        if let Ok(mut p) = shared.pending.lock() {
                            p.remove(&id.0);
                        }
                        tracing::debug!(node = %shared.node, client = %safe(c), "handshake accepted");
                    }
                    write_frame(stream, &f, g.write_timeout).await
                }
                ServerAction::ServeReads { batch, total } => {
                    // Counted before the write, so a client that has its
                    // data sees it in the counters (a failed write is
                    // counted as an error as well).
                    let n = batch.reads.len() as u64;
                    for (c, v) in [
                        (&shared.counters.batches, 1),
                        (&shared.counters.reads, n),
                        (&shared.counters.bytes, total),
                        (&entry.batches, 1),
                        (&entry.reads, n),
                        (&entry.bytes, total),
                    ] {
                        c.fetch_add(v, Relaxed);
                    }
                    let started = Instant::now();
                    let r = serve_reads(
                        stream,
                        &shared.table,
                        &shared.node,
                        &batch,
                        total,
                        g.write_timeout,
                    )
                    .await;
                    if r.is_ok() {
                        shared.latency.observe(started.elapsed());
                    }
                    r
                }
                ServerAction::Health => {
                    let f = Frame::HealthOk(HealthOk {
                        node: shared.node_counters(),
                        you: entry.snapshot(),
                    });
                    write_frame(stream, &f, g.write_timeout).await
                }
                ServerAction::Stats => {
                    let f = Frame::StatsOk(StatsOk {
                        node: shared.node_counters(),
                        clients: shared.stats_clients(),
                    });
                    write_frame(stream, &f, g.write_timeout).await
                }
                ServerAction::Manifests => match &shared.manifests {
                    Some(bytes) => {
                        write_slices(stream, &mut [std::io::IoSlice::new(bytes)], g.write_timeout)
                            .await
                    }
                    None => {
                        let f = Frame::Error {
                            code: ErrorCode::NOT_SUPPORTED,
                            message: format!(
                                "node {} serves plain files without source manifests (started with a fixed fingerprint); give the trainer a shapes file or the dataset",
                                shared.node
                            ),
                        };
                        write_frame(stream, &f, g.write_timeout).await
                    }
                },
                ServerAction::VerbsConnect(req) => {
                    let f = verbs_connect(shared, id, conn.client().unwrap_or(""), req, verbs_used)
                        .await;
                    write_frame(stream, &f, g.write_timeout).await
                }
                ServerAction::Close { frame, reason } => {
                    let refused = matches!(frame, Some(Frame::Refused { .. }));
                    if conn.auth_failed() {
                        auth_failed(shared, ip);
                    }
                    if let Some(f) = frame {
                        let _ = tokio::time::timeout(
                            g.write_timeout.min(Duration::from_secs(2)),
                            stream.write_all(&f.to_bytes()),
                        )
                        .await;
                    }
                    linger_close(stream).await;
                    return if refused && was_blocked {
                        End::Blocked(reason)
                    } else if refused {
                        End::Refused(reason)
                    } else {
                        End::Error(reason)
                    };
                }
            };
            match r {
                Ok(()) => {}
                Err(Some(e)) => return End::Error(format!("write failed: {e}")),
                Err(None) => return write_late("its answer"),
            }
        }
        budget.settle(conn.buffered() as u64);
        // A client may idle between requests for as long as it likes (a
        // trainer checkpointing). Bounded are: the whole handshake, each
        // frame from its first byte on, and the silence inside either.
        let now = TokioInstant::now();
        let authenticated = conn.client().is_some();
        let partial = conn.has_partial_frame();
        if !partial {
            frame_deadline = None;
        } else if frame_deadline.is_none() || decoded {
            // A frame started after the last one decoded (at most one
            // read ago).
            frame_deadline = Some(now + g.frame_timeout);
        }
        let mut deadlines: Vec<(TokioInstant, String)> = Vec::with_capacity(3);
        if !authenticated {
            deadlines.push((
                handshake_deadline,
                format!("no complete handshake within {:?}", g.handshake_timeout),
            ));
        }
        if let Some(d) = frame_deadline {
            deadlines.push((
                d,
                format!(
                    "a frame started and not complete within {:?}",
                    g.frame_timeout
                ),
            ));
        }
        if !authenticated || partial {
            deadlines.push((
                now + g.idle_timeout,
                format!(
                    "no complete {} and nothing received for {:?}",
                    if authenticated { "frame" } else { "handshake" },
                    g.idle_timeout
                ),
            ));
        }
        let first = deadlines.into_iter().min_by_key(|(d, _)| *d);
        let sleep_until = first
            .as_ref()
            .map_or(now + Duration::from_secs(365 * 24 * 3600), |(d, _)| *d);
        let read = tokio::select! {
            r = stream.read(&mut buf) => r,
            _ = tokio::time::sleep_until(sleep_until) => {
                shared.counters.timed_out.fetch_add(1, Relaxed);
                return End::Error(first.map_or_else(String::new, |(_, why)| why));
            }
            _ = kill.notified() => {
                return End::Error(format!(
                    "shed: more than {} connections in their handshake (or out of file descriptors); this was the oldest",
                    g.max_unauthenticated
                ));
            }
            _ = shutdown.changed() => return End::Normal,
        };
        match read {
            Ok(0) => return End::Normal,
            Ok(n) => {
                if !budget.take(n as u64) {
                    shared.counters.over_budget.fetch_add(1, Relaxed);
                    let _ = tokio::time::timeout(
                        g.write_timeout.min(Duration::from_secs(2)),
                        stream.write_all(
                            &Frame::Error {
                                code: ErrorCode::TOO_LARGE,
                                message: format!(
                                    "node {}: receive budget of {} bytes exhausted",
                                    shared.node, g.max_buffered_bytes
                                ),
                            }
                            .to_bytes(),
                        ),
                    )
                    .await;
                    return End::Error(format!(
                        "node-wide receive budget of {} bytes exhausted ({} buffered by this connection)",
                        g.max_buffered_bytes, budget.held
                    ));
                }
                if conn.in_handshake() && shared.policy.secret.is_some() {
                    if let Some(why) = shared.auth.check(&shared.node, ip) {
                        conn.block(why);
                        was_blocked = true;
                    }
                }
                conn.feed(&buf[..n]);
            }
            Err(e) => return End::Error(format!("read failed: {e}")),
        }
    }
}

/// Counts a wrong proof from `ip` and, when it blocks the peer, says so in
/// one (rate-limited) warning.
fn auth_failed(shared: &Shared, ip: IpAddr) {
    if let Some(b) = shared.auth.failed(ip) {
        shared.warn(WarnKind::AuthBlocked, ip, || {
            tracing::warn!(
                node = %shared.node,
                peer = %ip,
                "too many wrong shared-secret proofs from {ip}: refusing its handshakes for {:?} (block {})",
                b.duration,
                b.strike
            );
        });
    }
}

async fn verbs_connect(
    shared: &Arc<Shared>,
    id: ClientId,
    client: &str,
    req: seqfeed_wire::VerbsConnect,
    verbs_used: &mut bool,
) -> Frame {
    let Some(acceptor) = shared.verbs.clone() else {
        return Frame::Error {
            code: ErrorCode::NOT_SUPPORTED,
            message: format!("verbs not enabled on node {}", shared.node),
        };
    };
    let client = client.to_owned();
    let node = shared.node.clone();
    // From here on the acceptor may hold queue pairs for this connection.
    *verbs_used = true;
    let limits = shared.verbs_qp_limits;
    match tokio::task::spawn_blocking(move || acceptor.accept(id, &client, &req, &limits)).await {
        Ok(Ok(accept)) => Frame::VerbsAccept(accept),
        Ok(Err(message)) => Frame::Error {
            code: ErrorCode::INTERNAL,
            message: format!("node {node}: verbs connect failed: {message}"),
        },
        Err(e) => Frame::Error {
            code: ErrorCode::INTERNAL,
            message: format!("node {node}: verbs connect task failed: {e}"),
        },
    }
}
