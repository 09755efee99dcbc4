"""Data-parallel rank and size from torch.distributed and a DeviceMesh."""

import os

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

import seqfeed

WORLD = 4


def _try(f):
    """("ok", value), or the exception's type name and message."""
    try:
        return ("ok", f())
    except Exception as e:
        return (type(e).__name__, str(e))


def _positions(loader):
    return [b.positions for b in loader]


def _worker(rank, world, store, plan, ds, out):
    # A file store: no TCP port is chosen (and raced for) by the test.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        got = {}
        # torchrun-like environment, no layout given: refuse to guess.
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
        got["default"] = _try(seqfeed.data_parallel_from_env)
        got["default_loader"] = _try(lambda: seqfeed.Loader(plan, dataset=ds).dp_size)
        os.environ.update(SEQFEED_DP_RANK=str(rank // 2), SEQFEED_DP_SIZE="2")
        got["env"] = _try(seqfeed.data_parallel_from_env)
        del os.environ["SEQFEED_DP_RANK"], os.environ["SEQFEED_DP_SIZE"]

        # Data x tensor parallelism.
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        dp = seqfeed.data_parallel_from_mesh(mesh, "dp")
        got["dp_tp"] = dp
        got["dp_tp_positions"] = _positions(
            seqfeed.Loader(plan, dataset=ds, dp_rank=dp[0], dp_size=dp[1], dtype="native")
        )

        # HSDP as torchtitan lays it out: replicate x shard, both data-parallel.
        hsdp = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp_replicate", "dp_shard"))
        got["tuple"] = _try(lambda: seqfeed.data_parallel_from_mesh(hsdp, ("dp_replicate", "dp_shard")))
        hsdp["dp_replicate", "dp_shard"]._flatten(mesh_dim_name="dp")
        got["flat"] = _try(lambda: seqfeed.data_parallel_from_mesh(hsdp, "dp"))
        got["shard_only"] = _try(lambda: seqfeed.data_parallel_from_mesh(hsdp, "dp_shard"))
        got["cp"] = _try(lambda: seqfeed.data_parallel_from_mesh(hsdp, "dp_shard_cp"))
        if got["flat"][0] == "ok":
            r, n = got["flat"][1]
            got["flat_positions"] = _positions(
                seqfeed.Loader(plan, dataset=ds, dp_rank=r, dp_size=n, dtype="native")
            )
        out.put((rank, got))
    except BaseException as e:  # report, so the parent fails with the reason
        out.put((rank, {"crash": repr(e)}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def mesh_results(tmp_path_factory):
    from conftest import make_dataset, write_plan

    tmp = tmp_path_factory.mktemp("mesh")
    ds = make_dataset(tmp)
    plan = write_plan(tmp / "plan.toml", [("web", 0.6), ("code", 0.4)], 8, 12)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, WORLD, str(tmp / "store"), str(plan), str(ds), q))
             for r in range(WORLD)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, g in got.items():
        assert "crash" not in g, (rank, g)
    return plan, ds, got


def _want(plan, ds, dp_size, dp_rank):
    return [[r["position"] for r in seqfeed.plan_show(plan, s, dp_size, dp_rank, dataset=ds)] for s in range(12)]


def test_device_mesh_dp_dimension(mesh_results):
    plan, ds, got = mesh_results
    for rank, g in got.items():
        assert g["dp_tp"] == (rank // 2, 2), (rank, g["dp_tp"])
        assert g["dp_tp_positions"] == _want(plan, ds, 2, rank // 2)
    # tensor-parallel peers (same dp rank) read identical rows
    assert got[0]["dp_tp_positions"] == got[1]["dp_tp_positions"]
    assert got[2]["dp_tp_positions"] == got[3]["dp_tp_positions"]
    assert got[0]["dp_tp_positions"] != got[2]["dp_tp_positions"]


def test_no_layout_in_a_multi_rank_job_is_refused(mesh_results):
    """Issue 17 D4: the global rank is not the data-parallel rank under
    tensor parallelism; with no layout given seqfeed raises instead of
    feeding tensor-parallel peers different batches."""
    _, _, got = mesh_results
    for rank, g in got.items():
        for key in ("default", "default_loader"):
            kind, msg = g[key]
            assert kind == "SeqfeedError", (rank, key, g[key])
            assert "one of 4 ranks" in msg and "dp_rank=" in msg and "data_parallel_from_mesh" in msg, msg
        assert g["env"] == ("ok", (rank // 2, 2))


def test_hsdp_mesh_tuple_and_flattened_dp(mesh_results):
    """Issue 17 D12: HSDP's ("dp_replicate", "dp_shard") as a tuple and as
    torchtitan's flattened "dp" give every rank its own data; "dp_shard"
    alone (replicas would read the same rows) and a dimension with context
    parallelism are refused."""
    plan, ds, got = mesh_results
    for rank, g in got.items():
        assert g["tuple"] == ("ok", (rank, 4)), (rank, g["tuple"])
        assert g["flat"] == ("ok", (rank, 4)), (rank, g["flat"])
        assert g["flat_positions"] == _want(plan, ds, 4, rank)
        kind, msg = g["shard_only"]
        assert kind == "SeqfeedError" and "'dp_replicate' of size 2" in msg, g["shard_only"]
        kind, msg = g["cp"]
        assert kind == "SeqfeedError" and "context parallelism" in msg, g["cp"]
    rows = [set(p for step in got[r]["flat_positions"] for p in step) for r in range(WORLD)]
    assert sum(map(len, rows)) == len(set().union(*rows)) == 96


def test_single_process_default_and_explicit_layout(dataset, monkeypatch):
    ds, plan = dataset
    for k in ("SEQFEED_DP_RANK", "SEQFEED_DP_SIZE", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert seqfeed.data_parallel_from_env() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert seqfeed.data_parallel_from_env() == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(seqfeed.SeqfeedError, match="one of 8 ranks"):
        seqfeed.data_parallel_from_env()
    with pytest.raises(seqfeed.SeqfeedError, match="together"):
        seqfeed.Loader(plan, dataset=ds, dp_rank=0)
