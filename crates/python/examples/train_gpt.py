"""A small GPT trained on seqfeed batches, launched with torchrun.

    torchrun --nproc-per-node 4 train_gpt.py --plan plan.toml \
        --cluster cluster.toml --tp 2 --out run/

A trainer host needs only the plan config and the cluster file: the plan is
opened from the manifests the storage nodes publish (``--dataset`` reads a
local copy instead), and the EOD id comes from those manifests.

Layout: ``--tp`` consecutive ranks form a tensor-parallel group (here they
hold replicas of the model and compare their batches every step, as real
tensor-parallel peers must see the same data); the data-parallel rank is
``rank // tp``. seqfeed splits each step by data-parallel rank and size and
yields ``--micro-batch`` rows at a time (gradient accumulation); gradients
are averaged over the data-parallel group (gloo, CPU).

Every rank logs one JSON line per micro-batch to ``OUT/rank{R}.jsonl``:
step, micro-batch, a sha256 of the token tensor, the loss, and each row's
position in the plan's order. ``--save-at K``
writes ``OUT/ckpt/rank{R}.pt`` (model, optimizer and the loader's
``state_dict``) after step K; ``--resume`` continues from it, also with
another number of ranks (a state saved at a step boundary loads into any
data-parallel size that divides the global batch; rank R reads
``OUT/ckpt/rank{R}.pt``, and the model is replicated over data parallelism). Nothing here
binds ``MASTER_PORT``: torch's own rendezvous does the gathering.
"""

import argparse
import hashlib
import json
import math
import os
import pathlib
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import seqfeed


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab, d=48, layers=2, heads=4, ctx=64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids, pos):
        s = ids.shape[1]
        mask = torch.triu(torch.full((s, s), float("-inf")), diagonal=1)
        x = self.tok(ids) + self.pos(pos)
        for b in self.blocks:
            x = b(x, mask)
        return self.ln(x) @ self.tok.weight.t()  # tied output


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", required=True)
    ap.add_argument("--dataset", help="a local copy of the dataset (default: ask the nodes)")
    ap.add_argument("--cluster")
    ap.add_argument("--nodes", nargs="*")
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--eod", type=int, default=None, help="EOD id (default: the one the manifests record)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--save-at", type=int)
    ap.add_argument("--pause-after-save", type=float, default=0.0, help="seconds to sleep after saving")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--step-sleep", type=float, default=0.0)
    ap.add_argument("--failover-ms", type=int, default=3000)
    args = ap.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world % args.tp:
        raise SystemExit(f"world size {world} is not a multiple of tp {args.tp}")
    dp_size, dp_rank, tp_rank = world // args.tp, rank // args.tp, rank % args.tp
    # Every process creates every group in the same order, as torch requires.
    tp_groups = [dist.new_group([d * args.tp + t for t in range(args.tp)]) for d in range(dp_size)]
    dp_groups = [dist.new_group([d * args.tp + t for d in range(dp_size)]) for t in range(args.tp)]
    tp_group, dp_group = tp_groups[dp_rank], dp_groups[tp_rank]

    loader = seqfeed.Loader(
        args.plan, dataset=args.dataset, cluster=args.cluster, nodes=args.nodes, transport="tcp",
        dp_rank=dp_rank, dp_size=dp_size, micro_batch=args.micro_batch, labels=True,
        eod_token=args.eod, failover_ms=args.failover_ms, io_timeout_ms=1000,
    )
    ctx = loader.plan_info["seq_len"] - 1
    torch.manual_seed(0)
    model = GPT(args.vocab, ctx=ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    ckpt = args.out / "ckpt" / f"rank{rank}.pt"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        loader.load_state_dict(state["loader"])
    log = open(args.out / f"rank{rank}.jsonl", "a")
    acc = loader.accumulation
    for batch in loader:
        if batch.micro == 0:
            opt.zero_grad(set_to_none=True)
        # Tensor-parallel peers must hold the same batch: compare digests.
        digest = hashlib.sha256(batch.tokens.numpy().tobytes()).hexdigest()
        mine = torch.tensor([int(digest[:15], 16)], dtype=torch.int64)
        peers = [torch.zeros_like(mine) for _ in range(args.tp)]
        dist.all_gather(peers, mine, group=tp_group)
        if any(int(p) != int(mine) for p in peers):
            raise SystemExit(f"rank {rank}: step {batch.step} micro {batch.micro}: tensor-parallel peers got different batches")
        logits = model(batch.input_ids, batch.position_ids)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), reduction="none")
        loss = (loss * batch.loss_mask.flatten()).sum() / batch.loss_mask.sum().clamp(min=1)
        (loss / acc).backward()
        log.write(json.dumps({"step": batch.step, "micro": batch.micro, "sha256": digest, "loss": loss.item(),
                              "positions": [int(p) for p in batch.positions]}) + "\n")
        log.flush()
        del batch, logits
        if loader.position[1] == 0:  # the step's last micro-batch
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, group=dp_group)
                    p.grad /= dp_size
            opt.step()
            step = loader.position[0] - 1
            if args.save_at is not None and step == args.save_at:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "loader": loader.state_dict()}, tmp)
                os.replace(tmp, ckpt)
                if args.pause_after_save:
                    time.sleep(args.pause_after_save)
            if args.step_sleep:
                time.sleep(args.step_sleep)
    stats = loader.stats()
    log.write(json.dumps({"done": True, "stats": stats}) + "\n")
    log.close()
    loader.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
