//! Multi-host test in network namespaces (scripts/netns-test.sh): each node
//! and rank in its own namespace with its own 10.99.1.x address on a veth
//! pair, a node SIGKILLed mid-run (reads move to the replica), a link cut
//! (bounded failure naming node and step). Skips loudly where `ip netns add`
//! is not permitted.

use std::process::Command;
use std::time::{Duration, Instant};

use seqfeed_tests::seqfeed_bin;

fn netns_permitted() -> Result<(), String> {
    let name = format!("sfprobe{}", std::process::id());
    let out = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    Ok(())
}

#[test]
fn nodes_and_ranks_in_network_namespaces() {
    if let Err(why) = netns_permitted() {
        eprintln!();
        eprintln!("==================================================================");
        eprintln!("SKIPPING the network-namespace test: 'ip netns add' is not permitted");
        eprintln!("here ({why}). Run as root (or with CAP_SYS_ADMIN + CAP_NET_ADMIN)");
        eprintln!("to exercise multi-host fail-over: scripts/netns-test.sh");
        eprintln!("==================================================================");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/netns-test.sh");
    let t = Instant::now();
    let out = Command::new("bash")
        .arg(script)
        .arg(seqfeed_bin())
        .env("RANKS", "2")
        .output()
        .expect("run scripts/netns-test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let result = stdout
        .lines()
        .rfind(|l| l.starts_with("netns-test: PASS") || l.starts_with("netns-test: FAIL"))
        .unwrap_or("netns-test: no result line");
    eprintln!("{result}");
    assert!(
        out.status.success(),
        "netns-test.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(result.starts_with("netns-test: PASS"), "{result}");
    assert!(t.elapsed() < Duration::from_secs(120));
}
