"""Issue 17 item 3, elastic resume: examples/train_gpt.py under
``torchrun --standalone`` with 4 data-parallel ranks checkpoints after step
K; a 2-rank job resumes from that checkpoint with the same global batch.
Per step, the union of the rows the ranks read equals the uninterrupted
4-rank run's (plan positions and micro-batch digests), and the first
resumed step's losses are the uninterrupted run's, bit for bit."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import seqfeed_bin
from test_torchrun import EXAMPLES, start_nodes

STEPS = 12
SAVE_AT = 5


def torchrun(corpus, cluster_file, out, nproc, *extra):
    # --standalone: torchrun binds its own rendezvous port; nothing here picks one.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           EXAMPLES / "train_gpt.py", "--plan", corpus / "plan.toml", "--cluster", cluster_file,
           "--out", out, "--tp", "1", "--micro-batch", "4", *extra]
    p = subprocess.run(list(map(str, cmd)), env=dict(os.environ, OMP_NUM_THREADS="1"),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:]


def per_step(out, nproc):
    """{step: (sorted positions, sorted micro-batch digests, {(rank, micro): loss})}."""
    steps = {}
    for r in range(nproc):
        for line in open(out / f"rank{r}.jsonl"):
            rec = json.loads(line)
            if rec.get("done"):
                continue
            pos, dig, loss = steps.setdefault(rec["step"], ([], [], {}))
            pos.extend(rec["positions"])
            dig.append(rec["sha256"])
            loss[(r, rec["micro"])] = rec["loss"]
    return {s: (sorted(p), sorted(d), l) for s, (p, d, l) in steps.items()}


def test_four_ranks_checkpoint_and_resume_on_two(tmp_path):
    corpus = tmp_path / "corpus"
    subprocess.run(
        [sys.executable, EXAMPLES / "prepare_corpus.py", "--out", corpus, "--seqfeed", seqfeed_bin(),
         "--seq-len", "64", "--global-batch", "16", "--steps", str(STEPS)],
        check=True, capture_output=True,
    )
    cl, nodes = start_nodes(corpus / "data", tmp_path)
    try:
        ref = tmp_path / "ref"
        torchrun(corpus, cl, ref, 4, "--save-at", SAVE_AT)  # uninterrupted; saves after step K
        resumed = tmp_path / "resumed"
        (resumed / "ckpt").mkdir(parents=True)
        for r in range(2):  # the 2-rank job starts from the 4-rank job's checkpoint
            shutil.copy(ref / "ckpt" / f"rank{r}.pt", resumed / "ckpt" / f"rank{r}.pt")
        torchrun(corpus, cl, resumed, 2, "--resume")
    finally:
        for n in nodes:
            n.proc.kill()
            n.proc.wait()
    want, got = per_step(ref, 4), per_step(resumed, 2)
    assert sorted(want) == list(range(STEPS))
    assert sorted(got) == list(range(SAVE_AT + 1, STEPS)), "the resumed job starts after step K"
    for s in got:
        assert len(got[s][0]) == 16 and len(set(got[s][0])) == 16
        assert got[s][0] == want[s][0], f"step {s}: rows differ"
        # Micro-batches of 4 rows: the 2-rank job's micro m of rank r is the
        # 4-rank job's rank 2r + m (contiguous blocks), so the digests match too.
        assert got[s][1] == want[s][1], f"step {s}: micro-batches differ"
    # Same weights (from the checkpoint), same rows: the first resumed step's
    # per-micro-batch losses are the 4-rank run's exactly.
    first = SAVE_AT + 1
    assert {(r // 2, r % 2): v for (r, _), v in want[first][2].items()} == got[first][2]
    # Later steps average gradients in another order (2 ranks x 2 micro-batches):
    # the same mean up to float rounding.
    for s in got:
        a = sum(want[s][2].values()) / 4
        b = sum(got[s][2].values()) / 4
        assert abs(a - b) <= 1e-3 * abs(a), (s, a, b)
