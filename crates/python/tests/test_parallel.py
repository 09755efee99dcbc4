"""Data-parallel rank and size from torch.distributed and a DeviceMesh."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import seqfeed
from conftest import free_port


def _worker(rank, world, port, plan, ds, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        dp = seqfeed.data_parallel_from_mesh(mesh, "dp")
        default = seqfeed.data_parallel_from_env()  # plain DP: the global rank
        loader = seqfeed.Loader(plan, dataset=ds, dp_rank=dp[0], dp_size=dp[1], dtype="native")
        positions = [b.positions for b in loader]
        out.put((rank, dp, default, positions))
    finally:
        dist.destroy_process_group()


def test_device_mesh_dp_dimension_and_torch_distributed_default(dataset):
    ds, plan = dataset
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 4, port, str(plan), str(ds), q)) for r in range(4)]
    for p in procs:
        p.start()
    got = sorted(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, dp, default, positions in got:
        assert dp == (rank // 2, 2), (rank, dp)
        assert default == (rank, 4)
        want = [[r["position"] for r in seqfeed.plan_show(plan, s, 2, rank // 2, dataset=ds)] for s in range(12)]
        assert positions == want
    # tensor-parallel peers (same dp rank) read identical rows
    assert got[0][3] == got[1][3] and got[2][3] == got[3][3] and got[0][3] != got[2][3]


def test_explicit_layout_must_be_complete(dataset):
    ds, plan = dataset
    with pytest.raises(seqfeed.SeqfeedError, match="together"):
        seqfeed.Loader(plan, dataset=ds, dp_rank=0)
