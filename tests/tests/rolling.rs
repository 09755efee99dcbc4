//! Issue 16 item 6: storage nodes come and go during a long run. Real
//! nodes started in-process on 127.0.0.1, real sockets; a restarted node
//! takes its old port back (SO_REUSEADDR). A node that comes back is used
//! again however long it was down (it is never given up), a rolling
//! restart of every node leaves every step's bytes as an undisturbed run's,
//! and with every node down the error reports the time waited and each
//! node's latest error.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seqfeed_loader::{BlockSource, ClusterReader, Loader, LoaderConfig, LoaderError, RetryPolicy};
use seqfeed_node::{Node, NodeConfig, NodeHandle};
use seqfeed_tests::{addrs, corpus, place, start_nodes, tcp_reader, Corpus, NodeAddr};

/// Probes back off from 10 ms to at most 100 ms. Under the old policy
/// (`max_reconnects` 8 by default) a node was given up after
/// 10 + 20 + 40 + 80 + 4 * 100 = 550 ms of failed probes.
fn policy(failover: Duration) -> RetryPolicy {
    RetryPolicy {
        start_attempts: 2,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        failover_timeout: failover,
    }
}

/// Starts node `name` serving `files` on `addr` (a port a node of the
/// same name had). The old listener is closed, but the bind is retried
/// for up to two seconds in case the port is not free yet.
fn restart(root: &std::path::Path, name: &str, addr: SocketAddr, files: &[String]) -> NodeHandle {
    let t = Instant::now();
    loop {
        let mut cfg = NodeConfig::new(root, addr);
        cfg.files = Some(files.to_vec());
        cfg.node_name = name.to_owned();
        cfg.worker_threads = 2;
        match Node::start(cfg) {
            Ok(n) => return n,
            Err(e) if t.elapsed() < Duration::from_secs(2) => {
                eprintln!("restarting {name} on {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("restarting {name} on {addr}: {e}"),
        }
    }
}

/// `nodes` nodes, each holding every file of `c`, and their addresses.
fn replicated(c: &Corpus, nodes: usize) -> (Vec<Option<NodeHandle>>, Vec<NodeAddr>) {
    let placement = place(&c.files(), nodes, nodes);
    let handles = start_nodes(c.root(), &placement);
    let na = addrs(&handles, &placement);
    (handles.into_iter().map(Some).collect(), na)
}

/// Reads every step of `c` (one rank of one) through a [`Loader`] over
/// `reader`, calling `pace()` after each; returns each step's bytes and
/// the loader.
fn run(c: &Corpus, reader: ClusterReader, pace: &mut dyn FnMut(&Loader)) -> (Vec<Vec<u8>>, Loader) {
    let mut loader =
        Loader::new(LoaderConfig::new(0, 1), c.source.clone(), reader).expect("loader");
    let mut out = Vec::new();
    while let Some(b) = loader.next() {
        let b = b.unwrap_or_else(|e| panic!("step {}: {e}", out.len()));
        assert_eq!(b.step(), out.len() as u64);
        out.push(b.bytes().to_vec());
        drop(b);
        pace(&loader);
    }
    (out, loader)
}

/// Reads step `step` of `c` (one rank of one) with `r` straight, without
/// a loader; returns its rows.
fn step_bytes(r: &mut ClusterReader, c: &Corpus, step: u64) -> Result<Vec<u8>, LoaderError> {
    let mut reads = Vec::new();
    c.source.block(step, 0, 1, &mut reads).expect("block");
    let row = reads.iter().map(|x| x.len as usize).max().unwrap_or(0);
    let mut dst = vec![0u8; reads.len() * row];
    r.read_step(step, &reads, row, &mut dst)?;
    Ok(dst)
}

/// Asserts `got` equals the undisturbed run `want`, step by step.
fn assert_same_steps(got: &[Vec<u8>], want: &[Vec<u8>]) {
    assert_eq!(got.len(), want.len(), "steps read");
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "step {step}: bytes differ from the undisturbed run");
    }
}

