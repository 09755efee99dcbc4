#!/usr/bin/env python3
"""Where seqfeed.Loader's per-batch Python time goes, at 64 KiB local steps.

A diagnosis for the "Python overhead vs the Rust loader" ratio of
python_loader.py / loader_peers.py: one process, one packed dataset (made by
loader_peers.py in its --work dir, or any dataset with a u16 source "corpus"),
a plan of global_batch 8 (8 x 4097 u16 = 64 KiB per step), dtype="native",
local transport. Each line reads --steps batches in a fresh loader, doing
cumulatively more of what Loader.__next__/_wrap do, so each difference is
the cost of one piece (best of --rounds, interleaved):

  native          NativeLoader.next_batch() only (the Rust loader's hand-off)
  +attrs          ... + nb.step, nb.micro
  +capsule        ... + nb.__dlpack__()
  +from_dlpack    ... + torch.utils.dlpack.from_dlpack(capsule)
  +batch          ... + Batch() with its slots filled (what _wrap does without labels/eod)
  Loader.__next__ the public iterator (plus the position bookkeeping, the
                  eod default's loss_mask/position_ids if the manifest has an EOS)
  seqfeed read    the Rust loader, `seqfeed read --local`, same plan and steps

  python_overhead.py --dataset DIR/data --steps 50000
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from megatron_gptdataset import find_seqfeed_bin  # noqa: E402

MODES = ("native", "+attrs", "+capsule", "+from_dlpack", "+batch", "Loader.__next__")


def run_mode(mode, plan, dataset, steps, prefetch):
    import torch
    import torch.utils.dlpack

    import seqfeed
    from seqfeed import _loader

    loader = seqfeed.Loader(plan, dataset=dataset, transport="local", device="cpu", dp_rank=0, dp_size=1,
                            dtype="native", prefetch=prefetch, end_step=steps)
    fd = torch.utils.dlpack.from_dlpack
    n = 0
    if mode == "Loader.__next__":
        t0 = time.perf_counter()
        for b in loader:
            n += 1
        t1 = time.perf_counter()
    else:
        nat = loader._native
        level = MODES.index(mode)
        t0 = time.perf_counter()
        while True:
            nb = nat.next_batch()
            if nb is None:
                break
            n += 1
            if level >= 1:
                step, micro = nb.step, nb.micro
            if level >= 2:
                cap = nb.__dlpack__()
            if level >= 3:
                t = fd(cap)
            if level >= 4:
                b = _loader.Batch()
                b.tokens = t
                b.step, b.micro = step, micro
                b.native = nb
                b.input_ids, b.labels = t, None
                b.loss_mask = b.position_ids = None
        t1 = time.perf_counter()
    eod = loader.eod_token
    loader.close()
    return {"mode": mode, "batches": n, "s": t1 - t0, "eod_token": eod}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", required=False)
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--seqfeed-bin")
    a = ap.parse_args()
    if a.worker:
        w = json.loads(a.worker)
        print(json.dumps(run_mode(w["mode"], w["plan"], w["dataset"], w["steps"], w["prefetch"])))
        return
    if not a.dataset:
        ap.error("--dataset is required")
    exe = find_seqfeed_bin(a.seqfeed_bin)
    work = tempfile.mkdtemp(prefix="seqfeed-overhead-")
    plan = os.path.join(work, "plan.toml")
    with open(plan, "w") as f:
        f.write('seed = 1234\nglobal_batch = 8\nmax_epochs = 1000000.0\n\n[run]\nsteps = 10000000\n\n'
                '[[sources]]\nname = "corpus"\nweight = 1.0\n')
    res = {m: [] for m in MODES + ("seqfeed read",)}
    for rnd in range(a.rounds):
        order = list(res) if rnd % 2 == 0 else list(reversed(res))
        for m in order:
            if m == "seqfeed read":
                if exe is None:
                    continue
                out = subprocess.run([exe, "read", "--dataset", a.dataset, "--plan", plan, "--rank", "0", "--world",
                                      "1", "--steps", str(a.steps), "--prefetch", str(a.prefetch), "--local"],
                                     capture_output=True, text=True, check=True).stdout
                sps = int(re.search(r"(\d+) sequences/s", out).group(1))
                res[m].append(a.steps * 8 / sps)
            else:
                r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(
                    {"mode": m, "plan": plan, "dataset": a.dataset, "steps": a.steps, "prefetch": a.prefetch})],
                    capture_output=True, text=True, check=True)
                j = json.loads(r.stdout.strip().splitlines()[-1])
                if j["batches"] != a.steps:
                    sys.exit("%s read %d batches" % (m, j["batches"]))
                res[m].append(j["s"])
    print("per-batch time, best of %d, %d steps of 8 x 4097 u16 (64 KiB), local, dtype=native:" % (a.rounds, a.steps))
    prev = None
    for m, v in res.items():
        if not v:
            continue
        us = min(v) / a.steps * 1e6
        print("  %-16s %7.2f us/batch%s   (rounds: %s)" % (
            m, us, "" if prev is None or m == "seqfeed read" else "  (%+.2f)" % (us - prev),
            ", ".join("%.2f" % (x / a.steps * 1e6) for x in v)))
        if m != "seqfeed read":
            prev = us


if __name__ == "__main__":
    main()
