//! Shared helpers of the node's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use seqfeed_format::{write_synthetic_source, Dtype};
use seqfeed_transport::{ConnectOptions, ReadRequest, RegionId, RegionInfo};

/// Writes a dataset of two sources (several files each) under `root`.
pub fn make_dataset(root: &Path) {
    write_synthetic_source(root.join("web"), "web", Dtype::U32, 1024, 600, 1, 1 << 20).unwrap();
    write_synthetic_source(
        root.join("code"),
        "code",
        Dtype::U16,
        512,
        1000,
        2,
        256 << 10,
    )
    .unwrap();
}

/// Connect options for tests: short timeouts, few retries.
pub fn opts(connections: usize) -> ConnectOptions {
    ConnectOptions {
        client_name: "test-client".into(),
        connections,
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(3),
        retries: 2,
        backoff: Duration::from_millis(50),
        ..ConnectOptions::default()
    }
}

/// A random batch over `regions`: `n` reads of up to `max_len` bytes,
/// packed into the destination in a shuffled order with gaps. Returns the
/// reads and the destination length.
pub fn random_batch(
    rng: &mut impl rand::Rng,
    regions: &[RegionInfo],
    n: usize,
    max_len: u64,
) -> (Vec<ReadRequest>, usize) {
    let mut reads = Vec::with_capacity(n);
    let mut dst = 0u64;
    for _ in 0..n {
        let r = &regions[rng.gen_range(0..regions.len())];
        let offset = rng.gen_range(0..r.len.max(1));
        let len = rng.gen_range(0..=(r.len - offset).min(max_len));
        dst += rng.gen_range(0..3);
        reads.push(ReadRequest {
            region: RegionId(r.id.0),
            offset,
            len: len as u32,
            dst_offset: dst,
        });
        dst += len;
    }
    // Same destination ranges, different request order.
    use rand::seq::SliceRandom;
    reads.shuffle(rng);
    (reads, dst as usize)
}
