//! Revival of dead nodes: connects with retries at start, reconnects with
//! exponential backoff after a failure, region-table lookups of a new
//! transport, and giving a node up.

use std::collections::HashMap;
use std::time::Instant;

use seqfeed_transport::{DeviceRegion, RegionId, Transport};

use super::{ClusterReader, Node, NodeSpec, RetryPolicy};
use crate::error::LoaderError;

impl ClusterReader {
    /// Tries to reconnect every dead node whose backoff has expired.
    pub(super) fn revive_due(&mut self) {
        let now = Instant::now();
        let due = |n: &Node| !n.live() && !n.given_up && n.retry_at <= now;
        if !self.nodes.iter().any(due) {
            return;
        }
        let mut withdrawn: Vec<DeviceRegion> = Vec::new();
        let index: HashMap<&str, usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        for node in &mut self.nodes {
            if !due(node) {
                continue;
            }
            match (node.spec.connect)() {
                Ok(t) => {
                    let mut regions = vec![None; self.files.len()];
                    match map_regions(&node.spec, t.as_ref(), &index, &mut regions) {
                        Ok(()) => {
                            tracing::info!(node = %node.spec.name, "node reconnected");
                            node.regions = regions;
                            node.set_transport(Some(t));
                            node.failures = 0;
                            // Device memory: the new transport registers it too, or
                            // the region is withdrawn (steps then read through host memory).
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
                        }
                        Err(e) => {
                            tracing::warn!(node = %node.spec.name, error = %e, "reconnected node has a wrong region table; giving it up");
                            node.last_error = Some(e.to_string());
                            node.given_up = true;
                        }
                    }
                }
                Err(e) => {
                    node.last_error = Some(e.to_string());
                    schedule_retry(node, &self.policy);
                }
            }
        }
        for r in withdrawn {
            self.unregister_device(r.addr, r.len);
        }
    }
}

/// Connects to a node, retrying with backoff up to `policy.start_attempts` times.
pub(super) fn connect_with_retry(
    spec: &NodeSpec,
    policy: &RetryPolicy,
) -> Result<Box<dyn Transport>, LoaderError> {
    let attempts = policy.start_attempts.max(1);
    let mut backoff = policy.backoff_initial;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match (spec.connect)() {
            Ok(t) => return Ok(t),
            Err(e) if attempt >= attempts || !e.is_node_failure() => {
                return Err(LoaderError::Connect {
                    node: spec.name.clone(),
                    attempts: attempt,
                    source: e,
                })
            }
            Err(e) => {
                tracing::debug!(node = %spec.name, attempt, error = %e, "connect failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(policy.backoff_max);
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

/// Schedules the next reconnect of a dead node, or gives it up.
pub(super) fn schedule_retry(node: &mut Node, policy: &RetryPolicy) {
    node.failures += 1;
    if node.failures > policy.max_reconnects {
        tracing::warn!(node = %node.spec.name, failures = node.failures, "giving up on node");
        node.given_up = true;
        return;
    }
    let shift = node.failures.saturating_sub(1).min(16);
    let backoff = policy
        .backoff_initial
        .saturating_mul(1u32 << shift)
        .min(policy.backoff_max);
    node.retry_at = Instant::now() + backoff;
}
