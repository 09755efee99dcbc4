//! Revival of dead nodes, off the step's path: connects at start (one
//! attempt per node in parallel, retries only for nodes the run cannot do
//! without), reconnects after a failure as background probes with
//! exponential backoff capped at [`RetryPolicy::backoff_max`], and
//! region-table lookups of a new transport.
//!
//! A dead node is never given up while the reader lives: storage nodes
//! restart for maintenance during runs that last weeks, and one that comes
//! back is taken back however long it was down. A probe is one connect
//! attempt on its own short-lived thread; a node has at most one in
//! flight, so there are never more probe threads than nodes, and a node
//! down for long costs one connect attempt per `backoff_max`. A step never
//! waits for a probe unless a file has no live holder at all (then for at
//! most the fail-over window). A frozen node (stopped process, wedged
//! host) accepts TCP connections and answers nothing, so each attempt costs
//! a whole io timeout: on the step's path that cost is what stalled runs.
//!
//! Logs: a node's failed probes are logged at info when the error changes
//! and after 1, 2, 4, 8, ... failures (so a node down for a week costs a
//! few dozen lines), at debug otherwise; its return at info.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use seqfeed_transport::{DeviceRegion, RegionId, Transport, TransportError};

use super::{name_timeout, ClusterReader, Node, NodeSpec, RetryPolicy, SharedConnector};
use crate::error::LoaderError;

/// The outcome of one background connect attempt: the node's index and the
/// transport, or why not.
pub(super) type ProbeResult = (usize, Result<Box<dyn Transport>, TransportError>);

impl ClusterReader {
    /// Takes in finished probes (installing reconnected transports) and
    /// starts one for every dead node whose backoff has expired. Never blocks.
    pub(super) fn revive_due(&mut self) {
        while let Ok((ni, res)) = self.probes.try_recv() {
            self.probe_done(ni, res);
        }
        let now = Instant::now();
        for (ni, node) in self.nodes.iter_mut().enumerate() {
            if node.live() || node.probing || node.retry_at > now {
                continue;
            }
            let connect: SharedConnector = node.connect.clone();
            let tx = self.probe_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("seqfeed-probe-{ni}"))
                .spawn(move || {
                    // The reader may be gone by now; the transport is then dropped.
                    let _ = tx.send((ni, connect()));
                });
            match spawned {
                Ok(_) => node.probing = true,
                Err(e) => {
                    probe_failed(
                        node,
                        &self.policy,
                        format!("cannot start a reconnect thread: {e}"),
                    );
                }
            }
        }
    }

    /// Waits until `until` at most for a probe to finish, and takes it in.
    pub(super) fn wait_for_probe(&mut self, until: Instant) {
        let now = Instant::now();
        if until <= now {
            return;
        }
        if let Ok((ni, res)) = self.probes.recv_timeout(until - now) {
            self.probe_done(ni, res);
        }
    }

    /// Takes in the outcome of node `ni`'s probe.
    fn probe_done(&mut self, ni: usize, res: Result<Box<dyn Transport>, TransportError>) {
        let Some(node) = self.nodes.get_mut(ni) else {
            return;
        };
        node.probing = false;
        let t = match res {
            Ok(t) => t,
            Err(e) => {
                let e = name_timeout(e);
                node.counters.errors.count(&e);
                probe_failed(node, &self.policy, e.to_string());
                return;
            }
        };
        let index: HashMap<&str, usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        let mut regions = vec![None; self.files.len()];
        if let Err(e) = map_regions(&node.spec, t.as_ref(), &index, &mut regions) {
            // Maybe a node restarted with part of its data: not taken back
            // now, probed again later like any dead node.
            probe_failed(node, &self.policy, format!("reconnected, but {e}"));
            return;
        }
        let down = node.down_since.map(|t| t.elapsed()).unwrap_or_default();
        tracing::info!(
            node = %node.spec.name,
            down_ms = down.as_millis() as u64,
            failures = node.failures,
            "node reconnected; reading from it again"
        );
        node.counters.reconnects += 1;
        node.regions = regions;
        node.set_transport(Some(t));
        node.failures = 0;
        node.down_since = None;
        node.last_error = None;
        node.down_because = None;
        // Device memory: the new transport registers it too, or the region
        // is withdrawn (steps then read through host memory).
        let mut withdrawn: Vec<DeviceRegion> = Vec::new();
        for region in &self.device {
            let Some(t) = node.transport.as_mut() else {
                break;
            };
            match t.register_device(region) {
                Ok(()) => node.device.push(*region),
                Err(e) => {
                    tracing::warn!(node = %node.spec.name, error = %e, "reconnected node refuses device memory {region}; reading those steps through host memory");
                    withdrawn.push(*region);
                }
            }
        }
        for r in withdrawn {
            self.unregister_device(r.addr(), r.len());
        }
    }
}

