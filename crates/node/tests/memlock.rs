//! A node whose files cannot be pinned refuses to start with the numbers and
//! the fix (issue 10 item 7), instead of failing registration halfway or
//! being OOM-killed. The test re-runs itself as a child under `ulimit -l 64`
//! (64 KiB of RLIMIT_MEMLOCK): the child reads that real limit through
//! [`PinBudget::current`] and starts a node whose verbs factory applies
//! [`seqfeed_verbs::pinning::check`] to the node's region table, as
//! `VerbsServer::new` does before registering (no RDMA device needed: the
//! devices are named, and taken as pinning, i.e. without on-demand paging).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::process::Command;
use std::sync::Arc;

use seqfeed_node::{Node, NodeConfig};
use seqfeed_verbs::pinning::{check, PinBudget, PinPlan};

const CHILD_ENV: &str = "SEQFEED_NODE_TEST_MEMLOCK_CHILD";

/// The child: a node over a ~2.5 MiB dataset refused under 64 KiB of memlock.
fn child() {
    let budget = PinBudget::current();
    assert_eq!(
        budget.memlock,
        Some(64 << 10),
        "ulimit -l 64 seen through /proc/self/limits"
    );
    // As an unprivileged process: the kernel ignores the limit under CAP_IPC_LOCK
    // (root in most containers), so the test takes the capability away.
    let budget = PinBudget {
        cap_ipc_lock: false,
        ..budget
    };
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(dir.path());
    let mut cfg = NodeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.node_name = "node-m".into();
    cfg.verbs = Some(Arc::new(
        move |table: &Arc<seqfeed_transport::RegionTable>| {
            let plan = PinPlan {
                bytes: table.infos().iter().map(|r| r.len).sum(),
                regions: table.len(),
                pinning: vec!["mlx5_0".into(), "mlx5_1".into()],
                on_demand: Vec::new(),
            };
            check(&plan, &budget).map_err(|e| e.to_string())?;
            Err("the check passed under a 64 KiB limit".to_string())
        },
    ));
    let err = match Node::start(cfg) {
        Ok(_) => panic!("the node started"),
        Err(e) => e.to_string(),
    };
    println!("REFUSED: {err}");
}

#[test]
fn node_refuses_to_start_when_its_files_exceed_memlock() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -l 64 && exec "$0" --exact node_refuses_to_start_when_its_files_exceed_memlock --nocapture --test-threads=1"#)
        .arg(&exe)
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find_map(|l| l.find("REFUSED: ").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no refusal in:\n{stdout}\n{stderr}"));
    for want in [
        "node-m",
        "cannot register the served files for RDMA",
        "mlx5_0, mlx5_1",
        "RLIMIT_MEMLOCK is 64.0 KiB (65536 bytes)",
        "ulimit -l unlimited",
        "LimitMEMLOCK=infinity",
        "/etc/security/limits.conf",
    ] {
        assert!(line.contains(want), "missing {want:?} in: {line}");
    }
    eprintln!("{line}");
}
