//! A restart storm against one storage node: 512 ranks (threads, each with
//! its own `TcpTransport`, as after a 1,024-GPU job restarts from a
//! checkpoint) connect at once with the node's default connection caps, and
//! each reads its first batch (32 x 8 KiB), checked byte for byte against
//! the local transport. Prints the time until the last rank has its first
//! batch as a ratio to one rank alone, measured in the same run (best of 3
//! storms), and what the node shed or rejected (must be 0).
//!
//!   cargo bench -p seqfeed-benches --bench restart_storm [-- RANKS]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use seqfeed_format::{write_synthetic_source, Dtype};
use seqfeed_node::{Node, NodeConfig};
use seqfeed_transport::{
    ConnectOptions, LocalTransport, ReadRequest, RegionId, RegionInfo, TcpTransport, Transport,
};

fn first_batch(regions: &[RegionInfo], rank: usize) -> Vec<ReadRequest> {
    (0..32)
        .map(|i| {
            let r = &regions[(rank + i) % regions.len()];
            ReadRequest {
                region: RegionId(r.id.0),
                offset: ((rank * 32 + i) as u64 * 4099) % (r.len - 8192),
                len: 8192,
                dst_offset: (i * 8192) as u64,
            }
        })
        .collect()
}

fn opts(rank: usize) -> ConnectOptions {
    ConnectOptions {
        client_name: format!("rank{rank}"),
        connections: 1,
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(20),
        retries: 5,
        backoff: Duration::from_millis(20),
        ..ConnectOptions::default()
    }
}

/// One storm: every rank connects at the barrier; returns the time to the
/// last first batch.
fn storm(node: &seqfeed_node::NodeHandle, ranks: usize, want: &Arc<Vec<Vec<u8>>>) -> Duration {
    let addr = node.local_addr();
    let regions = node.regions().to_vec();
    let barrier = Arc::new(Barrier::new(ranks + 1));
    let handles: Vec<_> = (0..ranks)
        .map(|r| {
            let barrier = Arc::clone(&barrier);
            let reads = first_batch(&regions, r);
            let want = Arc::clone(want);
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    barrier.wait();
                    let mut t = TcpTransport::connect(addr, &opts(r))
                        .unwrap_or_else(|e| panic!("rank {r}: {e}"));
                    let mut dst = vec![0u8; 32 * 8192];
                    t.read_batch(&reads, &mut dst)
                        .unwrap_or_else(|e| panic!("rank {r}: {e}"));
                    assert!(dst == want[r], "rank {r}: wrong bytes");
                    t
                })
                .unwrap()
        })
        .collect();
    let t0 = Instant::now();
    barrier.wait();
    // Connections stay open until every rank has its batch.
    let held: Vec<TcpTransport> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let all = t0.elapsed();
    drop(held);
    all
}

fn main() {
    let ranks: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(512);
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_source(
        dir.path().join("web"),
        "web",
        Dtype::U32,
        1024,
        2000,
        1,
        1 << 20,
    )
    .unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap())).unwrap();
    let files: Vec<String> = seqfeed_format::Dataset::open(dir.path())
        .unwrap()
        .all_files()
        .into_iter()
        .map(|f| f.2)
        .collect();
    let mut local = LocalTransport::open(dir.path(), &files).unwrap();
    let want: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..ranks)
            .map(|r| {
                let mut d = vec![0u8; 32 * 8192];
                local
                    .read_batch(&first_batch(node.regions(), r), &mut d)
                    .unwrap();
                d
            })
            .collect(),
    );
    let alone = seqfeed_benches::best_of(5, || {
        let _ = storm(&node, 1, &want);
    });
    let mut best = Duration::MAX;
    for _ in 0..3 {
        best = best.min(storm(&node, ranks, &want));
    }
    let g = node.guard_stats();
    println!(
        "restart storm: {ranks} ranks' first batches in {:.1} ms (best of 3); one rank alone {:.2} ms; node shed {}, rejected {}, timed out {}",
        best.as_secs_f64() * 1e3,
        alone.as_secs_f64() * 1e3,
        g.shed,
        g.rejected,
        g.timed_out
    );
    // Time ratio: how many times one rank's first batch the whole storm takes
    // (ideal: ranks x, if the node served one rank at a time with nothing shared).
    println!(
        "{:<48} {:>8.1}x of one rank alone (all {ranks} ranks served; {:.3}x of {ranks} ranks served one after another)",
        "restart storm: time to the last first batch",
        best.as_secs_f64() / alone.as_secs_f64(),
        best.as_secs_f64() / (alone.as_secs_f64() * ranks as f64)
    );
    assert_eq!((g.shed, g.rejected, g.timed_out), (0, 0, 0), "{g:?}");
    node.shutdown();
}