/// Every node restarted in turn, overlap 0 (node-0 down, up; node-1 down,
/// up; node-2 down, up) while one rank reads every step, each file on all
/// three nodes. The run completes; every step's bytes equal an undisturbed
/// run's; every node was reconnected after its restart and read from again.
#[test]
fn rolling_restart_of_every_node_keeps_the_run_byte_exact() {
    const STEPS: u64 = 900;
    const DOWN: Duration = Duration::from_millis(700);
    const PACE: Duration = Duration::from_millis(10);
    let c = corpus(256, 32, STEPS);
    let (nodes, na) = replicated(&c, 3);
    let retry = policy(Duration::from_secs(3));
    let (want, _) = run(
        &c,
        tcp_reader(&c, &na, retry).expect("connect"),
        &mut |_| {},
    );

    let nodes = Arc::new(Mutex::new(nodes));
    let t0 = Instant::now();
    let restarter = {
        let nodes = nodes.clone();
        let na = na.clone();
        let root = c.root().to_path_buf();
        std::thread::spawn(move || {
            for (i, n) in na.iter().enumerate() {
                std::thread::sleep(Duration::from_millis(150));
                let h = nodes.lock().expect("nodes")[i].take().expect("running");
                let t = Instant::now();
                h.shutdown();
                eprintln!("{} shut down in {:?}", n.name, t.elapsed());
                std::thread::sleep(DOWN);
                let addr: SocketAddr = n.addr.parse().expect("addr");
                let h = restart(&root, &n.name, addr, &n.files);
                nodes.lock().expect("nodes")[i] = Some(h);
            }
        })
    };
    // Paced like a trainer (10 ms a step) while the restarts go on and for
    // 60 steps after them, so that the last node restarted is read from
    // again; then at full speed.
    let reader = tcp_reader(&c, &na, retry).expect("connect");
    let mut after: Option<(u32, Vec<u64>)> = None; // (paced steps since, bytes per node then)
    let (got, loader) = run(&c, reader, &mut |loader| {
        assert!(t0.elapsed() < Duration::from_secs(15), "run too slow");
        match &mut after {
            None if restarter.is_finished() => {
                let bytes = loader.node_stats().iter().map(|n| n.bytes).collect();
                after = Some((0, bytes));
            }
            Some((n, _)) if *n >= 60 => return,
            Some((n, _)) => *n += 1,
            None => {}
        }
        std::thread::sleep(PACE);
    });
    let took = t0.elapsed();
    restarter.join().expect("restarter");
    assert_same_steps(&got, &want);
    let (paced, before) = after.expect("the run outlasted the restarts");
    assert!(paced >= 60, "only {paced} steps after the restarts");
    let stats = loader.node_stats();
    for (n, b) in stats.iter().zip(before) {
        assert!(n.live, "{} not live at the end: {n:?}", n.name);
        assert!(n.reconnects >= 1, "{} never reconnected: {n:?}", n.name);
        assert_eq!(n.down_for, None, "{}", n.name);
        assert_eq!(n.last_error, None, "{}", n.name);
        assert!(
            n.bytes > b,
            "{} not read from after the restarts: {n:?}",
            n.name
        );
    }
    eprintln!("rolling restart: {STEPS} steps in {took:?}");
}

