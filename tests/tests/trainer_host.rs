//! A trainer host that holds no data: the loader opens its plan from the
//! manifests the storage nodes publish, each node serving its own directory
//! with only the files placed on it. The plan, the dataset fingerprint and
//! every row read equal what a loader opened against the dataset directory
//! gets; nodes that disagree, a pinned config the data contradicts, a shapes
//! file the nodes contradict and nodes that do not answer are refused with
//! errors that name them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use seqfeed_loader::{
    error_message, open_loader, Loader, LoaderConfig, LoaderSpec, Nodes, TransportKind,
};
use seqfeed_node::NodeHandle;
use seqfeed_tests::{corpus, place, stage_nodes, start_nodes, Corpus};
use seqfeed_transport::{ClusterFile, ClusterNode};

/// Writes `plan.toml` and `cluster.toml` (nodes `(name, addr, files)`)
/// into `dir`, the trainer host's working directory.
fn trainer_files(
    dir: &Path,
    plan_toml: &str,
    nodes: &[(String, String, Vec<String>)],
) -> (PathBuf, PathBuf) {
    let plan = dir.join("plan.toml");
    std::fs::write(&plan, plan_toml).unwrap();
    let cluster = ClusterFile {
        fingerprint: None,
        replicas: 1,
        nodes: nodes
            .iter()
            .map(|(name, addr, files)| ClusterNode {
                name: name.clone(),
                addr: addr.clone(),
                files: files.clone(),
            })
            .collect(),
    };
    let path = dir.join("cluster.toml");
    cluster.save(&path).unwrap();
    (plan, path)
}

fn described(
    nodes: &[NodeHandle],
    placement: &[Vec<String>],
) -> Vec<(String, String, Vec<String>)> {
    nodes
        .iter()
        .zip(placement)
        .enumerate()
        .map(|(i, (n, f))| (format!("node-{i}"), n.local_addr().to_string(), f.clone()))
        .collect()
}

fn spec(plan: &Path, cluster: &Path) -> LoaderSpec {
    let mut s = LoaderSpec::new(plan, Nodes::Cluster(cluster.to_owned()));
    s.transport = TransportKind::Tcp;
    s.io_timeout = Duration::from_secs(3);
    s
}

/// Every step's bytes of rank `rank` of `world`.
fn read_all(spec: &LoaderSpec, rank: usize, world: usize) -> Vec<Vec<u8>> {
    let (_, loader) = open_loader(spec, LoaderConfig::new(rank, world), None).unwrap();
    collect(loader)
}

fn collect(mut loader: Loader) -> Vec<Vec<u8>> {
    let mut steps = Vec::new();
    while let Some(b) = loader.next() {
        steps.push(b.unwrap().bytes().to_vec());
    }
    steps
}

/// Two storage hosts, each with its own directory holding only its placed
/// files (no replicas), and a trainer directory with plan.toml and
/// cluster.toml only: the plan and the dataset fingerprint are the ones the
/// dataset gives, and each rank's rows equal a local read of the dataset.
#[test]
fn a_trainer_without_data_reads_what_a_trainer_with_the_data_reads() {
    let c = corpus(16, 8, 12);
    let placement = place(&c.files(), 2, 1);
    let (_stage, roots) = stage_nodes(c.root(), &placement);
    for (root, files) in roots.iter().zip(&placement) {
        let held = walk_seq_files(root);
        assert_eq!(held.len(), files.len(), "{}", root.display());
    }
    let nodes: Vec<NodeHandle> = roots
        .iter()
        .zip(&placement)
        .map(|(root, files)| start_nodes(root, std::slice::from_ref(files)).remove(0))
        .collect();
    let trainer = tempfile::tempdir().unwrap();
    let (plan, cluster) =
        trainer_files(trainer.path(), &c.plan_toml, &described(&nodes, &placement));
    let remote = spec(&plan, &cluster);
    let opened = remote.open_plan().unwrap();
    assert_eq!(
        opened.dataset_fingerprint.as_deref(),
        Some(c.fingerprint.as_str())
    );
    assert_eq!(opened.plan.fingerprint(), c.plan.fingerprint());
    assert_eq!(
        std::fs::read_dir(trainer.path()).unwrap().count(),
        2,
        "the trainer directory holds plan.toml and cluster.toml only"
    );

    let mut local = LoaderSpec::new(&plan, Nodes::Local);
    local.dataset = Some(c.root().to_owned());
    let local_opened = local.open_plan().unwrap();
    assert_eq!(local_opened.dataset_fingerprint, opened.dataset_fingerprint);
    assert_eq!(local_opened.plan.fingerprint(), opened.plan.fingerprint());
    for rank in 0..2 {
        let want = read_all(&local, rank, 2);
        let got = read_all(&remote, rank, 2);
        assert_eq!(want.len(), 12);
        assert!(
            got == want,
            "rank {rank}: remote rows differ from the local read"
        );
    }
}

