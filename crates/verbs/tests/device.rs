//! Tests that need a real RDMA device (soft-RoCE rxe, InfiniBand or RoCE).
//! Without one they print why and return (the VM harness, which must have a
//! device, runs the same flows through `seqfeed-verbs-check` and fails there).

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use seqfeed_transport::{ReadRequest, RegionId, Transport};
use seqfeed_verbs::standalone::{serve, synthetic_byte, synthetic_region, TcpExchange};
use seqfeed_verbs::{probe, ClientOptions, Selection, ServedRegion, VerbsServer, VerbsTransport};

fn device_or_skip(test: &str) -> bool {
    match probe() {
        Selection::Verbs { devices } => {
            eprintln!("{test}: running on RDMA devices {devices:?}");
            true
        }
        Selection::Tcp { reason } => {
            eprintln!("SKIPPED {test}: no usable RDMA device here ({reason}); scripts/rxe/run.sh test runs it in a VM");
            false
        }
    }
}

/// `n` regions of `len` synthetic bytes (`synthetic_region(seed, r, len)`).
fn synthetic_regions(seed: u64, n: u32, len: usize) -> Vec<ServedRegion> {
    (0..n)
        .map(|r| ServedRegion {
            id: RegionId(r),
            name: format!("r{r}"),
            data: Arc::new(synthetic_region(seed, r, len)),
        })
        .collect()
}

#[test]
fn reads_match_the_source_bytes() {
    if !device_or_skip("reads_match_the_source_bytes") {
        return;
    }
    let seed = 42;
    let len = 1 << 20;
    let regions = synthetic_regions(seed, 3, len);
    let server = Arc::new(VerbsServer::open(None, regions).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    let h = std::thread::spawn(move || serve(server, listener, st));

    let ex = TcpExchange::connect(&addr).unwrap();
    let mut t = VerbsTransport::connect(
        &addr,
        Box::new(ex),
        ClientOptions {
            chain: 8,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(t.regions().len(), 3);
    let reads: Vec<ReadRequest> = (0..100u64)
        .map(|i| ReadRequest {
            region: RegionId((i % 3) as u32),
            offset: i * 4099,
            len: 4096 + i as u32,
            dst_offset: i * 9000,
        })
        .collect();
    let mut dst = vec![0u8; 100 * 9000];
    let st = t.read_batch(&reads, &mut dst).unwrap();
    assert_eq!(st.reads, 100);
    assert!(
        st.posts >= 100 / 8,
        "chains of at most 8: {} posts",
        st.posts
    );
    for r in &reads {
        for j in 0..u64::from(r.len) {
            assert_eq!(
                dst[(r.dst_offset + j) as usize],
                synthetic_byte(seed, r.region.0, r.offset + j)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(t);
    h.join().unwrap().unwrap();
}

/// QPs connected with rdma_cm (issue 10 item 4): the node listens, the
/// client resolves the node's rail address and connects; reads are exact.
#[test]
fn rdma_cm_connected_reads_match() {
    if !device_or_skip("rdma_cm_connected_reads_match") {
        return;
    }
    let seed = 7;
    let len = 1 << 16;
    let regions = synthetic_regions(seed, 2, len);
    let mut server = VerbsServer::open(None, regions).unwrap();
    let port = server.listen_cm("0.0.0.0:0".parse().unwrap()).unwrap();
    assert_eq!(server.cm_port(), Some(port));
    let server = Arc::new(server);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    let h = std::thread::spawn(move || serve(server, listener, st));
    let ex = TcpExchange::connect(&addr).unwrap();
    let mut t = VerbsTransport::connect(
        &addr,
        Box::new(ex),
        ClientOptions {
            connect: Some(seqfeed_verbs::ConnectMode::Cm),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(t.connect_mode(), seqfeed_verbs::ConnectMode::Cm);
    let reads: Vec<ReadRequest> = (0..20u64)
        .map(|i| ReadRequest {
            region: RegionId((i % 2) as u32),
            offset: i * 1000,
            len: 1000,
            dst_offset: i * 1000,
        })
        .collect();
    let mut dst = vec![0u8; 20 * 1000];
    t.read_batch(&reads, &mut dst).unwrap();
    for r in &reads {
        for j in 0..u64::from(r.len) {
            assert_eq!(
                dst[(r.dst_offset + j) as usize],
                synthetic_byte(seed, r.region.0, r.offset + j)
            );
        }
    }
    drop(t);
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap().unwrap();
}
