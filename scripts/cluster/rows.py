"""Rows a trainer host reads, and their check against the storage hosts' files.

    rows.py read  --plan plan.toml --cluster cluster.toml --dp-rank R --dp-size W --out rows.npz
    rows.py check --plan plan.toml --dataset DATA --storage STORE --rows rows.npz --dp-rank R --dp-size W

``read`` runs on a trainer host that holds only the plan and the cluster
file: ``seqfeed.Loader`` opens the plan from the nodes' manifests and reads
every step over tcp. ``check`` runs where the data is: for every row it
reads the bytes at the plan's offset in the file of whichever storage host
directory (``STORE/<node>/``) holds it and compares them byte for byte.
Used by scripts/cluster/run.sh.
"""

import argparse
import pathlib
import sys

import numpy as np


def read(args):
    import seqfeed

    loader = seqfeed.Loader(args.plan, cluster=args.cluster, transport="tcp", dtype="native",
                            dp_rank=args.dp_rank, dp_size=args.dp_size, eod_token=False)
    positions, tokens = [], []
    for b in loader:
        positions.append(np.asarray(b.positions, dtype=np.int64))
        tokens.append(b.tokens.numpy().copy())
    info = loader.plan_info
    loader.close()
    np.savez(args.out, positions=np.stack(positions), tokens=np.stack(tokens),
             plan=info["fingerprint"], dataset=info["dataset_fingerprint"])
    print(f"read {len(tokens)} steps of {tokens[0].shape[0]} rows, plan {info['fingerprint']}")


def check(args):
    import seqfeed

    got = np.load(args.rows)
    info = seqfeed.plan_stats(args.plan, dataset=args.dataset)
    if str(got["plan"]) != info["fingerprint"] or str(got["dataset"]) != info["dataset_fingerprint"]:
        sys.exit(f"fingerprints differ: trainer {got['plan']} / {got['dataset']}, "
                 f"dataset {info['fingerprint']} / {info['dataset_fingerprint']}")
    store = pathlib.Path(args.storage)
    hosts = sorted(p for p in store.iterdir() if p.is_dir())
    rows = 0
    for step, (positions, tokens) in enumerate(zip(got["positions"], got["tokens"])):
        shown = seqfeed.plan_show(args.plan, step, dataset=args.dataset, dp_rank=args.dp_rank,
                                  dp_size=args.dp_size)
        if [r["position"] for r in shown] != list(positions):
            sys.exit(f"step {step}: positions differ from the plan's")
        for r, row in zip(shown, tokens):
            holders = [h for h in hosts if (h / r["file"]).exists()]
            if not holders:
                sys.exit(f"step {step}: no storage host holds {r['file']}")
            with open(holders[0] / r["file"], "rb") as f:
                f.seek(r["offset"])
                want = np.frombuffer(f.read(row.nbytes), dtype=row.dtype)
            if not np.array_equal(row, want):
                sys.exit(f"step {step}, row {r['row']}: bytes differ from {holders[0] / r['file']} at {r['offset']}")
            rows += 1
    print(f"rows OK: {rows} rows over {len(got['tokens'])} steps equal the storage hosts' files")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["read", "check"])
    ap.add_argument("--plan", required=True)
    ap.add_argument("--cluster")
    ap.add_argument("--dataset")
    ap.add_argument("--storage")
    ap.add_argument("--rows")
    ap.add_argument("--out")
    ap.add_argument("--dp-rank", type=int, required=True)
    ap.add_argument("--dp-size", type=int, required=True)
    args = ap.parse_args()
    (read if args.mode == "read" else check)(args)


if __name__ == "__main__":
    main()
