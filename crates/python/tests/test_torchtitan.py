"""Issue 17 item 2, torchtitan (PyPI ``torchtitan``): 8 gloo processes build
torchtitan's own ``ParallelDims`` meshes (dp_replicate x dp_shard x cp x tp),
take the data-parallel layout from them, train a tiny torchtitan Llama on
``seqfeed.TorchtitanDataLoader``'s ``(input_dict, labels)`` pairs with
torchtitan's loss, save the loader with ``torch.distributed.checkpoint``
and resume the exact stream from it, also on another data-parallel size."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import seqfeed

pytest.importorskip("torchtitan", reason="torchtitan is not installed (pip install torchtitan)")

WORLD = 8
SAVE_AT = 3  # steps read before the checkpoint
AFTER = 3  # steps compared after it


def _rows(plan, ds, step, dp_size, dp_rank):
    from test_loader import global_index  # the tests' own plan -> file mapping

    return torch.tensor([
        seqfeed.inspect_source(ds / r["source"], seq=global_index(ds, r))["tokens"]
        for r in seqfeed.plan_show(plan, step, dp_size, dp_rank, dataset=ds)
    ])


def _take(dl, steps):
    """`steps` steps of (input, labels) pairs, as lists of int lists."""
    out = []
    it = iter(dl)
    for _ in range(steps * dl.loader.accumulation):
        d, labels = next(it)
        out.append((d["input"].tolist(), labels.tolist(), sorted(d)))
    return out


def _worker(rank, store, plan, ds, ckpt, q):
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.stateful import Stateful
        from torch.distributed.device_mesh import init_device_mesh
        import torchtitan.distributed.parallel_dims as titan_pd
        from torchtitan.components.dataloader import BaseDataLoader
        from torchtitan.components.loss import cross_entropy_loss
        from torchtitan.models.llama3.model.args import TransformerModelArgs
        from torchtitan.models.llama3.model.model import Transformer

        # torchtitan picks "cuda" as its device type whenever torch is a CUDA
        # build; this CPU-only job builds its meshes on gloo.
        titan_pd.device_type = "cpu"
        got = {}
        plan, ds = str(plan), pathlib.Path(ds)

        # A: HSDP x TP. torchtitan's trainer reads the data layout off its
        # "batch" mesh (dp_replicate x dp_shard).
        pd = titan_pd.ParallelDims(dp_replicate=2, dp_shard=2, cp=1, tp=2, pp=1, ep=1, etp=1,
                                   world_size=WORLD)
        batch = pd.get_mesh("batch")
        titan = (batch.get_local_rank(), batch.size())
        got["titan_a"] = titan
        got["from_batch_mesh"] = seqfeed.data_parallel_from_mesh(batch, "batch")
        raw = init_device_mesh("cpu", (2, 2, 1, 2), mesh_dim_names=("dp_replicate", "dp_shard", "cp", "tp"))
        got["tuple"] = seqfeed.data_parallel_from_mesh(raw, ("dp_replicate", "dp_shard"))
        raw["dp_replicate", "dp_shard"]._flatten(mesh_dim_name="dp")
        got["flat"] = seqfeed.data_parallel_from_mesh(raw, "dp")

        dp_rank, dp_size = titan
        kw = dict(dataset=ds, micro_batch=1, eod_mask_loss=True, reset_position_ids=True)
        dl = seqfeed.TorchtitanDataLoader(plan, dp_rank=dp_rank, dp_world_size=dp_size,
                                          positions=True, **kw)
        got["is_titan_loader"] = isinstance(dl, BaseDataLoader) and isinstance(dl, Stateful)
        # A tiny torchtitan Llama trained on the pairs with torchtitan's loss.
        torch.manual_seed(0)
        args = TransformerModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=50001, max_seq_len=64,
                                    multiple_of=16)
        model = Transformer(args)
        with torch.no_grad():
            model.init_weights()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses, seen = [], []
        it = iter(dl)
        for _ in range(SAVE_AT * dl.loader.accumulation):
            d, labels = next(it)
            seen.append((d["input"].tolist(), labels.tolist(), sorted(d)))
            pred = model(d["input"], positions=d["positions"])
            loss = cross_entropy_loss(pred, labels) / (labels != -100).sum()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        got["losses"] = losses
        got["before"] = seen
        dcp.save({"dataloader": dl}, checkpoint_id=ckpt)
        got["saved_state"] = dl.state_dict()
        got["ref_after"] = _take(dl, AFTER)

        fresh = seqfeed.TorchtitanDataLoader(plan, dp_rank=dp_rank, dp_world_size=dp_size,
                                             positions=True, **kw)
        dcp.load({"dataloader": fresh}, checkpoint_id=ckpt)
        got["resumed"] = _take(fresh, AFTER)

        # B: FSDP x CP x TP, batch mesh of 2: the same checkpoint resumes on
        # another data-parallel size (CP and TP peers read the same rows).
        pd_b = titan_pd.ParallelDims(dp_replicate=1, dp_shard=2, cp=2, tp=2, pp=1, ep=1, etp=1,
                                     world_size=WORLD)
        batch_b = pd_b.get_mesh("batch")
        got["titan_b"] = (batch_b.get_local_rank(), batch_b.size())
        raw_b = init_device_mesh("cpu", (1, 2, 2, 2), mesh_dim_names=("dp_replicate", "dp_shard", "cp", "tp"))
        got["tuple_b"] = seqfeed.data_parallel_from_mesh(raw_b, ("dp_replicate", "dp_shard"))
        r_b, n_b = got["titan_b"]
        other = seqfeed.TorchtitanDataLoader(plan, dp_rank=r_b, dp_world_size=n_b, positions=True, **kw)
        dcp.load({"dataloader": other}, checkpoint_id=ckpt)
        got["resumed_b"] = _take(other, AFTER)
        q.put((rank, got))
    except BaseException as e:  # report, so the parent fails with the reason
        import traceback

        q.put((rank, {"crash": traceback.format_exc() + repr(e)}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def titan(tmp_path_factory):
    from conftest import make_dataset, write_plan

    tmp = tmp_path_factory.mktemp("titan")
    ds = make_dataset(tmp)
    plan = write_plan(tmp / "plan.toml", [("web", 0.6), ("code", 0.4)], 8, 12)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, str(tmp / "store"), str(plan), str(ds), str(tmp / "ckpt"), q))
             for r in range(WORLD)]
    for p in procs:
        p.start()
    got = {}
    try:
        while len(got) < WORLD:
            rank, g = q.get(timeout=300)
            # A rank that failed leaves the others waiting in a collective.
            assert "crash" not in g, (rank, g["crash"])
            got[rank] = g
    finally:
        for p in procs:
            p.join(timeout=60 if len(got) == WORLD else 0)
            if p.is_alive():
                p.kill()
                p.join()
    assert all(p.exitcode == 0 for p in procs)
    return plan, ds, got


def _want(plan, ds, steps, dp_size, dp_rank, eod=0):
    """Per micro-batch (micro_batch 1): input, labels with -100 after each
    EOD (eod_mask_loss), from the plan and the files."""
    out = []
    for s in steps:
        for row in _rows(plan, ds, s, dp_size, dp_rank):
            inp, lab = row[:-1].clone(), row[1:].clone()
            lab[inp == eod] = -100
            out.append(([inp.tolist()], [lab.tolist()], ["input", "positions"]))
    return out


def test_torchtitan_mesh_layout_is_the_batch_mesh(titan):
    """seqfeed's helper gives torchtitan's own (batch_rank, batch_degree),
    from the "batch" mesh, the (dp_replicate, dp_shard) tuple and the
    flattened "dp"; CP and TP peers share a data-parallel rank."""
    _, _, got = titan
    for rank, g in got.items():
        want_a = (rank // 2, 4)  # [pp, batch, cp, tp] row-major: tp innermost
        assert g["titan_a"] == g["from_batch_mesh"] == g["tuple"] == g["flat"] == want_a, (rank, g)
        want_b = (rank // 4, 2)  # batch 2 x cp 2 x tp 2
        assert g["titan_b"] == g["tuple_b"] == want_b, (rank, g)
        assert g["is_titan_loader"]


def test_torchtitan_pairs_are_the_plan_rows_and_train(titan):
    """(input_dict, labels) are the plan's rows: input = row[:-1], labels =
    row[1:] with -100 after EOD; TP peers get the same pairs; the tiny
    torchtitan Llama's loss is finite and falls."""
    plan, ds, got = titan
    for rank, g in got.items():
        dp_rank, dp_size = g["titan_a"]
        assert g["before"] == _want(plan, ds, range(SAVE_AT), dp_size, dp_rank), rank
        assert all(torch.isfinite(torch.tensor(g["losses"])))
    for a in range(0, WORLD, 2):
        assert got[a]["before"] == got[a + 1]["before"]  # TP peers
    assert got[0]["before"] != got[2]["before"]
    assert got[0]["losses"][-1] < got[0]["losses"][0], got[0]["losses"]


def test_torchtitan_dcp_checkpoint_resumes_the_exact_stream(titan):
    """dcp.save / dcp.load of the loader: the resumed loader yields exactly
    what the saved one went on to yield, and the same checkpoint loads into
    a job with another data-parallel size (the plan's rows for that size)."""
    plan, ds, got = titan
    after = range(SAVE_AT, SAVE_AT + AFTER)
    for rank, g in got.items():
        assert g["saved_state"]["step"] == SAVE_AT and g["saved_state"]["micro"] == 0
        assert "dp_rank" not in g["saved_state"]
        assert g["resumed"] == g["ref_after"] == _want(plan, ds, after, 4, g["titan_a"][0]), rank
        r_b, n_b = g["titan_b"]
        assert g["resumed_b"] == _want(plan, ds, after, n_b, r_b), rank
