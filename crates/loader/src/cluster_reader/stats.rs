//! Per-node counters of a [`ClusterReader`]: bytes, rows and batches read,
//! errors by kind, rows failed over, reconnects, CRC mismatches and a
//! latency histogram of read batches ([`NodeStats`], from
//! [`ClusterReader::node_stats`]).

use std::time::Duration;

use seqfeed_transport::TransportError;

use super::ClusterReader;

/// Errors from one node, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// The node did not answer within the io timeout (a read or a connect).
    pub timeout: u64,
    /// Other connection failures: refused, reset, closed.
    pub connection: u64,
    /// The node refused the session or answered with a malformed frame.
    pub protocol: u64,
    /// Backend failures (e.g. RDMA work completion errors).
    pub backend: u64,
    /// Anything else (out-of-bounds reads, unsupported destinations).
    pub other: u64,
}

impl ErrorCounts {
    /// Counts `e` under its kind.
    pub(super) fn count(&mut self, e: &TransportError) {
        match e {
            TransportError::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                self.timeout += 1
            }
            TransportError::Io { .. } => self.connection += 1,
            TransportError::Protocol { .. } | TransportError::Refused { .. } => self.protocol += 1,
            TransportError::Backend { .. } => self.backend += 1,
            _ => self.other += 1,
        }
    }

    /// All errors.
    pub fn total(&self) -> u64 {
        self.timeout + self.connection + self.protocol + self.backend + self.other
    }
}

/// Buckets of [`LatencyHistogram`]: bucket `i` counts batches that took
/// less than `2^i` microseconds (the last one: everything slower).
pub const LATENCY_BUCKETS: usize = 26;

/// A histogram of read-batch latencies in power-of-two microsecond buckets
/// (1 us .. 32 s), fixed size, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Batches per bucket; see [`LATENCY_BUCKETS`].
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Batches recorded.
    pub count: u64,
    /// Sum of their latencies, in microseconds.
    pub sum_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: [0; LATENCY_BUCKETS],
            count: 0,
            sum_us: 0,
        }
    }
}

impl LatencyHistogram {
    /// Records one batch that took `d`.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        // Bucket i holds [2^(i-1), 2^i) us; 0 us goes to bucket 0.
        let i = (64 - us.leading_zeros()) as usize;
        self.buckets[i.min(LATENCY_BUCKETS - 1)] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// The latency below which a fraction `q` (0..=1) of the batches fall,
    /// as the upper bound of its bucket (within a factor of 2); `None`
    /// before the first batch.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(1u64 << i));
            }
        }
        Some(Duration::from_micros(1u64 << (LATENCY_BUCKETS - 1)))
    }

    /// Mean latency; `None` before the first batch.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.sum_us / self.count))
    }
}

/// Counters of one storage node as a reader sees it, over the reader's
/// lifetime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// The node's name.
    pub name: String,
    /// Whether it is connected now.
    pub live: bool,
    /// Bytes read from it.
    pub bytes: u64,
    /// Sequences (rows) read from it.
    pub reads: u64,
    /// Read batches issued to it (including failed ones).
    pub batches: u64,
    /// Failed reads and reconnect attempts, by kind.
    pub errors: ErrorCounts,
    /// Rows moved from it to replicas (its failures and damaged copies).
    pub failed_over: u64,
    /// Times it was reconnected after a failure.
    pub reconnects: u64,
    /// Rows from it that failed their file's CRC32C check.
    pub crc_mismatches: u64,
    /// The last of them: `FILE sequence N`.
    pub last_crc_mismatch: Option<String>,
    /// How long it has been disconnected (`None` while connected). A dead
    /// node is probed in the background for as long as the reader lives.
    pub down_for: Option<Duration>,
    /// Its latest error while disconnected (`None` while connected).
    pub last_error: Option<String>,
    /// Latency of its read batches.
    pub latency: LatencyHistogram,
}

/// What a node's counters hold besides those [`Node`](super::Node) keeps anyway.
#[derive(Debug, Clone, Default)]
pub(super) struct Counters {
    pub reads: u64,
    pub batches: u64,
    pub errors: ErrorCounts,
    pub failed_over: u64,
    pub reconnects: u64,
    pub latency: LatencyHistogram,
}

impl ClusterReader {
    /// Each node's counters, in spec order.
    pub fn node_stats(&self) -> Vec<NodeStats> {
        self.nodes
            .iter()
            .map(|n| NodeStats {
                name: n.spec.name.clone(),
                live: n.live(),
                bytes: n.bytes,
                reads: n.counters.reads,
                batches: n.counters.batches,
                errors: n.counters.errors,
                failed_over: n.counters.failed_over,
                reconnects: n.counters.reconnects,
                crc_mismatches: n.crc_mismatches,
                last_crc_mismatch: n.last_crc_mismatch.clone(),
                down_for: n.down_since.map(|t| t.elapsed()),
                last_error: n.last_error.clone(),
                latency: n.counters.latency,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_bucket_upper_bounds() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(100)); // bucket [64, 128)
        }
        h.record(Duration::from_millis(3)); // [2048, 4096)
        h.record(Duration::from_secs(100)); // past the last bucket
        assert_eq!(h.count, 100);
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(128)));
        assert_eq!(h.quantile(0.98), Some(Duration::from_micros(128)));
        assert_eq!(h.quantile(0.99), Some(Duration::from_micros(4096)));
        assert_eq!(
            h.quantile(1.0),
            Some(Duration::from_micros(1 << (LATENCY_BUCKETS - 1)))
        );
        assert_eq!(h.buckets.iter().sum::<u64>(), 100);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let mut c = ErrorCounts::default();
        let io = |k| TransportError::Io {
            node: "n".into(),
            what: "x".into(),
            source: std::io::Error::from(k),
        };
        c.count(&io(std::io::ErrorKind::WouldBlock));
        c.count(&io(std::io::ErrorKind::TimedOut));
        c.count(&io(std::io::ErrorKind::ConnectionReset));
        c.count(&TransportError::Protocol {
            node: "n".into(),
            what: "x".into(),
        });
        assert_eq!(
            (c.timeout, c.connection, c.protocol, c.total()),
            (2, 1, 1, 4)
        );
    }
}
