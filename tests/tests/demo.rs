//! `seqfeed demo`, the project's main job, run as a real process: the
//! default corpus, two nodes, four ranks, every byte checked; and with a
//! replica and a node shut down mid-run.

use std::process::Command;

use seqfeed_tests::seqfeed_bin;

fn demo(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(seqfeed_bin())
        .args(["--log", "warn", "demo"])
        .args(args)
        .output()
        .expect("run seqfeed demo");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn default_demo_checks_every_byte() {
    let (ok, out, err) = demo(&["--steps", "12"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("demo OK: 4 ranks x 12 steps, every byte equal to the files and the plan"),
        "{out}"
    );
    let rows = out
        .lines()
        .filter(|l| l.trim_end().ends_with(" ok"))
        .count();
    assert_eq!(rows, 12, "{out}");
    assert!(out.contains("summary: 48 batches, 1536 sequences"), "{out}");
    assert!(
        out.contains("node node-0:") && out.contains("node node-1:"),
        "{out}"
    );
}

#[test]
fn demo_survives_a_node_shutdown_with_a_replica() {
    let (ok, out, err) = demo(&["--steps", "16", "--replicas", "2", "--kill-node-after", "5"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("then shut down"), "{out}");
    assert!(out.contains("demo OK: 4 ranks x 16 steps"), "{out}");
    let moved: u64 = out
        .lines()
        .filter_map(|l| l.split("rows moved to a replica ").nth(1))
        .map(|n| n.trim().parse::<u64>().unwrap())
        .sum();
    assert!(moved > 0, "{out}");
}

#[test]
fn demo_without_a_replica_fails_naming_the_node() {
    let (ok, out, err) = demo(&["--steps", "16", "--replicas", "1", "--kill-node-after", "5"]);
    assert!(
        !ok,
        "the demo must fail when a node without replica dies:\n{out}"
    );
    assert!(err.contains("demo FAILED"), "{err}");
    assert!(err.contains("node-0") && err.contains("step "), "{err}");
}

/// `--transport auto` and `verbs` pick verbs for the in-process nodes when
/// this host has a usable RDMA device, and say which transport each rank
/// used; without one, auto says why it reads over tcp and verbs refuses
/// to start, naming the reason.
#[test]
fn demo_transport_selection_is_logged() {
    let small = ["--steps", "4", "--global-batch", "32", "--seq-len", "1024"];
    let rdma = seqfeed_node::verbs_devices();
    let (ok, out, err) = demo(&[&["--transport", "auto"][..], &small[..]].concat());
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("demo OK: 4 ranks x 4 steps"), "{out}");
    for rank in 0..4 {
        assert!(
            out.contains(&format!("  rank {rank} connected: node-0 over ")),
            "{out}"
        );
    }
    let (ok, vout, verr) = demo(&[&["--transport", "verbs"][..], &small[..]].concat());
    match rdma {
        Ok(devices) => {
            assert!(out.contains("transport auto: verbs (RDMA devices"), "{out}");
            assert!(out.contains("\ntransports: verbs=8\n"), "{out}");
            assert!(ok, "{vout}\n{verr}");
            assert!(vout.contains("\ntransports: verbs=8\n"), "{vout}");
            eprintln!("verbs usable here ({devices:?}): both runs read over verbs");
        }
        Err(reason) => {
            assert!(out.contains("transport auto: tcp ("), "{out}");
            assert!(
                out.contains("  rank 0 transports: node-0 over tcp, node-1 over tcp"),
                "{out}"
            );
            assert!(out.contains("\ntransports: tcp=8\n"), "{out}");
            assert!(!ok, "--transport verbs must fail without RDMA:\n{vout}");
            assert!(
                verr.contains("--transport verbs: no usable RDMA device on this host"),
                "{verr}"
            );
            eprintln!("no RDMA here ({reason}): auto read over tcp, verbs refused");
        }
    }
}
