//! The fail-over policy of a step: rounds of reads until every row is in,
//! rows of a failed node moved to live replicas, and the fail-over window
//! that bounds how long a step waits for a replica of a file.

use std::time::{Duration, Instant};

use super::round::Dest;
use super::{ClusterReader, StepReadStats};
use crate::block::SeqRead;
use crate::error::LoaderError;

impl ClusterReader {
    pub(super) fn read_dest(
        &mut self,
        step: u64,
        reads: &[SeqRead],
        row_bytes: usize,
        mut dst: Dest<'_>,
    ) -> Result<StepReadStats, LoaderError> {
        let rows = reads.len();
        let dst_len = match &dst {
            Dest::Host(d) => d.len(),
            Dest::Device(r) => r.len(),
        };
        if rows.checked_mul(row_bytes).is_none_or(|n| n > dst_len) {
            return Err(LoaderError::BadRow {
                step,
                row: rows.saturating_sub(1),
                what: format!(
                    "{rows} rows of {row_bytes} bytes do not fit a {dst_len}-byte buffer"
                ),
            });
        }
        for (k, r) in reads.iter().enumerate() {
            if r.len as usize > row_bytes {
                return Err(LoaderError::BadRow {
                    step,
                    row: k,
                    what: format!("a {}-byte sequence in a {row_bytes}-byte row", r.len),
                });
            }
            if r.file as usize >= self.files.len() {
                return Err(LoaderError::BadRow {
                    step,
                    row: k,
                    what: format!(
                        "file index {} outside the {}-file table",
                        r.file,
                        self.files.len()
                    ),
                });
            }
        }

        let mut stats = StepReadStats {
            rows: rows as u64,
            bytes: reads.iter().map(|r| u64::from(r.len)).sum(),
            ..StepReadStats::default()
        };
        // The fail-over window opens at the step's first node failure (or
        // the first time a file has no live holder), not at the step's
        // start: a slow read does not eat into it.
        let mut window: Option<(Instant, Instant)> = None; // (opened, deadline)
        let policy = self.policy;
        let open = |w: &mut Option<(Instant, Instant)>| {
            *w.get_or_insert_with(|| {
                let now = Instant::now();
                (now, now + policy.failover_timeout)
            })
        };
        // Dead nodes this step has already had probed at once.
        let mut hurried: Vec<usize> = Vec::new();
        let mut pending: Vec<usize> = (0..rows).collect();
        let mut round = 0u32;
        while !pending.is_empty() {
            round += 1;
            // Reconnect dead nodes only while the window is open: once it has
            // passed, the step finishes on the nodes still live or fails, so
            // the rounds are bounded.
            if window.is_none_or(|(_, deadline)| Instant::now() < deadline) {
                self.revive_due();
            }
            let owner = match self.assign(&pending, reads) {
                Ok(owner) => owner,
                Err(fi) if self.only_damaged_copies(fi) => {
                    return Err(LoaderError::Corrupt {
                        step,
                        file: self.files[fi].clone(),
                        what: self.holders[fi]
                            .iter()
                            .filter_map(|&n| self.nodes[n].bad_files[fi].clone())
                            .collect::<Vec<_>>()
                            .join("; "),
                    })
                }
                Err(fi) => {
                    // No live holder of file `fi`: wait for one until the
                    // window closes, its dead holders probed meanwhile (each
                    // at once the first time this step needs it, then at
                    // its backoff). Woken by any probe's result, when a
                    // holder's next probe is due, or at the deadline.
                    let (opened, deadline) = open(&mut window);
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(self.no_replica(step, fi, opened.elapsed()));
                    }
                    for &n in &self.holders[fi] {
                        if !hurried.contains(&n) {
                            hurried.push(n);
                            let node = &mut self.nodes[n];
                            node.retry_at = node.retry_at.min(now);
                        }
                    }
                    let due = self.holders[fi]
                        .iter()
                        .map(|&n| &self.nodes[n])
                        .filter(|n| !n.live() && !n.probing)
                        .map(|n| n.retry_at)
                        .min()
                        .unwrap_or(deadline);
                    self.wait_for_probe(due.min(deadline));
                    continue;
                }
            };
            let failed = self.read_round(
                step, reads, row_bytes, &mut dst, &pending, &owner, &mut stats,
            )?;
            if !failed.is_empty() {
                open(&mut window);
                tracing::debug!(
                    step,
                    round,
                    rows = failed.len(),
                    "moving rows of failed node(s) to replicas"
                );
                stats.failed_over += failed.len() as u64;
            }
            pending = failed;
        }
        Ok(stats)
    }

    /// The error of a step that found no live replica of file `fi` within
    /// the fail-over window, having waited `waited`: each holder with its
    /// latest state (down since when, its latest error, and the read that
    /// made it suspect; or its damaged copy).
    fn no_replica(&self, step: u64, fi: usize, waited: Duration) -> LoaderError {
        let tried = self.holders[fi]
            .iter()
            .map(|&n| {
                let node = &self.nodes[n];
                let name = &node.spec.name;
                if let Some(bad) = &node.bad_files[fi] {
                    return format!("{name} (damaged copy: {bad})");
                }
                if node.live() {
                    return format!("{name} (connected, no region for the file)");
                }
                let mut s = format!("{name} (");
                if let Some(since) = node.down_since {
                    s.push_str(&format!("down {} ms; ", since.elapsed().as_millis()));
                }
                let last = node.last_error.as_deref().unwrap_or("no error recorded");
                s.push_str(&format!("latest error: {last}"));
                match &node.down_because {
                    Some((what, e)) if e == last => s.push_str(&format!("; went down {what}")),
                    Some((what, e)) => s.push_str(&format!("; went down {what}: {e}")),
                    None => {}
                }
                s.push(')');
                s
            })
            .collect::<Vec<_>>()
            .join("; ");
        LoaderError::NoReplica {
            step,
            file: self.files[fi].clone(),
            waited_ms: waited.as_millis(),
            tried,
        }
    }

    /// Assigns each pending row to a live node holding its file. Returns the
    /// owner of each pending row (same order), or the index of a file with no
    /// live holder.
    fn assign(&self, pending: &[usize], reads: &[SeqRead]) -> Result<Vec<usize>, usize> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].live())
            .collect();
        let mut load = vec![0usize; self.nodes.len()];
        let mut owner = Vec::with_capacity(pending.len());
        let total = pending.len().max(1);
        for (i, &row) in pending.iter().enumerate() {
            let fi = reads[row].file as usize;
            // Preferred node for the i-th share of rows.
            let preferred = if live.is_empty() {
                None
            } else {
                Some(live[i * live.len() / total])
            };
            let holds = |n: usize| {
                let node = &self.nodes[n];
                node.live() && node.regions[fi].is_some() && node.bad_files[fi].is_none()
            };
            let pick = match preferred {
                Some(p) if holds(p) => Some(p),
                _ => self.holders[fi]
                    .iter()
                    .copied()
                    .filter(|&n| holds(n))
                    .min_by_key(|&n| load[n]),
            };
            let Some(n) = pick else {
                return Err(fi);
            };
            load[n] += 1;
            owner.push(n);
        }
        Ok(owner)
    }

    /// Whether every holder of file `fi` serves a damaged copy of it
    /// (waiting for a reconnect cannot help: a copy found damaged is not
    /// read again for the reader's lifetime).
    fn only_damaged_copies(&self, fi: usize) -> bool {
        let holders = &self.holders[fi];
        !holders.is_empty()
            && holders
                .iter()
                .all(|&n| self.nodes[n].bad_files[fi].is_some())
    }
}
