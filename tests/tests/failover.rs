//! Node failures mid-run, with real nodes and real sockets on 127.0.0.1:
//! a node shut down in-process, and a `seqfeed serve` process killed with
//! SIGKILL. Reads move to a replica within bounded time, or fail with an
//! error naming the node and the step; never a hang.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use seqfeed_loader::LoaderError;
use seqfeed_tests::{
    addrs, assert_union_is_global_batch, corpus, place, quick_retry, run_rank, seqfeed_bin,
    start_nodes, tcp_reader, Corpus, NodeAddr, RankRun,
};

const KILL_AFTER: u64 = 4;

/// Runs four ranks over `nodes`; after every rank has checked step
/// `KILL_AFTER` (all holding that batch, so nothing past step
/// `KILL_AFTER + 2` has been read), calls `kill` once, then lets them go on.
fn four_ranks_with_a_kill(
    c: &Corpus,
    nodes: &[NodeAddr],
    kill: &(dyn Fn() + Sync),
) -> Vec<RankRun> {
    let barrier = Barrier::new(4);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|rank| {
                let barrier = &barrier;
                s.spawn(move || {
                    let reader = tcp_reader(c, nodes, quick_retry()).expect("connect");
                    run_rank(c, reader, rank, 4, 0, &|step| {
                        if step == KILL_AFTER {
                            barrier.wait();
                            if rank == 0 {
                                kill();
                            }
                            barrier.wait();
                        }
                    })
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

fn assert_failed_over(c: &Corpus, runs: &[RankRun], steps: u64) {
    for (rank, r) in runs.iter().enumerate() {
        assert_eq!(r.error, None, "rank {rank}");
        assert_eq!(r.steps, (0..steps).collect::<Vec<_>>(), "rank {rank}");
        assert!(
            r.stats.failed_over > 0,
            "rank {rank}: no row was moved to the replica"
        );
    }
    assert_union_is_global_batch(&c.plan, runs, 0..steps);
}

#[test]
fn replica_takes_over_when_a_node_shuts_down() {
    let c = corpus(256, 32, 14);
    let placement = place(&c.files(), 2, 2);
    let nodes = Mutex::new(start_nodes(c.root(), &placement));
    let na = addrs(&nodes.lock().unwrap(), &placement);
    let t = Instant::now();
    let runs = four_ranks_with_a_kill(&c, &na, &|| {
        let n = nodes.lock().unwrap().remove(0);
        n.shutdown();
    });
    assert_failed_over(&c, &runs, 14);
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[test]
fn without_a_replica_the_error_names_the_node_and_the_step() {
    let c = corpus(256, 32, 14);
    let placement = place(&c.files(), 2, 1);
    let nodes = Mutex::new(start_nodes(c.root(), &placement));
    let na = addrs(&nodes.lock().unwrap(), &placement);
    let t = Instant::now();
    let runs = four_ranks_with_a_kill(&c, &na, &|| {
        let n = nodes.lock().unwrap().remove(1);
        n.shutdown();
    });
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

struct Serve {
    child: Child,
    addr: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `seqfeed serve` on 127.0.0.1 (ephemeral port) serving `files`.
fn serve(root: &Path, name: &str, files: &[String]) -> Serve {
    let addr_file = root.join(format!(".{name}.addr"));
    let child = Command::new(seqfeed_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--name",
            name,
        ])
        .arg("--dataset")
        .arg(root)
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--files")
        .arg(files.join(","))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn seqfeed serve");
    let mut s = Serve {
        child,
        addr: String::new(),
    };
    let t = Instant::now();
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            s.addr = a.trim().to_owned();
            return s;
        }
        if let Ok(Some(status)) = s.child.try_wait() {
            panic!("seqfeed serve {name} exited early: {status}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "seqfeed serve {name} never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn replica_takes_over_when_a_serve_process_is_sigkilled() {
    let c = corpus(256, 32, 14);
    let placement = place(&c.files(), 2, 2);
    let procs = Mutex::new(vec![
        serve(c.root(), "node-0", &placement[0]),
        serve(c.root(), "node-1", &placement[1]),
    ]);
    let na: Vec<NodeAddr> = procs
        .lock()
        .unwrap()
        .iter()
        .zip(&placement)
        .enumerate()
        .map(|(i, (p, files))| NodeAddr {
            name: format!("node-{i}"),
            addr: p.addr.clone(),
            files: files.clone(),
        })
        .collect();
    let t = Instant::now();
    let runs = four_ranks_with_a_kill(&c, &na, &|| {
        let mut p = procs.lock().unwrap();
        p[0].child.kill().expect("SIGKILL node-0"); // Child::kill sends SIGKILL
        p[0].child.wait().expect("reap node-0");
    });
    assert_failed_over(&c, &runs, 14);
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
    let procs = [
        serve(c.root(), "node-0", &placement[0]),
        serve(c.root(), "node-1", &placement[1]),
    ];
    let na: Vec<NodeAddr> = procs
        .iter()
        .zip(&placement)
        .enumerate()
        .map(|(i, (p, files))| NodeAddr {
            name: format!("node-{i}"),
            addr: p.addr.clone(),
            files: files.clone(),
        })
        .collect();
    let pid = procs[0].child.id().to_string();
    let t = Instant::now();
    let runs = four_ranks_with_a_kill(&c, &na, &|| {
        let st = Command::new("kill").args(["-STOP", &pid]).status();
        assert!(st.is_ok_and(|s| s.success()), "kill -STOP {pid}");
    });
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert_failed_over(&c, &runs, 14);
    // One io timeout (3 s) plus slack; never the 10 s default or a hang.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}
