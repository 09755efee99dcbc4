//! The node's Prometheus endpoint over real sockets: counters that match
//! what a client read, errors by kind, the batch-latency histogram, and a
//! bounded HTTP front (404, 405, an oversized head, a silent scraper).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use seqfeed_node::{Node, NodeConfig};
use seqfeed_transport::{TcpTransport, Transport, TransportError};

fn http(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_owned(), body.to_owned())
}

fn scrape(addr: SocketAddr) -> String {
    let (head, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: node\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn metrics_count_what_clients_read_and_what_was_refused() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let mut cfg = NodeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some("metrics-test-secret".into());
    let node = Node::start(cfg).unwrap();
    let m = node.metrics_addr().expect("metrics address");

    let before = scrape(m);
    assert_eq!(sample(&before, "seqfeed_node_bytes_served_total"), 0.0);
    assert_eq!(
        sample(&before, "seqfeed_node_read_batch_seconds_count"),
        0.0
    );

    // Two batches over one connection.
    let mut o = common::opts(1);
    o.secret = Some("metrics-test-secret".into());
    let mut tcp = TcpTransport::connect(node.local_addr(), &o).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let regions = tcp.regions().to_vec();
    let mut bytes = 0u64;
    let mut reads = 0u64;
    for n in [20, 35] {
        let (batch, len) = common::random_batch(&mut rng, &regions, n, 50_000);
        let mut dst = vec![0u8; len];
        let st = tcp.read_batch(&batch, &mut dst).unwrap();
        bytes += st.bytes;
        reads += batch.iter().filter(|r| r.len > 0).count() as u64;
    }
    // A client with the wrong secret is refused.
    let mut bad = common::opts(1);
    bad.secret = Some("wrong".into());
    bad.retries = 0;
    let e = TcpTransport::connect(node.local_addr(), &bad).unwrap_err();
    assert!(matches!(e, TransportError::Refused { .. }), "{e}");

    // The node counts a refused handshake when it has closed that
    // connection, just after the client read the refusal: scrape until it
    // shows (bounded).
    let t = std::time::Instant::now();
    let body = loop {
        let body = scrape(m);
        let refused = sample(
            &body,
            "seqfeed_node_errors_total{kind=\"handshake_refused\"}",
        );
        if refused >= 1.0 || t.elapsed() > Duration::from_secs(5) {
            break body;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        sample(&body, "seqfeed_node_bytes_served_total"),
        bytes as f64
    );
    assert_eq!(
        sample(&body, "seqfeed_node_reads_served_total"),
        reads as f64
    );
    assert_eq!(sample(&body, "seqfeed_node_batches_served_total"), 2.0);
    assert_eq!(sample(&body, "seqfeed_node_read_batch_seconds_count"), 2.0);
    assert!(sample(&body, "seqfeed_node_read_batch_seconds_sum") > 0.0);
    // Every batch took less than the top bucket: the +Inf bucket holds both.
    assert_eq!(
        sample(&body, "seqfeed_node_read_batch_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    assert_eq!(
        sample(&body, "seqfeed_node_errors_total{kind=\"auth_failure\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            "seqfeed_node_errors_total{kind=\"handshake_refused\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&body, "seqfeed_node_errors_total{kind=\"timed_out\"}"),
        0.0
    );
    assert_eq!(
        sample(
            &body,
            "seqfeed_node_connections_open{state=\"authenticated\"}"
        ),
        1.0
    );
    assert!(sample(&body, "seqfeed_node_connections_accepted_total") >= 2.0);
    // Without verbs there is no QP gauge.
    assert!(!body.contains("seqfeed_node_queue_pairs_open"), "{body}");
    drop(tcp);
    node.shutdown();
}

#[test]
fn the_metrics_front_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let mut cfg = NodeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let node = Node::start(cfg).unwrap();
    let m = node.metrics_addr().unwrap();

    let (head, _) = http(m, b"GET /secret HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = http(m, b"POST /metrics HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    // A head that never ends: answered 431 once it passes 8 KiB.
    let mut long = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    let (head, _) = http(m, &long);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    // A silent scraper does not hold up the next one.
    let _silent = TcpStream::connect(m).unwrap();
    let t = Instant::now();
    let body = scrape(m);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(body.contains("seqfeed_node_uptime_seconds"));
    node.shutdown();
}
