//! What the node writes to its log about hostile peers: peer-provided
//! strings escaped, and a flood of bad connections rate-limited into a
//! bounded number of WARN lines plus summaries.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use seqfeed_node::{Node, NodeConfig, WarnLimit};
use seqfeed_wire::{hello, Frame};

/// Everything every node of this test binary logged (one global
/// subscriber: the node's runtime threads log through it).
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Sink;
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(|| Sink)
            .init();
    });
}

/// The captured log lines of node `name`.
fn lines_of(name: &str) -> Vec<String> {
    let log = LOG.lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| l.contains(&format!("node={name}")))
        .map(str::to_owned)
        .collect()
}

/// Waits (at most 5 s) until node `name` logged a line matching `pred`.
fn wait_for(name: &str, pred: impl Fn(&str) -> bool) {
    let t0 = Instant::now();
    while !lines_of(name).iter().any(|l| pred(l)) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no such line from {name}:\n{}",
            lines_of(name).join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `bytes` and reads until the node closes the connection.
fn send_and_drain(addr: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

fn start(root: &std::path::Path, name: &str, limit: WarnLimit) -> seqfeed_node::NodeHandle {
    let mut c = NodeConfig::new(root, "127.0.0.1:0".parse().unwrap());
    c.node_name = name.into();
    c.warn_limit = limit;
    Node::start(c).unwrap()
}

#[test]
fn peer_provided_names_cannot_forge_log_lines() {
    capture();
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let node = start(dir.path(), "node-esc", WarnLimit::DEFAULT);
    let evil = "rank0\nFAKE WARN node=node-esc granted root\x1b[31m red \x1b[0m";
    // Accepted, then a frame the node rejects: the close is logged with the name.
    let hello_bytes = Frame::Hello(hello(evil, None)).to_bytes();
    send_and_drain(
        node.local_addr(),
        &[hello_bytes, b"GET / HTTP/1.1\r\n\r\n".to_vec()].concat(),
    );
    // Refused: a fingerprint from the wire ends up in the refusal reason.
    let refused = Frame::Hello(hello(evil, Some(evil))).to_bytes();
    send_and_drain(node.local_addr(), &refused);
    wait_for("node-esc", |l| l.contains("closing connection"));
    wait_for("node-esc", |l| l.contains("handshake refused"));
    drop(node);

    let log = String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned();
    assert!(!log.contains('\x1b'), "raw ESC in the log:\n{log}");
    for line in log.lines() {
        assert!(!line.starts_with("FAKE"), "forged line:\n{log}");
    }
    let lines = lines_of("node-esc");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("rank0\\nFAKE WARN") && l.contains("\\u{1b}[31m")),
        "the name is not logged escaped:\n{}",
        lines.join("\n")
    );
}

#[test]
fn a_flood_of_bad_connections_logs_a_bounded_number_of_warnings() {
    capture();
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let interval = Duration::from_millis(500);
    let node = start(dir.path(), "node-flood", WarnLimit { burst: 3, interval });
    let n = 60u64;
    let t0 = Instant::now();
    for _ in 0..n {
        send_and_drain(node.local_addr(), b"GET / HTTP/1.1\r\n\r\n");
    }
    let elapsed = t0.elapsed();
    let windows = (elapsed.as_secs_f64() / interval.as_secs_f64()).ceil() as usize + 1;
    // Quiet windows are summed up by the node's timer.
    wait_for("node-flood", |l| l.contains("suppressed"));
    std::thread::sleep(interval * 2);
    drop(node);

    let lines = lines_of("node-flood");
    let warns: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("closing connection"))
        .collect();
    assert!(!warns.is_empty());
    assert!(
        warns.len() <= 3 * windows && (warns.len() as u64) < n,
        "{} WARN lines in {windows} windows:\n{}",
        warns.len(),
        lines.join("\n")
    );
    // Every bad connection is either logged or counted in a summary.
    let suppressed: u64 = lines
        .iter()
        .filter_map(|l| {
            let rest = l.split("suppressed ").nth(1)?;
            assert!(
                rest.contains("similar warnings (connection errors) from 1 peer in the last"),
                "{l}"
            );
            rest.split(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(
        warns.len() as u64 + suppressed,
        n,
        "logged + suppressed != connections:\n{}",
        lines.join("\n")
    );
}
