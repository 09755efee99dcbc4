//! Launches the example trainer as four processes, the way torchrun does
//! (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), against two
//! real storage nodes on 127.0.0.1. Every process checks every batch; rank
//! 0 gathers on its own `--gather` address and checks the union of all
//! ranks' blocks per step against the plan. MASTER_PORT stays bound by a
//! stand-in for torch's rendezvous store the whole time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use seqfeed_tests::{addrs, corpus, place, start_nodes, write_plan_and_cluster};

#[test]
fn four_processes_like_torchrun() {
    let c = corpus(512, 32, 10);
    let placement = place(&c.files(), 2, 2);
    let nodes = start_nodes(c.root(), &placement);
    let (plan, cluster) = write_plan_and_cluster(&c, &addrs(&nodes, &placement));
    // torchrun's store owns MASTER_PORT: keep it bound.
    let store = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = store.local_addr().unwrap().port();
    let gather = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut children: Vec<_> = (0..4)
        .map(|rank| {
            Command::new(env!("CARGO_BIN_EXE_seqfeed-trainer"))
                .arg("--plan")
                .arg(&plan)
                .arg("--dataset")
                .arg(c.root())
                .arg("--cluster")
                .arg(&cluster)
                .args(["--step-ms", "2", "--gather-timeout", "60"])
                .arg("--gather")
                .arg(gather.to_string())
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "4")
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn trainer")
        })
        .collect();
    // Bounded wait: kill everything after 90 s.
    let t = Instant::now();
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        if t.elapsed() > Duration::from_secs(90) {
            for c in &mut children {
                let _ = c.kill();
            }
            panic!("trainer processes did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (rank, o) in outs.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "rank {rank}: {}\n{stdout}\n{stderr}",
            o.status
        );
        assert!(
            stdout.contains(&format!(
                "rank {rank}/4 (local rank {rank}): 10 steps, {} bytes checked",
                10 * 8 * 2048
            )),
            "rank {rank}: {stdout}"
        );
    }
    let r0 = String::from_utf8_lossy(&outs[0].stdout);
    assert!(
        r0.contains("all 4 ranks reported; union of blocks = the plan's global batch for 10 steps"),
        "{r0}"
    );
    drop(store);
}