/// A node down far longer than the old give-up threshold (about 550 ms
/// of probes under this policy; here 2.5 s, some 25 failed probes) is
/// taken back once it returns: then the only other replica is shut down
/// and the run still completes, every step byte-exact.
#[test]
fn node_down_longer_than_the_old_give_up_is_used_again() {
    const STEPS: u64 = 200;
    let c = corpus(256, 32, STEPS);
    let (mut nodes, na) = replicated(&c, 2);
    let retry = policy(Duration::from_secs(3));
    let mut r = tcp_reader(&c, &na, retry).expect("connect");
    let want: Vec<Vec<u8>> = (0..STEPS)
        .map(|s| step_bytes(&mut r, &c, s).expect("undisturbed step"))
        .collect();
    drop(r);

    let mut r = tcp_reader(&c, &na, retry).expect("connect");
    let mut got = Vec::new();
    let mut read = |r: &mut ClusterReader| {
        let step = got.len() as u64;
        assert!(step < STEPS, "ran out of steps");
        got.push(step_bytes(r, &c, step).unwrap_or_else(|e| panic!("step {step}: {e}")));
        got.len() as u64
    };
    read(&mut r);
    nodes[0].take().expect("node-0").shutdown();
    read(&mut r); // finds node-0 gone, moves its rows to node-1
    assert_eq!(r.live_nodes(), vec![false, true]);
    // Down for 2.5 s, stepping meanwhile (a step starts the probes due).
    let down = Instant::now();
    while down.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(50));
        read(&mut r);
    }
    let st = r.node_stats()[0].clone();
    assert!(!st.live, "{st:?}");
    assert!(
        st.down_for.is_some_and(|d| d >= Duration::from_secs(2)),
        "{st:?}"
    );
    assert!(
        st.errors.connection >= 10,
        "probed only {} times: {st:?}",
        st.errors.connection
    );
    assert!(st.last_error.is_some(), "{st:?}");
    let addr: SocketAddr = na[0].addr.parse().expect("addr");
    nodes[0] = Some(restart(c.root(), &na[0].name, addr, &na[0].files));
    // Taken back within a few probe intervals (100 ms at most apart).
    let back = Instant::now();
    while !r.live_nodes()[0] {
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "node-0 not taken back"
        );
        std::thread::sleep(Duration::from_millis(20));
        read(&mut r);
    }
    eprintln!("node-0 taken back {:?} after its restart", back.elapsed());
    // The only other replica goes: node-0 alone serves the rest.
    nodes[1].take().expect("node-1").shutdown();
    while read(&mut r) < STEPS {}
    assert_same_steps(&got, &want);
    let st = r.node_stats();
    assert!(st[0].live && st[0].reconnects == 1, "{:?}", st[0]);
    assert!(!st[1].live, "{:?}", st[1]);
}

/// With every node down, a step waits the whole fail-over window (probing
/// meanwhile) and fails naming each node with its latest error (a refused
/// connect: the nodes' ports are closed), not the read failure that first
/// made it suspect, and a waited time consistent with the window.
#[test]
fn with_every_node_down_the_error_names_each_node_latest_error_and_the_window() {
    const FAILOVER: Duration = Duration::from_millis(1500);
    let c = corpus(256, 32, 4);
    let (mut nodes, na) = replicated(&c, 2);
    let mut r = tcp_reader(&c, &na, policy(FAILOVER)).expect("connect");
    step_bytes(&mut r, &c, 0).expect("step 0");
    for n in &mut nodes {
        n.take().expect("node").shutdown();
    }
    let t = Instant::now();
    let e = step_bytes(&mut r, &c, 1).unwrap_err();
    let took = t.elapsed();
    let msg = e.to_string();
    eprintln!("{msg}");
    let LoaderError::NoReplica {
        waited_ms, step, ..
    } = &e
    else {
        panic!("not NoReplica: {msg}");
    };
    assert_eq!(*step, 1, "{msg}");
    assert!(took >= FAILOVER, "returned after {took:?}: {msg}");
    assert!(
        took < FAILOVER + Duration::from_secs(1),
        "took {took:?}: {msg}"
    );
    let waited = Duration::from_millis(*waited_ms as u64);
    assert!(
        waited >= FAILOVER && waited <= took,
        "waited {waited:?}, took {took:?}: {msg}"
    );
    assert!(msg.contains(&format!("within {waited_ms} ms")), "{msg}");
    for n in &na {
        let at = msg
            .find(&format!("{} (", n.name))
            .unwrap_or_else(|| panic!("{} not named: {msg}", n.name));
        // Up to the next node's entry.
        let part = &msg[at..];
        let part = &part[..part[1..].find("; node-").map_or(part.len(), |i| i + 1)];
        assert!(part.contains("latest error:"), "{part}");
        assert!(
            part.to_lowercase().contains("refused"),
            "{} latest error is not the refused connect: {msg}",
            n.name
        );
    }
}
