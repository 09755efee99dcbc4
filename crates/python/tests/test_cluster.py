"""Trainer hosts that hold no data, run as a cluster (scripts/cluster/run.sh):
2 storage hosts serving only their placed files and 2 trainer hosts holding
plan.toml and cluster.toml only, each in its own network namespace (or on
127.0.0.1 with separate directories where namespaces are not permitted, which
the script prints). `seqfeed read`, `seqfeed.Loader` (rows compared with the
storage hosts' files) and the torchrun example run on the trainers; no trainer
process may map or open a .seq file."""

import subprocess
import sys

from conftest import ROOT, seqfeed_bin


def test_trainers_without_data_read_from_storage_hosts():
    script = ROOT / "scripts" / "cluster" / "run.sh"
    p = subprocess.run(["bash", str(script), seqfeed_bin(), sys.executable],
                       capture_output=True, text=True, timeout=900)
    print(p.stdout)
    print(p.stderr, file=sys.stderr)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("cluster-test: PASS") and "read python torchrun" in last, last
