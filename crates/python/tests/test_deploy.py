"""scripts/deploy/torchrun-launch.sh, the launcher that slurm-train.sbatch runs
once per host: with Slurm's environment for a one-host allocation it waits
for a storage node that is still starting (`seqfeed health --cluster`), then
runs the example trainer under torchrun, whose two ranks (tensor-parallel
peers) read the same batches from the nodes. A node that never answers stops
the launch before torchrun starts, naming the node."""

import json
import os
import pathlib
import subprocess
import sys
import time

from conftest import ROOT, free_port, run, seqfeed_bin

LAUNCH = ROOT / "scripts" / "deploy" / "torchrun-launch.sh"
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
STEPS = 6


def launch_env(**extra):
    env = dict(os.environ, SEQFEED_BIN=seqfeed_bin(), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               SEQFEED_NPROC="2", SLURM_NNODES="1", SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost",
               SLURM_JOB_ID="4242", MASTER_PORT=str(free_port()))
    env.pop("SEQFEED_SECRET", None)
    env.update(extra)
    return env


def serve(data, cluster, name, addr, addr_file):
    return subprocess.Popen([seqfeed_bin(), "--log", "warn", "serve", "--dataset", data, "--listen", addr,
                             "--cluster", cluster, "--name", name, "--addr-file", addr_file],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_launcher_waits_for_the_nodes_then_trains(tmp_path):
    subprocess.run([sys.executable, EXAMPLES / "prepare_corpus.py", "--out", tmp_path, "--seqfeed", seqfeed_bin(),
                    "--seq-len", "64", "--global-batch", "8", "--steps", str(STEPS)],
                   check=True, capture_output=True)
    data = tmp_path / "data"
    ports = [free_port(), free_port()]
    cluster = tmp_path / "cluster.toml"
    run("place", "--dataset", data, "--nodes", f"a=127.0.0.1:{ports[0]},b=127.0.0.1:{ports[1]}",
        "--replicas", "2", "--out", cluster)
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [LAUNCH, "--cluster", cluster, "--wait-nodes", "60", "--",
         EXAMPLES / "train_gpt.py", "--plan", tmp_path / "plan.toml", "--dataset", data,
         "--cluster", cluster, "--out", out, "--tp", "2", "--micro-batch", "4"],
        env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    nodes = []
    try:
        # The nodes come up only after the launcher started checking for them.
        time.sleep(1.0)
        assert launcher.poll() is None, launcher.communicate()[0][-3000:]
        nodes = [serve(data, cluster, n, f"127.0.0.1:{p}", tmp_path / f"{n}.addr") for n, p in zip("ab", ports)]
        output, _ = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, 9)
            launcher.wait()
        for n in nodes:
            n.kill()
            n.wait()
    assert launcher.returncode == 0, output[-4000:]
    assert "host 0 of 1, 2 processes, rendezvous localhost:" in output, output[-4000:]
    assert "ok: node a at 127.0.0.1:" in output and "ok: node b at 127.0.0.1:" in output, output[-4000:]
    digests = []
    for r in range(2):
        recs = [json.loads(line) for line in open(out / f"rank{r}.jsonl")]
        done = [x for x in recs if x.get("done")]
        steps = sorted({x["step"] for x in recs if not x.get("done")})
        assert steps == list(range(STEPS)), f"rank {r}: {steps}"
        assert len(done) == 1 and done[0]["stats"]["steps"] == STEPS
        digests.append([x["sha256"] for x in recs if not x.get("done")])
    # The two ranks are tensor-parallel peers of one data-parallel rank: same batches.
    assert digests[0] == digests[1]


def test_launcher_stops_before_torchrun_when_a_node_is_down(tmp_path):
    cluster = tmp_path / "cluster.toml"
    dead = free_port()
    cluster.write_text(f'replicas = 1\n[[node]]\nname = "gone"\naddr = "127.0.0.1:{dead}"\nfiles = ["web/x.seq"]\n')
    t = time.time()
    p = subprocess.run([LAUNCH, "--cluster", cluster, "--wait-nodes", "1", "--", "train.py"],
                       env=launch_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "node gone" in p.stderr and "are not all answering" in p.stderr, p.stderr
    assert "torch.distributed" not in p.stderr
    assert time.time() - t < 60


def test_launcher_refuses_a_bad_host_rank(tmp_path):
    cluster = tmp_path / "cluster.toml"
    cluster.write_text("")
    p = subprocess.run([LAUNCH, "--cluster", cluster, "--nnodes", "2", "--node-rank", "2", "--", "train.py"],
                       env=launch_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "--node-rank must be in [0, 2), got '2'" in p.stderr, p.stderr