/// Start-up connects: one attempt per node, all in parallel. A node whose
/// first attempt fails is retried here (up to `policy.start_attempts` in
/// all, with backoff) only when the run may need it: it holds a file no
/// connected node holds, or its holdings are unknown (no file list). Any
/// other failed node is left to the background probes, so one frozen node
/// costs the start at most one connect attempt.
pub(super) fn connect_at_start(
    nodes: &[Node],
    index: &HashMap<&str, usize>,
    policy: &RetryPolicy,
) -> Vec<Result<Box<dyn Transport>, LoaderError>> {
    let panicked = |n: &Node| LoaderError::Connect {
        node: n.spec.name.clone(),
        attempts: 0,
        source: TransportError::Protocol {
            node: n.spec.name.clone(),
            what: "connect thread panicked".into(),
        },
    };
    let first: Vec<Result<Box<dyn Transport>, TransportError>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|n| {
                let spec = &n.spec;
                s.spawn(move || (spec.connect)())
            })
            .collect();
        handles
            .into_iter()
            .zip(nodes)
            .map(|(h, n)| {
                h.join().unwrap_or_else(|_| {
                    Err(TransportError::Protocol {
                        node: n.spec.name.clone(),
                        what: "connect thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    // Files some connected node holds (by its list, else its region table).
    let mut covered = vec![false; index.len()];
    for (n, r) in nodes.iter().zip(&first) {
        let Ok(t) = r else { continue };
        let names: Vec<&str> = match &n.spec.files {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => t.regions().iter().map(|r| r.name.as_str()).collect(),
        };
        for name in names {
            if let Some(&fi) = index.get(name) {
                covered[fi] = true;
            }
        }
    }
    let needed = |n: &Node| match &n.spec.files {
        None => true,
        Some(list) => list
            .iter()
            .any(|f| index.get(f.as_str()).is_some_and(|&fi| !covered[fi])),
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .zip(first)
            .map(|(n, r)| match r {
                Ok(t) => Ok(Ok(t)),
                Err(e) if needed(n) && e.is_node_failure() && policy.start_attempts > 1 => {
                    let spec = &n.spec;
                    Err(s.spawn(move || connect_with_retry(spec, policy, 1)))
                }
                Err(e) => Ok(Err(LoaderError::Connect {
                    node: n.spec.name.clone(),
                    attempts: 1,
                    source: name_timeout(e),
                })),
            })
            .collect();
        handles
            .into_iter()
            .zip(nodes)
            .map(|(h, n)| match h {
                Ok(r) => r,
                Err(h) => h.join().unwrap_or_else(|_| Err(panicked(n))),
            })
            .collect()
    })
}

/// Connects to a node, retrying with backoff up to `policy.start_attempts`
/// attempts in all, `done` of which were already made (and failed).
pub(super) fn connect_with_retry(
    spec: &NodeSpec,
    policy: &RetryPolicy,
    done: u32,
) -> Result<Box<dyn Transport>, LoaderError> {
    let attempts = policy.start_attempts.max(1);
    if done > 0 {
        std::thread::sleep(backoff(policy, done));
    }
    let mut attempt = done;
    loop {
        attempt += 1;
        match (spec.connect)() {
            Ok(t) => return Ok(t),
            Err(e) if attempt >= attempts || !e.is_node_failure() => {
                return Err(LoaderError::Connect {
                    node: spec.name.clone(),
                    attempts: attempt,
                    source: name_timeout(e),
                })
            }
            Err(e) => {
                tracing::debug!(node = %spec.name, attempt, error = %e, "connect failed; retrying");
                std::thread::sleep(backoff(policy, attempt));
            }
        }
    }
}

/// Looks up each file the node should hold in its region table.
pub(super) fn map_regions(
    spec: &NodeSpec,
    t: &dyn Transport,
    index: &HashMap<&str, usize>,
    out: &mut [Option<RegionId>],
) -> Result<(), LoaderError> {
    let by_name: HashMap<&str, RegionId> = t
        .regions()
        .iter()
        .map(|r| (r.name.as_str(), r.id))
        .collect();
    out.iter_mut().for_each(|r| *r = None);
    match &spec.files {
        Some(list) => {
            for name in list {
                let Some(&fi) = index.get(name.as_str()) else {
                    continue; // held but never read by this plan
                };
                let Some(&id) = by_name.get(name.as_str()) else {
                    return Err(LoaderError::MissingRegion {
                        node: spec.name.clone(),
                        file: name.clone(),
                    });
                };
                out[fi] = Some(id);
            }
        }
        None => {
            for (name, id) in by_name {
                if let Some(&fi) = index.get(name) {
                    out[fi] = Some(id);
                }
            }
        }
    }
    Ok(())
}

/// The backoff after `failures` consecutive failures: `backoff_initial`
/// doubled per failure after the first, capped at `backoff_max`.
pub(super) fn backoff(policy: &RetryPolicy, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    policy
        .backoff_initial
        .saturating_mul(1u32 << shift)
        .min(policy.backoff_max)
}

/// Schedules the next reconnect of a dead node after one more failure;
/// returns the backoff. Never gives the node up.
pub(super) fn schedule_retry(node: &mut Node, policy: &RetryPolicy) -> Duration {
    node.failures = node.failures.saturating_add(1);
    let wait = backoff(policy, node.failures);
    node.retry_at = Instant::now() + wait;
    wait
}

/// Records a failed probe of `node` (its latest error) and schedules the
/// next one; logs at info when the error changed or the failure count is a
/// power of two, at debug otherwise.
fn probe_failed(node: &mut Node, policy: &RetryPolicy, error: String) {
    let changed = node.last_error.as_deref() != Some(error.as_str());
    node.last_error = Some(error);
    let next = schedule_retry(node, policy);
    let down_ms = node
        .down_since
        .map(|t| t.elapsed().as_millis() as u64)
        .unwrap_or_default();
    let error = node.last_error.as_deref().unwrap_or_default();
    if changed || node.failures.is_power_of_two() {
        tracing::info!(node = %node.spec.name, failures = node.failures, down_ms, next_probe_ms = next.as_millis() as u64, error, "node still down; probing it in the background");
    } else {
        tracing::debug!(node = %node.spec.name, failures = node.failures, down_ms, next_probe_ms = next.as_millis() as u64, error, "reconnect failed");
    }
}
