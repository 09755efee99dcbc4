//! Node failures mid-run, with real nodes and real sockets on 127.0.0.1:
//! a node shut down in-process, and a `seqfeed serve` process killed with
//! SIGKILL. Reads move to a replica within bounded time, or fail with an
//! error naming the node and the step; never a hang.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use seqfeed_loader::LoaderError;
use seqfeed_tests::{
    addrs, assert_failed_over, corpus, place, quick_retry, run_ranks_with_a_kill, serve_process,
    start_nodes, tcp_reader, Corpus, NodeAddr, RankRun, ServeProcess,
};

const KILL_AFTER: u64 = 4;

/// Runs four ranks over tcp to `nodes`; after every rank has checked step
/// `KILL_AFTER`, calls `kill` once, then lets them go on
/// ([`run_ranks_with_a_kill`]).
fn four_ranks_with_a_kill(
    c: &Corpus,
    nodes: &[NodeAddr],
    kill: &(dyn Fn() + Sync),
) -> Vec<RankRun> {
    let reader = || tcp_reader(c, nodes, quick_retry()).expect("connect");
    run_ranks_with_a_kill(c, 4, KILL_AFTER, &reader, kill)
}

/// Four ranks over two in-process nodes (each file on `replicas` of them)
/// of a 14-step corpus; node `victim` is shut down after step `KILL_AFTER`.
/// Returns the corpus, the runs and when they started.
fn shut_down_mid_run(replicas: usize, victim: usize) -> (Corpus, Vec<RankRun>, Instant) {
    let c = corpus(256, 32, 14);
    let placement = place(&c.files(), 2, replicas);
    let nodes = start_nodes(c.root(), &placement);
    let na = addrs(&nodes, &placement);
    let nodes = Mutex::new(nodes);
    let t = Instant::now();
    let runs = four_ranks_with_a_kill(&c, &na, &|| {
        let n = nodes.lock().expect("nodes").remove(victim);
        n.shutdown();
    });
    (c, runs, t)
}

#[test]
fn replica_takes_over_when_a_node_shuts_down() {
    let (c, runs, t) = shut_down_mid_run(2, 0);
    assert_failed_over(&c.plan, &runs, 14);
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[test]
fn without_a_replica_the_error_names_the_node_and_the_step() {
    let (_c, runs, t) = shut_down_mid_run(1, 1);
    for (rank, r) in runs.iter().enumerate() {
        let e = r
            .error
            .as_deref()
            .unwrap_or_else(|| panic!("rank {rank} read every step"));
        assert!(e.contains("node-1"), "rank {rank}: {e}");
        assert!(e.contains("step "), "rank {rank}: {e}");
        // Everything up to the kill (and the prefetched steps) was read and checked.
        assert!(
            r.steps.len() as u64 > KILL_AFTER,
            "rank {rank}: {:?}",
            r.steps
        );
    }
    // Fail-over window is 1.5 s; allow for slow CI but never a hang.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[test]
fn unreachable_node_at_start_is_a_clear_error_after_retries() {
    let c = corpus(64, 8, 2);
    // A port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = vec![NodeAddr {
        name: "ghost".into(),
        addr: format!("127.0.0.1:{port}"),
        files: c.files(),
    }];
    let t = Instant::now();
    let e = tcp_reader(&c, &dead, quick_retry()).unwrap_err();
    assert!(matches!(e, LoaderError::Connect { attempts: 3, .. }), "{e}");
    assert!(e.to_string().contains("ghost"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// Starts `seqfeed serve` on 127.0.0.1 (ephemeral port) serving `files`.
fn serve(root: &Path, name: &str, files: &[String]) -> ServeProcess {
    serve_process(root, name, Some(files))
}

/// Starts `seqfeed serve` processes `node-0`, `node-1`, ... one per file list;
/// returns them with their addresses.
fn serve_nodes(root: &Path, placement: &[Vec<String>]) -> (Vec<ServeProcess>, Vec<NodeAddr>) {
    let procs: Vec<ServeProcess> = placement
        .iter()
        .enumerate()
        .map(|(i, files)| serve(root, &format!("node-{i}"), files))
        .collect();
    let na = procs
        .iter()
        .zip(placement)
        .enumerate()
        .map(|(i, (p, files))| NodeAddr {
            name: format!("node-{i}"),
            addr: p.addr.clone(),
            files: files.clone(),
        })
        .collect();
    (procs, na)
}

#[test]
fn replica_takes_over_when_a_serve_process_is_sigkilled() {
    let c = corpus(256, 32, 14);
    let placement = place(&c.files(), 2, 2);
    let (procs, na) = serve_nodes(c.root(), &placement);
    let procs = Mutex::new(procs);
    let t = Instant::now();
    let runs = four_ranks_with_a_kill(&c, &na, &|| {
        let mut p = procs.lock().unwrap();
        p[0].child.kill().expect("SIGKILL node-0"); // Child::kill sends SIGKILL
        p[0].child.wait().expect("reap node-0");
    });
    assert_failed_over(&c.plan, &runs, 14);
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());

    // With node-1 SIGKILLed too, a rank fails in bounded time naming a node.
    {
        let mut p = procs.lock().unwrap();
        p[1].child.kill().expect("SIGKILL node-1");
        p[1].child.wait().expect("reap node-1");
    }
    let t = Instant::now();
    let e = tcp_reader(&c, &na, quick_retry()).unwrap_err();
    assert!(e.to_string().contains("node-"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn replica_takes_over_when_a_serve_process_hangs() {
    // SIGSTOP: the node keeps its sockets open but answers nothing (like a
    // wedged host). Reads must time out (io timeout 3 s) and move to the
    // replica, never hang.
    let c = corpus(256, 32, 14);
    let placement = place(&c.files(), 2, 2);
    let (procs, na) = serve_nodes(c.root(), &placement);
    let pid = procs[0].child.id().to_string();
    let t = Instant::now();
    let runs = four_ranks_with_a_kill(&c, &na, &|| {
        let st = Command::new("kill").args(["-STOP", &pid]).status();
        assert!(st.is_ok_and(|s| s.success()), "kill -STOP {pid}");
    });
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert_failed_over(&c.plan, &runs, 14);
    // One io timeout (3 s) plus slack; never the 10 s default or a hang.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}