/// A node that cannot be reached at open time is left out; with none
/// answering, the error names every node tried and why.
#[test]
fn the_plan_opens_from_the_nodes_that_answer() {
    let c = corpus(16, 8, 6);
    let placement = place(&c.files(), 2, 2);
    let nodes = start_nodes(c.root(), &placement);
    let trainer = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there (connection refused).
    let mut listed = described(&nodes, &placement);
    listed.push(("down".into(), "127.0.0.1:1".into(), Vec::new()));
    let (plan, cluster) = trainer_files(trainer.path(), &c.plan_toml, &listed);
    let opened = spec(&plan, &cluster).open_plan().unwrap();
    assert_eq!(
        opened.dataset_fingerprint.as_deref(),
        Some(c.fingerprint.as_str())
    );

    let dead = vec![
        ("down-a".to_owned(), "127.0.0.1:1".to_owned(), c.files()),
        ("down-b".to_owned(), "127.0.0.1:2".to_owned(), c.files()),
    ];
    let (plan, cluster) = trainer_files(trainer.path(), &c.plan_toml, &dead);
    let e = error_message(&spec(&plan, &cluster).open_plan().unwrap_err());
    assert!(
        e.contains("no storage node described the dataset")
            && e.contains("down-a: ")
            && e.contains("down-b: ")
            && e.contains("127.0.0.1:2"),
        "{e}"
    );
}

/// Nodes serving different data for one source are refused, naming both
/// nodes, the source and the field; a config pinned to other data is
/// refused naming the source; a shapes file the nodes contradict likewise.
#[test]
fn nodes_that_disagree_and_pins_they_contradict_are_refused() {
    let c = corpus(16, 8, 6);
    let other = other_corpus(&c);
    let all = vec![c.files()];
    let a = start_nodes(c.root(), &all).remove(0);
    let b = start_nodes(other.root(), &all).remove(0);
    let trainer = tempfile::tempdir().unwrap();
    let listed = vec![
        ("node-a".to_owned(), a.local_addr().to_string(), c.files()),
        ("node-b".to_owned(), b.local_addr().to_string(), c.files()),
    ];
    let (plan, cluster) = trainer_files(trainer.path(), &c.plan_toml, &listed);
    let e = error_message(&spec(&plan, &cluster).open_plan().unwrap_err());
    assert!(
        e.contains("nodes node-a and node-b serve different data")
            && e.contains("source 'code'")
            && e.contains("payload_hash"),
        "{e}"
    );

    // Pinned to the other data: refused, naming the source.
    let mut pinned = seqfeed_plan::PlanConfig::from_toml_str(&c.plan_toml).unwrap();
    pinned
        .pin(
            &seqfeed_plan::shapes_from_dataset(
                &seqfeed_format::Dataset::open(other.root()).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
    let listed = vec![("node-a".to_owned(), a.local_addr().to_string(), c.files())];
    let (plan, cluster) = trainer_files(trainer.path(), &pinned.to_toml_string().unwrap(), &listed);
    let e = error_message(&spec(&plan, &cluster).open_plan().unwrap_err());
    assert!(
        e.contains("source 'code' changed since the plan was made") && e.contains("node-a"),
        "{e}"
    );

    // A shapes file of the other data: refused, naming the source.
    let (plan, cluster) = trainer_files(trainer.path(), &c.plan_toml, &listed);
    let shapes = trainer.path().join("shapes.toml");
    let file = seqfeed_plan::ShapesFile::new(
        seqfeed_plan::shapes_from_dataset(&seqfeed_format::Dataset::open(other.root()).unwrap())
            .unwrap(),
    );
    std::fs::write(&shapes, file.to_toml_string().unwrap()).unwrap();
    let mut s = spec(&plan, &cluster);
    s.shapes = Some(shapes.clone());
    let e = error_message(&s.open_plan().unwrap_err());
    assert!(
        e.contains("does not match the data the storage nodes (node-a) serve")
            && e.contains("source 'code' has fingerprint"),
        "{e}"
    );
    // The matching shapes file opens the same plan as the nodes do.
    let file = seqfeed_plan::ShapesFile::new(
        seqfeed_plan::shapes_from_dataset(&seqfeed_format::Dataset::open(c.root()).unwrap())
            .unwrap(),
    );
    std::fs::write(&shapes, file.to_toml_string().unwrap()).unwrap();
    let opened = s.open_plan().unwrap();
    assert_eq!(opened.plan.fingerprint(), c.plan.fingerprint());
    assert_eq!(
        opened.dataset_fingerprint.as_deref(),
        Some(c.fingerprint.as_str())
    );
}

/// The same three sources as `c`, with the `code` source's tokens drawn
/// from another seed (same names, counts and shapes; other payload).
fn other_corpus(c: &Corpus) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["web", "code", "wiki"] {
        let from = c.root().join(name);
        let to = dir.path().join(name);
        if name == "code" {
            seqfeed_format::write_synthetic_source(
                &to,
                name,
                seqfeed_format::Dtype::U32,
                16,
                300,
                999,
                16 * 4 * 64,
            )
            .unwrap();
        } else {
            std::fs::create_dir_all(&to).unwrap();
            for e in std::fs::read_dir(&from).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    dir
}

trait Root {
    fn root(&self) -> &Path;
}

impl Root for tempfile::TempDir {
    fn root(&self) -> &Path {
        self.path()
    }
}

fn walk_seq_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_seq_files(&p));
        } else if p.extension().is_some_and(|x| x == "seq") {
            out.push(p);
        }
    }
    out
}
