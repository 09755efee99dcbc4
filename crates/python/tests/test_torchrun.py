"""The example trainer (examples/train_gpt.py) under torchrun: 4 ranks = 2
data-parallel groups x 2 tensor-parallel peers, reading real text
(tokenized by `seqfeed pack --tiktoken r50k_base`) from 2 `seqfeed serve`
nodes over tcp. It trains, resumes identically from a checkpoint after
every rank was killed, and survives a node kill with the same batches."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from conftest import Node, run, seqfeed_bin, serve_port0

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
STEPS = 40
RANKS = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt")
    subprocess.run(
        [sys.executable, EXAMPLES / "prepare_corpus.py", "--out", out, "--seqfeed", seqfeed_bin(),
         "--seq-len", "64", "--global-batch", "16", "--steps", str(STEPS)],
        check=True, capture_output=True,
    )
    return out


def start_nodes(data, tmp):
    """Two `seqfeed serve` nodes on ports the kernel picked (port 0, read
    back from --addr-file: no port is chosen by bind-then-close), each
    serving every file, and a cluster file that places every file on both
    (2 replicas)."""
    nodes = []
    try:
        for name in "ab":
            n = Node.__new__(Node)
            n._dir = tmp / f"node-{name}"  # Node.kill() removes it
            n._dir.mkdir()
            n.proc, n.addr = serve_port0(data, name, n._dir / "addr", stderr=subprocess.DEVNULL)
            n.port = int(n.addr.rsplit(":", 1)[1])
            nodes.append(n)
        cl = tmp / "cluster.toml"
        run("place", "--dataset", data, "--nodes", ",".join(f"{n}={x.addr}" for n, x in zip("ab", nodes)),
            "--replicas", "2", "--out", cl)
    except BaseException:
        for n in nodes:
            n.proc.kill()
            n.proc.wait()
        raise
    return cl, nodes


@pytest.fixture
def cluster(corpus, tmp_path):
    """Two nodes that both hold every file (2 replicas)."""
    cl, nodes = start_nodes(corpus / "data", tmp_path)
    yield cl, nodes
    for n in nodes:
        if n.proc.poll() is None:
            n.proc.kill()
        n.proc.wait(timeout=10)


def torchrun(corpus, cluster_file, out, *extra):
    # --standalone: torchrun runs its own rendezvous on a port it binds
    # itself (port 0), so no port is chosen here and raced for.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(RANKS),
           EXAMPLES / "train_gpt.py",
           "--plan", corpus / "plan.toml", "--dataset", corpus / "data", "--cluster", cluster_file,
           "--out", out, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(list(map(str, cmd)), env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def descendants(pid):
    """Every process below `pid` (torchrun's workers run in sessions of their own)."""
    children = {}
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(pid):
    for q in [pid, *descendants(pid)]:
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finish(p, timeout=600):
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]
    return out


def logs(out):
    """Per rank: {(step, micro): record} and the final stats."""
    per_rank = []
    for r in range(RANKS):
        recs, stats = {}, None
        for line in open(out / f"rank{r}.jsonl"):
            rec = json.loads(line)
            if rec.get("done"):
                stats = rec["stats"]
            else:
                recs[(rec["step"], rec["micro"])] = rec
        per_rank.append((recs, stats))
    return per_rank


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The uninterrupted run."""
    tmp = tmp_path_factory.mktemp("ref")
    cl, nodes = start_nodes(corpus / "data", tmp)
    try:
        out = tmp / "run"
        finish(torchrun(corpus, cl, out))
        return logs(out)
    finally:
        for n in nodes:
            n.proc.kill()
            n.proc.wait()


def test_loss_falls_and_peers_see_the_same_batches(reference):
    for r, (recs, stats) in enumerate(reference):
        assert sorted(recs) == [(s, m) for s in range(STEPS) for m in range(2)], f"rank {r}"
        assert stats["steps"] == STEPS and stats["micro_batches"] == 2 * STEPS
    # TP peers (0,1) and (2,3) logged identical batches; DP groups differ.
    for a, b in ((0, 1), (2, 3)):
        assert [x["sha256"] for x in reference[a][0].values()] == [x["sha256"] for x in reference[b][0].values()]
    assert reference[0][0][(0, 0)]["sha256"] != reference[2][0][(0, 0)]["sha256"]
    losses = [reference[0][0][(s, m)]["loss"] for s in range(STEPS) for m in range(2)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"loss: first 10 micro-batches {first:.3f}, last 10 {last:.3f}")
    assert last < first - 1.0, (first, last)


def test_killed_run_resumes_from_its_checkpoint_identically(corpus, cluster, tmp_path, reference):
    cl, _ = cluster
    out = tmp_path / "run"
    k = 14
    p = torchrun(corpus, cl, out, "--save-at", k, "--pause-after-save", "300")
    deadline = time.time() + 600
    while not all((out / "ckpt" / f"rank{r}.pt").exists() for r in range(RANKS)):
        assert p.poll() is None, p.communicate()[0][-4000:]
        assert time.time() < deadline
        time.sleep(0.2)
    kill_tree(p.pid)  # torchrun and every rank, at once
    p.communicate(timeout=60)
    finish(torchrun(corpus, cl, out, "--resume"))
    resumed = logs(out)
    for r in range(RANKS):
        recs, stats = resumed[r]
        ref = reference[r][0]
        after = {key: v for key, v in recs.items() if key[0] > k}
        assert sorted(after) == [(s, m) for s in range(k + 1, STEPS) for m in range(2)], f"rank {r}"
        for key, v in after.items():
            assert v["sha256"] == ref[key]["sha256"], f"rank {r} step {key}"
        assert stats["steps"] == STEPS - (k + 1)


def test_training_survives_a_node_kill_with_the_same_batches(corpus, cluster, tmp_path, reference):
    cl, nodes = cluster
    out = tmp_path / "run"
    p = torchrun(corpus, cl, out, "--step-sleep", "0.2", "--failover-ms", "5000")
    deadline = time.time() + 600
    while not (out / "rank0.jsonl").exists() or sum(1 for _ in open(out / "rank0.jsonl")) < 10:
        assert p.poll() is None, p.communicate()[0][-4000:]
        assert time.time() < deadline
        time.sleep(0.1)
    nodes[0].kill()
    finish(p)
    got = logs(out)
    failed_over = 0
    for r in range(RANKS):
        recs, stats = got[r]
        assert sorted(recs) == sorted(reference[r][0]), f"rank {r}"
        for key, v in recs.items():
            assert v["sha256"] == reference[r][0][key]["sha256"], f"rank {r} step {key}"
        failed_over += stats["failed_over"]
    print(f"rows failed over to node b: {failed_over}")
