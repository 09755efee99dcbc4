#!/usr/bin/env python3
"""The seqfeed Python loader against its two references, in one run.

Every result is a ratio against a reference measured in the same run, with
the same data, interleaved over --rounds rounds (best of each side kept):

1. Python vs Rust: ``seqfeed.Loader(dtype="native")`` against ``seqfeed read``
   (the Rust loader), same plan, same steps, prefetch and connections, for the
   local transport and for tcp to a ``seqfeed serve`` on 127.0.0.1 that this
   script starts and stops. Two plans: global_batch 64 (one 512 KiB step per
   batch) and global_batch 8 (one 64 KiB micro-batch per step, where fixed
   per-batch costs weigh most). Both sides hand out one batch per step.

   * Rust: tokens/s = sequences/s as `seqfeed read` prints it ("end to end":
     its clock starts before the Loader is built, after the plan is opened and
     the transport connected, and stops after the last batch) x tokens per
     sequence. Process start, plan open and connect are thus left out; the
     process wall time is recorded as well (rust_process_s).
   * Python: a fresh process (imports done before the clock) times from the
     first ``next()`` (which opens the plan again and connects: a few ms) to
     the last batch; every batch is touched with ``b.tokens[0, 0].item()``
     (one element read through the tensor, so the tensor is really built).

   Sizing: a short `seqfeed read` calibrates the step count so that the Rust
   side runs about --target-s seconds; the Python side reads the same steps.

2. seqfeed vs Megatron-core: the same MMIDIDX corpus (made with
   megatron_gptdataset.py --make-corpus, ~20M tokens) read by
   * Megatron-core GPTDataset (create_attention_mask=False, seq_length 4096,
     so each sample reads 4097 tokens) through
     torch DataLoader(batch_size=8, num_workers=2, pin_memory=True), run by
     megatron_gptdataset.py in its own process, and
   * seqfeed.Loader(transport="local", device="cpu") over the corpus packed
     with `seqfeed pack --seq-len 4097`, labels=True, eod_token=<eos>,
     micro_batch 8, dtype="int64": int64 input_ids/labels [8, 4096], float32
     loss_mask and int64 position_ids [8, 4096], as Megatron hands out; and
     again with dtype="native" (uint16 input_ids/labels, zero-copy, no
     widening; labelled as such).
   A third seqfeed run, labelled "int64_1thread", calls torch.set_num_threads(1)
   in the consumer first (torch's DataLoader workers, where Megatron's batches
   are built, run with one thread too): on a small, busy host the widening and
   masks (tensors of 32776 elements, just past torch's parallel grain) run
   on torch's intra-op thread pool, which then competes with the reader thread.
   The headline ratio is the default (no thread setting).
   samples/s are steady state, after the first --warmup batches, both sides;
   the seqfeed sides run for --target-s of steady state, Megatron a fixed
   batch count (sized for about --target-s).
   Time to first batch, excluding Python imports:
   * seqfeed: seqfeed.Loader(...) construction (plan opened for its stats)
     + the first next() (plan opened by the native loader, local transport
     set up, first step read, tensors built);
   * Megatron: GPTDatasetConfig + BlendedMegatronDatasetBuilder.build()
     (document/sample/shuffle indices, cache in a fresh temporary dir) +
     DataLoader construction + first batch (worker processes started).

Output: human-readable lines, then one JSON line with every number.

  benches/scripts/python_loader.sh                 # or run this with the venv's python
  python_loader.py --work DIR --rounds 3 --target-s 3   # the defaults; 5-7 min on a busy 2-core host
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from megatron_gptdataset import CORPUS_NAME, find_seqfeed_bin  # noqa: E402  (stdlib only)

SOURCE = "corpus"
SEQ_LEN = 4096  # Megatron seq_length; seqfeed packs seq_len + 1
PACK_LEN = SEQ_LEN + 1
MICRO = 8


def log(msg):
    sys.stderr.write("[python_loader] " + msg + "\n")
    sys.stderr.flush()


def die(msg):
    log("error: " + msg)
    sys.exit(1)


# --------------------------------------------------------------------------- workers
# Run in fresh processes: `python_loader.py --worker KIND JSON`. Imports happen
# before any clock starts; one JSON object on stdout.


def worker_pyread(a):
    """Part 1, Python side: iterate every batch, touch it, time it."""
    import seqfeed

    kw = dict(
        dataset=a["dataset"],
        transport=a["transport"],
        device="cpu",
        dp_rank=0,
        dp_size=1,
        dtype="native",
        prefetch=a["prefetch"],
        connections=a["connections"],
        end_step=a["steps"],
    )
    if a["node"]:
        kw["nodes"] = [a["node"]]
    loader = seqfeed.Loader(a["plan"], **kw)
    it = iter(loader)
    checksum = 0
    n = 0
    seqs = 0
    t0 = time.perf_counter()
    t_first = None
    for b in it:
        checksum += b.tokens[0, 0].item()
        if t_first is None:
            t_first = time.perf_counter()
        seqs += b.tokens.shape[0]
        n += 1
    t1 = time.perf_counter()
    st = loader.stats()
    loader.close()
    tokens = seqs * a["seq_len"]
    print(
        json.dumps(
            {
                "batches": n,
                "sequences": seqs,
                "elapsed_s": t1 - t0,
                "tokens_per_s": tokens / (t1 - t0),
                "first_batch_s": t_first - t0,
                "steady_tokens_per_s": (seqs - seqs // n) * a["seq_len"] / (t1 - t_first)
                if n > 1
                else None,
                "checksum": checksum,
                "stats": st,
            }
        )
    )


def worker_samples(a):
    """Part 2, seqfeed side: Megatron-shaped batches, timed like megatron_gptdataset.py."""
    t_import = time.perf_counter()
    import seqfeed
    import torch

    import_s = time.perf_counter() - t_import
    if a.get("threads"):
        torch.set_num_threads(a["threads"])
    t_start = time.perf_counter()
    loader = seqfeed.Loader(
        a["plan"],
        dataset=a["dataset"],
        transport="local",
        device="cpu",
        dp_rank=0,
        dp_size=1,
        micro_batch=a["micro_batch"],
        dtype=a["dtype"],
        prefetch=a["prefetch"],
        labels=True,
        eod_token=a["eod"],
    )
    t_built = time.perf_counter()
    ticks = []
    first = None
    # Runs until target_s of steady state (after the warm-up batches) has passed.
    for b in loader:
        t = time.perf_counter()
        ticks.append(t)
        if first is None:
            first = b.as_dict(format="megatron")  # the keys megatron_gptdataset.py's batches have
        if len(ticks) > a["warmup"] + 1 and t - ticks[a["warmup"]] >= a["target_s"]:
            break
    loader.close()
    n = len(ticks)
    w = min(a["warmup"], n - 1)
    steady = ticks[-1] - ticks[w]
    keys = {
        k: [list(v.shape), str(v.dtype)]
        for k, v in first.items()
        if isinstance(v, torch.Tensor)
    }
    print(
        json.dumps(
            {
                "samples_per_s": (n - 1 - w) * a["micro_batch"] / steady,
                "time_to_first_batch_s": ticks[0] - t_start,
                "loader_build_s": t_built - t_start,
                "batches": n,
                "warmup_batches": w,
                "steady_s": steady,
                "batch_keys": keys,
                # distinct storage: input_ids/labels are views of one tokens tensor
                "batch_bytes": sum(
                    first[k].numel() * first[k].element_size()
                    for k in ("tokens", "loss_mask", "position_ids")
                ),
                "import_s": import_s,
                "torch_threads": torch.get_num_threads(),
                "stats": loader.stats(),
            }
        )
    )


# --------------------------------------------------------------------------- helpers


def run_json(cmd, what, timeout=600):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if r.returncode != 0:
        die("%s failed (exit %d): %s\n%s" % (what, r.returncode, " ".join(cmd), r.stderr[-3000:]))
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if not lines:
        die("%s printed no JSON: %s\n%s" % (what, r.stdout[-2000:], r.stderr[-2000:]))
    return json.loads(lines[-1])


def worker(kind, args):
    return run_json(
        [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(args)],
        "python worker " + kind,
    )


READ_RE = re.compile(
    r"\((?P<steps>\d+) steps, (?P<seqs>\d+) sequences, (?P<mib>[\d.]+) MiB\).*?"
    r"throughput: (?P<gbps>[\d.]+) GB/s end to end, (?P<sps>\d+) sequences/s.*?"
    r"first batch (?P<first_ms>[\d.]+) ms",
    re.S,
)


def rust_read(exe, dataset, plan, transport, node, steps, prefetch, connections):
    cmd = [exe, "read", "--dataset", dataset, "--plan", plan, "--rank", "0", "--world", "1"]
    cmd += ["--steps", str(steps), "--prefetch", str(prefetch), "--connections", str(connections)]
    if transport == "local":
        cmd += ["--local"]
    else:
        cmd += ["--node", node, "--transport", transport]
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc_s = time.perf_counter() - t
    if r.returncode != 0:
        die("seqfeed read failed (exit %d): %s\n%s" % (r.returncode, " ".join(cmd), r.stderr))
    m = READ_RE.search(r.stdout)
    if not m:
        die("cannot parse seqfeed read output:\n" + r.stdout)
    seqs, sps = int(m["seqs"]), int(m["sps"])
    return {
        "steps": int(m["steps"]),
        "sequences": seqs,
        "elapsed_s": seqs / sps,  # the loop's own clock, recovered from sequences/s
        "tokens_per_s": sps * PACK_LEN,
        "gb_per_s": float(m["gbps"]),
        "first_batch_ms": float(m["first_ms"]),
        "process_s": proc_s,
    }


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_serve(exe, dataset, logpath):
    port = free_port()
    addr = "127.0.0.1:%d" % port
    logf = open(logpath, "w")
    p = subprocess.Popen(
        [exe, "serve", "--dataset", dataset, "--listen", addr], stdout=logf, stderr=logf
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if p.poll() is not None:
            die("seqfeed serve exited (%d); log: %s" % (p.returncode, open(logpath).read()[-2000:]))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, addr
        except OSError:
            time.sleep(0.1)
    p.kill()
    die("seqfeed serve did not listen on %s" % addr)


def write_plan(path, global_batch, steps, seed):
    with open(path, "w") as f:
        f.write(
            "seed = %d\nglobal_batch = %d\nmax_epochs = 1000000.0\n\n[run]\nsteps = %d\n\n"
            '[[sources]]\nname = "%s"\nweight = 1.0\n' % (seed, global_batch, steps, SOURCE)
        )


def fmt_rate(x):
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return "%.2f %s" % (x / div, unit)
    return "%.2f " % x


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("worker_args", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--work", help="work dir (corpus, packed data, plans); default: a temp dir, removed")
    ap.add_argument("--tokens", type=int, default=20_000_000, help="corpus tokens")
    ap.add_argument("--eos", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target-s", type=float, default=3.0, help="seconds per measured side")
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--connections", type=int, default=2, help="tcp connections, both sides")
    ap.add_argument("--warmup", type=int, default=5, help="part 2: batches left out of samples/s")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--seqfeed-bin")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--skip-part2", action="store_true")
    a = ap.parse_args()

    if a.worker:
        wa = json.loads(a.worker_args)
        {"pyread": worker_pyread, "samples": worker_samples}[a.worker](wa)
        return

    exe = find_seqfeed_bin(a.seqfeed_bin)
    if exe is None:
        die("no seqfeed binary (cargo build --release -p seqfeed, or --seqfeed-bin)")
    for mod in ("seqfeed", "torch", "megatron.core"):
        r = subprocess.run([sys.executable, "-c", "import " + mod], capture_output=True, text=True)
        if r.returncode != 0:
            die("cannot import %s with %s:\n%s" % (mod, sys.executable, r.stderr[-1500:]))

    temp = a.work is None
    work = tempfile.mkdtemp(prefix="seqfeed-pyloader-") if temp else os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    t_all = time.perf_counter()
    result = {
        "bench": "python_loader",
        "rounds": a.rounds,
        "target_s": a.target_s,
        "prefetch": a.prefetch,
        "connections": a.connections,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg_start": os.getloadavg(),
    }
    try:
        # ---- corpus: Megatron MMIDIDX, then packed at seq_len + 1
        corpus_dir = os.path.join(work, "mmidx")
        prefix = os.path.join(corpus_dir, CORPUS_NAME)
        if not os.path.exists(prefix + ".idx"):
            log("making a %d-token MMIDIDX corpus in %s" % (a.tokens, corpus_dir))
            info = run_json(
                [sys.executable, os.path.join(HERE, "megatron_gptdataset.py"), "--make-corpus",
                 corpus_dir, "--tokens", str(a.tokens), "--vocab", "50000", "--eos", str(a.eos),
                 "--seed", str(a.seed)],
                "make-corpus",
            )
            result["corpus"] = info
        dataset = os.path.join(work, "data")
        if not os.path.exists(os.path.join(dataset, SOURCE, "manifest.json")):
            log("packing with seqfeed pack --seq-len %d" % PACK_LEN)
            r = subprocess.run(
                [exe, "pack", "--out", os.path.join(dataset, SOURCE), "--seq-len", str(PACK_LEN),
                 "--dtype", "u16", prefix + ".idx"],
                capture_output=True, text=True,
            )
            if r.returncode != 0:
                die("seqfeed pack failed:\n" + r.stdout + r.stderr)
        with open(os.path.join(dataset, SOURCE, "manifest.json")) as f:
            manifest = json.load(f)
        result["dataset"] = {"seq_len": PACK_LEN, "dtype": "u16", "manifest": manifest}

        print("machine: %d CPUs, load average %.2f %.2f %.2f at start (other work on the host"
              " shows up here; rounds are interleaved and the best of each side kept)"
              % ((os.cpu_count(),) + tuple(os.getloadavg())))
        if not a.skip_part1:
            result["part1"] = part1(a, exe, work, dataset)
        if not a.skip_part2:
            result["part2"] = part2(a, work, dataset, prefix)
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)
    result["loadavg_end"] = os.getloadavg()
    print("load average %.2f %.2f %.2f at the end; total %.0f s" % (
        tuple(result["loadavg_end"]) + (time.perf_counter() - t_all,)))
    result["total_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(result))


def part1(a, exe, work, dataset):
    print("== 1. Python seqfeed.Loader(dtype=native) vs Rust loader (seqfeed read), same plan/steps")
    print("   Python touches each batch with b.tokens[0, 0].item(); tokens/s over all steps;")
    print("   Rust: its own end-to-end sequences/s (clock from Loader::new, after plan open + connect)")
    print("   x %d tokens; Python: from the first next() (incl. its plan open + connect) to the last batch." % PACK_LEN)
    serve, addr = start_serve(exe, dataset, os.path.join(work, "serve.log"))
    out = {"serve": addr, "configs": []}
    try:
        configs = []
        for transport in ("local", "tcp"):
            for gb in (64, 8):
                plan = os.path.join(work, "plan-gb%d.toml" % gb)
                write_plan(plan, gb, 10_000_000, a.seed)
                node = addr if transport == "tcp" else None
                # Calibrate: a short Rust read, then size for target_s.
                cal = rust_read(exe, dataset, plan, transport, node, 2000, a.prefetch, a.connections)
                n_cal = int(max(2000, 2000 * 0.5 / cal["elapsed_s"]))
                cal = [rust_read(exe, dataset, plan, transport, node, n_cal, a.prefetch, a.connections)
                       for _ in range(2)]
                rate = max(c["steps"] / c["elapsed_s"] for c in cal)
                steps = int(min(max(rate * a.target_s, 1000), 9_000_000))
                configs.append(dict(transport=transport, gb=gb, plan=plan, node=node, steps=steps,
                                    rust=[], python=[]))
                log("calibrated %s gb=%d: %.0f steps/s -> %d steps" % (transport, gb, rate, steps))
        for rnd in range(a.rounds):
            for c in configs:
                sides = ["rust", "python"] if rnd % 2 == 0 else ["python", "rust"]
                for side in sides:
                    if side == "rust":
                        r = rust_read(exe, dataset, c["plan"], c["transport"], c["node"], c["steps"],
                                      a.prefetch, a.connections)
                    else:
                        r = worker("pyread", dict(plan=c["plan"], dataset=dataset, transport=c["transport"],
                                                  node=c["node"], steps=c["steps"], prefetch=a.prefetch,
                                                  connections=a.connections, seq_len=PACK_LEN))
                        if r["batches"] != c["steps"]:
                            die("python read %d batches, expected %d" % (r["batches"], c["steps"]))
                    c[side].append(r)
                    log("round %d %s gb=%d %s: %s tokens/s in %.2f s" % (
                        rnd + 1, c["transport"], c["gb"], side, fmt_rate(r["tokens_per_s"]), r["elapsed_s"]))
        for c in configs:
            rb = max(c["rust"], key=lambda r: r["tokens_per_s"])
            pb = max(c["python"], key=lambda r: r["tokens_per_s"])
            ratio = pb["tokens_per_s"] / rb["tokens_per_s"]
            batch_kib = c["gb"] * PACK_LEN * 2 / 1024
            print("-- transport %s, global_batch %d (%d x %d u16 = %.0f KiB per batch), %d steps, prefetch %d%s" % (
                c["transport"], c["gb"], c["gb"], PACK_LEN, batch_kib, c["steps"], a.prefetch,
                ", %d connections" % a.connections if c["transport"] == "tcp" else ""))
            print("   rust   %stokens/s (%.2f s; rounds: %s)" % (
                fmt_rate(rb["tokens_per_s"]), rb["elapsed_s"],
                ", ".join(fmt_rate(r["tokens_per_s"]) for r in c["rust"])))
            print("   python %stokens/s (%.2f s; rounds: %s)" % (
                fmt_rate(pb["tokens_per_s"]), pb["elapsed_s"],
                ", ".join(fmt_rate(r["tokens_per_s"]) for r in c["python"])))
            per_batch_us = (pb["elapsed_s"] - rb["elapsed_s"]) / c["steps"] * 1e6
            print("   python/rust tokens/s ratio: %.2f (target >= 0.95) [%s, gb %d]%s; python - rust = %+.1f us/batch" % (
                ratio, c["transport"], c["gb"], "" if ratio >= 0.95 else " MISSED", per_batch_us))
            out["configs"].append({
                "transport": c["transport"],
                "global_batch": c["gb"],
                "batch_bytes": c["gb"] * PACK_LEN * 2,
                "steps": c["steps"],
                "rust_tokens_per_s": rb["tokens_per_s"],
                "python_tokens_per_s": pb["tokens_per_s"],
                "ratio_python_over_rust": round(ratio, 4),
                "target": 0.95,
                "met": ratio >= 0.95,
                "python_minus_rust_us_per_batch": round(per_batch_us, 2),
                "rust_rounds_tokens_per_s": [r["tokens_per_s"] for r in c["rust"]],
                "python_rounds_tokens_per_s": [r["tokens_per_s"] for r in c["python"]],
                "rust_best": rb,
                "python_best": pb,
            })
    finally:
        serve.terminate()
        try:
            serve.wait(10)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
    return out


def part2(a, work, dataset, prefix):
    print("== 2. seqfeed.Loader (local, cpu) vs Megatron-core GPTDataset + DataLoader(num_workers=2,"
          " pin_memory=True), same corpus")
    print("   micro_batch %d, seq_len %d (samples of %d tokens); samples/s after %d warm-up batches;"
          % (MICRO, SEQ_LEN, PACK_LEN, a.warmup))
    print("   Megatron: create_attention_mask=False -> tokens/labels int64, loss_mask f32, position_ids int64;")
    print("   seqfeed: labels=True, eod_token=%d, dtype=int64 (and dtype=native: uint16 ids, zero-copy)." % a.eos)
    # seqfeed sides run for target_s of steady state (a plan far longer than
    # that, stopped early). Megatron reads a fixed batch count, first sized for
    # ~2000 samples/s and, if round 1 ran short, resized from its measured rate.
    sides = {"megatron": [], "seqfeed_int64": [], "seqfeed_native": [], "seqfeed_int64_1thread": []}
    sizes = {"megatron": int(max(a.target_s * 2000 / MICRO, 200)) + a.warmup}
    plan = os.path.join(work, "plan-mb8.toml")
    write_plan(plan, MICRO, 10_000_000, a.seed)
    for rnd in range(a.rounds):
        order = ["megatron", "seqfeed_int64", "seqfeed_native", "seqfeed_int64_1thread"]
        if rnd % 2:
            order.reverse()
        for side in order:
            if side == "megatron":
                r = run_json(
                    [sys.executable, os.path.join(HERE, "megatron_gptdataset.py"), "--prefix", prefix,
                     "--seq-len", str(SEQ_LEN), "--micro-batch", str(MICRO), "--batches", str(sizes[side]),
                     "--warmup", str(a.warmup), "--eos", str(a.eos), "--seed", str(a.seed),
                     "--num-workers", "2"],
                    "megatron_gptdataset.py",
                )
                if rnd == 0 and r["steady_s"] < a.target_s * 0.75:
                    sizes[side] = int(r["samples_per_s"] * a.target_s / MICRO) + a.warmup
                    log("megatron ran %.2f s; resizing to %d batches" % (r["steady_s"], sizes[side]))
            else:
                dt = side.split("_")[1]
                threads = 1 if side.endswith("_1thread") else None
                r = worker("samples", dict(plan=plan, dataset=dataset, dtype=dt, target_s=a.target_s, threads=threads,
                                           micro_batch=MICRO, prefetch=a.prefetch, eod=a.eos, warmup=a.warmup))
            sides[side].append(r)
            log("round %d %s: %.0f samples/s (%.2f s), first batch %.1f ms" % (
                rnd + 1, side, r["samples_per_s"], r["steady_s"], r["time_to_first_batch_s"] * 1e3))
    best = {k: max(v, key=lambda r: r["samples_per_s"]) for k, v in sides.items()}
    # Time to first batch: the best (lowest) of the rounds on each side.
    ttfb = {k: min(r["time_to_first_batch_s"] for r in v) for k, v in sides.items()}
    m = best["megatron"]
    mk = {k: v for k, v in m["batch_keys"].items()}
    out = {"megatron_batches": sizes["megatron"], "megatron_batch_keys": mk}
    print("   megatron batch: %s; pin_memory effective: %s" % (
        ", ".join("%s %s %s" % (k, v[0], v[1].replace("torch.", "")) for k, v in mk.items()),
        m.get("pin_memory_effective")))
    for side in ("seqfeed_int64", "seqfeed_native"):
        s = best[side]
        print("   %s batch: %s" % (side, ", ".join(
            "%s %s %s" % (k, v[0], v[1].replace("torch.", "")) for k, v in s["batch_keys"].items())))
    print("-- samples/s (best of %d; rounds in brackets)" % a.rounds)
    for side in ("megatron", "seqfeed_int64", "seqfeed_native", "seqfeed_int64_1thread"):
        print("   %-21s %9.0f samples/s  [%s]%s" % (
            side, best[side]["samples_per_s"], ", ".join("%.0f" % r["samples_per_s"] for r in sides[side]),
            "  (torch threads %d)" % best[side]["torch_threads"] if "torch_threads" in best[side] else ""))
    r64 = best["seqfeed_int64"]["samples_per_s"] / m["samples_per_s"]
    rnat = best["seqfeed_native"]["samples_per_s"] / m["samples_per_s"]
    r1t = best["seqfeed_int64_1thread"]["samples_per_s"] / m["samples_per_s"]
    print("   seqfeed/megatron samples/s ratio (int64 input_ids/labels, like Megatron): %.1fx (target >= 10x)%s"
          % (r64, "" if r64 >= 10 else " MISSED"))
    print("   seqfeed/megatron samples/s ratio (dtype=native: uint16 ids, zero-copy, no widening): %.1fx"
          % rnat)
    print("   seqfeed/megatron samples/s ratio (int64, torch.set_num_threads(1) in the consumer, as DataLoader"
          " workers run): %.1fx" % r1t)
    print("-- time to first batch (best of %d), Python imports excluded" % a.rounds)
    print("   megatron       %7.1f ms  (GPTDatasetConfig + BlendedMegatronDatasetBuilder.build() %.1f ms"
          " + DataLoader start with 2 workers + first batch)" % (ttfb["megatron"] * 1e3,
                                                               min(r["dataset_build_s"] for r in sides["megatron"]) * 1e3))
    for side in ("seqfeed_int64", "seqfeed_native"):
        print("   %-14s %7.1f ms  (seqfeed.Loader(...) %.1f ms incl. plan open + first next(): plan open,"
              " local transport, first step read, tensors built)" % (
                  side, ttfb[side] * 1e3, min(r["loader_build_s"] for r in sides[side]) * 1e3))
    print("   megatron/seqfeed time-to-first-batch ratio: %.1fx (int64), %.1fx (native)" % (
        ttfb["megatron"] / ttfb["seqfeed_int64"], ttfb["megatron"] / ttfb["seqfeed_native"]))
    out.update({
        "megatron_samples_per_s": m["samples_per_s"],
        "seqfeed_int64_samples_per_s": best["seqfeed_int64"]["samples_per_s"],
        "seqfeed_native_samples_per_s": best["seqfeed_native"]["samples_per_s"],
        "ratio_seqfeed_int64_over_megatron": round(r64, 3),
        "ratio_seqfeed_native_over_megatron": round(rnat, 3),
        "seqfeed_int64_1thread_samples_per_s": best["seqfeed_int64_1thread"]["samples_per_s"],
        "ratio_seqfeed_int64_1thread_over_megatron": round(r1t, 3),
        "target": 10.0,
        "met_int64": r64 >= 10,
        "time_to_first_batch_s": ttfb,
        "ttfb_ratio_megatron_over_seqfeed_int64": round(ttfb["megatron"] / ttfb["seqfeed_int64"], 3),
        "rounds": {k: [{kk: vv for kk, vv in r.items() if kk not in ("batch_keys", "stats")} for r in v]
                   for k, v in sides.items()},
        "seqfeed_batch_keys": {s: best[s]["batch_keys"] for s in ("seqfeed_int64", "seqfeed_native")},
        "megatron_info": {k: m.get(k) for k in ("megatron_core", "torch", "pin_memory_effective",
                                                "dataset_samples", "num_workers")},
    })
    return out


if __name__ == "__main__":
    main()
