//! A frozen storage node (issue 12 item 7), end to end: `seqfeed read` over
//! `seqfeed serve` processes on 127.0.0.1, one of them SIGSTOPped mid-run.
//! A stopped node keeps its sockets open and answers nothing, so every
//! reconnect attempt to it costs a whole io timeout. With a replica, the run
//! must pay about one io timeout (its rows move to the replica, reconnects
//! run off the step's path), still read every byte right (`--verify`), and
//! name the node in one log line. Without one, the error says "timed out"
//! and names the node and what was being read.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use seqfeed_tests::{
    corpus, place, seqfeed_bin, serve_process, write_plan_and_cluster, Corpus, NodeAddr,
    ServeProcess,
};

/// The loader's io timeout in these runs.
const IO_TIMEOUT: Duration = Duration::from_millis(1000);
/// Steps of the run, and the simulated consumer work per step.
const STEPS: u64 = 60;
const CONSUME_US: u64 = 20_000;

fn signal(sig: &str, pid: u32) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
    assert!(st.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
}

/// Starts `seqfeed serve` named `name` on an ephemeral port over `root`.
fn serve(root: &Path, name: &str) -> ServeProcess {
    serve_process(root, name, None)
}

/// Runs `seqfeed read --verify` over the cluster file of `nodes`; when
/// `freeze` is given, SIGSTOPs that pid `after` the start. Returns the
/// output and the wall time.
fn read(c: &Corpus, nodes: &[NodeAddr], freeze: Option<(u32, Duration)>) -> (Output, Duration) {
    let (plan, cluster) = write_plan_and_cluster(c, nodes);
    let t = Instant::now();
    let child = Command::new(seqfeed_bin())
        .args(["--log", "info", "read", "--transport", "tcp", "--verify"])
        .arg("--dataset")
        .arg(c.root())
        .arg("--plan")
        .arg(&plan)
        .arg("--cluster")
        .arg(&cluster)
        .args(["--connections", "2", "--failover-ms", "1500"])
        .arg(format!("--io-timeout-ms={}", IO_TIMEOUT.as_millis()))
        .arg(format!("--consume-us={CONSUME_US}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn seqfeed read");
    if let Some((pid, after)) = freeze {
        std::thread::sleep(after);
        signal("STOP", pid);
    }
    let out = child.wait_with_output().expect("seqfeed read");
    (out, t.elapsed())
}

fn node_addrs(procs: &[&ServeProcess], files: &[Vec<String>]) -> Vec<NodeAddr> {
    procs
        .iter()
        .zip(files)
        .enumerate()
        .map(|(i, (p, f))| NodeAddr {
            name: format!("node-{i}"),
            addr: p.addr.clone(),
            files: f.clone(),
        })
        .collect()
}

#[test]
fn a_sigstopped_node_with_a_replica_costs_about_one_io_timeout() {
    let c = corpus(256, 32, STEPS);
    let placement = place(&c.files(), 2, 2);
    let a = serve(c.root(), "node-0");
    let b = serve(c.root(), "node-1");
    let na = node_addrs(&[&a, &b], &placement);

    let (healthy, base) = read(&c, &na, None);
    let err = String::from_utf8_lossy(&healthy.stderr).into_owned();
    assert!(healthy.status.success(), "healthy run failed: {err}");

    // Frozen a third of the way in (the run's consumer alone takes 1.2 s).
    let (frozen, took) = read(&c, &na, Some((a.child.id(), Duration::from_millis(400))));
    let err = String::from_utf8_lossy(&frozen.stderr).into_owned();
    assert!(
        frozen.status.success(),
        "run with node-0 frozen failed: {err}"
    );
    let extra = took.saturating_sub(base);
    eprintln!(
        "fail-over: healthy run {base:?}, node-0 SIGSTOPped mid-run {took:?} (+{extra:?}, io timeout {IO_TIMEOUT:?})"
    );
    // About one io timeout; before the fix each step's reconnect attempt
    // cost another one (5x and more).
    assert!(
        extra < IO_TIMEOUT + Duration::from_millis(1200),
        "a frozen node cost the run {extra:?} (healthy {base:?}, frozen {took:?})\n{err}"
    );
    // Named once, as suspect; no line per read or per reconnect attempt.
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("node-0"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("suspect"), "{}", lines[0]);
    assert!(!err.contains("os error 11"), "{err}");
}

#[test]
fn a_sigstopped_node_without_a_replica_is_a_timed_out_error_naming_it() {
    let c = corpus(256, 32, STEPS);
    let a = serve(c.root(), "node-0");
    let na = node_addrs(&[&a], &[c.files()]);
    let (out, took) = read(&c, &na, Some((a.child.id(), Duration::from_millis(400))));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "read succeeded with its only node frozen"
    );
    // One io timeout for the read, the 1.5 s fail-over window, slack.
    assert!(took < Duration::from_secs(10), "{took:?}: {err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(!err.contains("os error 11"), "{err}");
    assert!(err.contains("node-0"), "{err}");
    assert!(err.contains("reading step"), "{err}");
    assert!(err.contains("no live replica of"), "{err}");
}
