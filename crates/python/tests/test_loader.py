"""The seqfeed Python loader against real packed data, byte for byte."""

import gc
import time

import numpy as np
import pytest
import torch

import seqfeed
import subprocess

from conftest import Node, make_dataset, run, seqfeed_bin, write_plan


def expected_rows(plan, ds, step, dp_size, dp_rank):
    """Each row's tokens as the plan and the files say (independent of the loader)."""
    rows = seqfeed.plan_show(plan, step, dp_size, dp_rank, dataset=ds)
    return [seqfeed.inspect_source(ds / r["source"], seq=global_index(ds, r))["tokens"] for r in rows]


def global_index(ds, row):
    """The row's sequence index within its source (files are in order)."""
    src = ds / row["source"]
    before = 0
    for part in sorted(src.glob("part-*.seq")):
        rel = f"{row['source']}/{part.name}"
        if rel == row["file"]:
            return before + row["index"]
        before += seqfeed.inspect_source(src)["sequences"] if False else _count(part)
    raise AssertionError(row)


def _count(part):
    # header: count is a u64 at byte 24 (docs/FORMAT.md)
    with open(part, "rb") as f:
        head = f.read(64)
    return int.from_bytes(head[24:32], "little")


def test_local_batches_are_the_plan_rows_byte_for_byte(dataset):
    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, dtype="native", dp_rank=0, dp_size=1)
    n = 0
    for b in loader:
        assert b.tokens.dtype == torch.uint16
        assert tuple(b.tokens.shape) == (8, 65)
        want = expected_rows(plan, ds, b.step, 1, 0)
        assert b.tokens.to(torch.int64).tolist() == want
        assert len(b.sources) == 8 and set(b.sources) <= {"web", "code"}
        n += 1
    assert n == 12
    st = loader.stats()
    assert st["steps"] == 12 and st["sequences"] == 96


def test_tensors_are_zero_copy_views_of_the_step_buffer(dataset):
    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, dtype="native", labels=True, dp_rank=0, dp_size=1)
    b = next(loader)
    assert b.tokens.untyped_storage().data_ptr() == b.input_ids.untyped_storage().data_ptr()
    # labels have memory of their own (issue 17 D20: masking them in place
    # must not write into input_ids)
    assert b.labels.untyped_storage().data_ptr() != b.tokens.untyped_storage().data_ptr()
    assert tuple(b.input_ids.shape) == (8, 64) and tuple(b.labels.shape) == (8, 64)
    assert torch.equal(b.input_ids[:, 1:], b.labels[:, :-1])
    raw = np.frombuffer(b.native.tobytes(), dtype=np.uint16).reshape(8, 65)
    assert b.tokens.numpy().tobytes() == raw.tobytes()
    # widened to int64 (a copy) keeps the same values
    w = seqfeed.Loader(plan, dataset=ds, labels=True, dp_rank=0, dp_size=1)
    bw = next(w)
    assert bw.tokens.dtype == torch.int64
    # widened by the reader thread: the tensor is the step's int64 buffer
    assert bw.input_ids.untyped_storage().data_ptr() == bw.tokens.untyped_storage().data_ptr()
    assert bw.native.views >= 2
    assert bw.tokens.tolist() == b.tokens.to(torch.int64).tolist()


@pytest.mark.parametrize("dtype", ["native", "int64"])
def test_held_tensors_stay_valid_after_the_loader_moves_on(dataset, dtype):
    """Tensors outlive their Batch objects; the ring (prefetch 1: 2 slots)
    is reused only after they are freed, and never under them. int64 ids
    are widened by the reader thread and handed out without a copy too."""
    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, dtype=dtype, prefetch=1, dp_rank=0, dp_size=1)
    held = []  # (step, tensor, copy of its values when handed out)
    checked = 0
    for b in loader:
        t = b.tokens
        held.append((b.step, t, t.clone()))
        del b
        # keep one step back (the most a 2-slot ring allows while reading ahead)
        while len(held) > 1:
            step, t, want = held.pop(0)
            assert torch.equal(t, want), f"step {step} was overwritten"
            assert t.tolist() == expected_rows(plan, ds, step, 1, 0)
            checked += 1
            del t
            gc.collect()
    assert checked == 11


def test_holding_the_whole_ring_is_an_error_not_a_hang(dataset):
    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, dtype="native", prefetch=1, ring_wait_ms=300, dp_rank=0, dp_size=1)
    kept = [next(loader).tokens, next(loader).tokens]
    t = time.time()
    with pytest.raises(seqfeed.SeqfeedError, match="holds all 2 step buffers"):
        next(loader)
    assert time.time() - t < 5
    assert kept[0].tolist() == expected_rows(plan, ds, 0, 1, 0)


def test_micro_batches_and_data_parallel_peers(dataset):
    ds, plan = dataset
    # dp 2, micro_batch 2: each rank reads 4 rows per step as 2 micro-batches.
    for dp_rank in range(2):
        # prefetch 12: the whole run fits the ring, so every batch can be kept.
        kw = dict(dataset=ds, dtype="native", dp_rank=dp_rank, dp_size=2, micro_batch=2, prefetch=12)
        a = seqfeed.Loader(plan, **kw)
        peer = seqfeed.Loader(plan, **kw)
        assert len(a) == 24
        got = list(zip(a, peer))
        assert [(x.step, x.micro) for x, _ in got] == [(s, m) for s in range(12) for m in range(2)]
        for x, y in got:
            assert torch.equal(x.tokens, y.tokens), "tensor-parallel peers differ"
        for step in range(12):
            rows = torch.cat([x.tokens for x, _ in got if x.step == step])
            assert rows.to(torch.int64).tolist() == expected_rows(plan, ds, step, 2, dp_rank)
        del got


def test_state_dict_resumes_exactly_and_refuses_other_plans(dataset, tmp_path):
    ds, plan = dataset
    full = [b.tokens.clone() for b in seqfeed.Loader(plan, dataset=ds, dp_size=2, dp_rank=1, micro_batch=2)]
    assert len(full) == 24
    l1 = seqfeed.Loader(plan, dataset=ds, dp_size=2, dp_rank=1, micro_batch=2)
    for _ in range(7):
        next(l1)
    state = l1.state_dict()
    assert (state["step"], state["micro"]) == (3, 1)
    l2 = seqfeed.Loader(plan, dataset=ds, dp_size=2, dp_rank=1, micro_batch=2)
    l2.load_state_dict(state)
    rest = [b.tokens.clone() for b in l2]  # zero-copy views: copy what is kept
    assert len(rest) == len(full) - 7
    for a, b in zip(rest, full[7:]):
        assert torch.equal(a, b)
    other = write_plan(tmp_path / "other.toml", [("web", 0.5), ("code", 0.5)], 8, 12)
    with pytest.raises(seqfeed.SeqfeedError, match="plan config or the data changed"):
        seqfeed.Loader(other, dataset=ds, dp_size=2, dp_rank=1, micro_batch=2).load_state_dict(state)
    with pytest.raises(seqfeed.SeqfeedError, match="micro_batch"):
        seqfeed.Loader(plan, dataset=ds, dp_size=2, dp_rank=1, micro_batch=4).load_state_dict(state)


def test_bad_configurations_raise_the_cli_messages(dataset, tmp_path):
    ds, plan = dataset
    with pytest.raises(seqfeed.SeqfeedError) as e:
        seqfeed.Loader(plan, dataset=ds, dp_rank=2, dp_size=2)
    # the CLI's words: seqfeed read --rank 2 --world 2
    cli = subprocess.run([seqfeed_bin(), "read", "--plan", str(plan), "--dataset", str(ds), "--local",
                          "--rank", "2", "--world", "2"], capture_output=True, text=True)
    assert cli.returncode == 1
    assert str(e.value) in cli.stderr, (str(e.value), cli.stderr)
    with pytest.raises(seqfeed.SeqfeedError, match="does not divide the global batch 8"):
        seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=3)
    with pytest.raises(seqfeed.SeqfeedError, match="micro_batch 3"):
        seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=1, micro_batch=3)
    missing = write_plan(tmp_path / "missing.toml", [("web", 1), ("wiki", 1)], 8, 12)
    with pytest.raises(seqfeed.SeqfeedError, match="wiki"):
        seqfeed.Loader(missing, dataset=ds)
    # An unreachable node: a clear error, quickly.
    t = time.time()
    with pytest.raises(seqfeed.SeqfeedError, match="unreachable"):
        next(seqfeed.Loader(plan, dataset=ds, nodes=["127.0.0.1:9"], transport="tcp", io_timeout_ms=300, dp_rank=0, dp_size=1))
    assert time.time() - t < 30


def test_tcp_nodes_wrong_secret_and_node_list(dataset, node_factory):
    ds, plan = dataset
    node = node_factory(ds, secret="s3cret")
    with pytest.raises(seqfeed.SeqfeedError, match="secret"):
        next(seqfeed.Loader(plan, dataset=ds, nodes=[node.addr], transport="tcp", secret="wrong", dp_rank=0, dp_size=1, io_timeout_ms=500))
    local = [b.tokens.clone() for b in seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=1)]
    remote = [b.tokens.clone() for b in seqfeed.Loader(plan, dataset=ds, nodes=[f"a={node.addr}"], transport="tcp", secret="s3cret", dp_rank=0, dp_size=1)]
    assert len(remote) == 12
    for a, b in zip(local, remote):
        assert torch.equal(a, b)


def test_labels_masks_and_positions_match_megatron():
    """Against a direct port of megatron-core's _get_ltor_masks_and_position_ids loop."""

    def megatron(data, eod, eod_mask_loss, reset_position_ids):
        b, s = data.shape
        loss_mask = torch.ones(data.size(), dtype=torch.float)
        if eod_mask_loss:
            loss_mask[data == eod] = 0.0
        position_ids = torch.arange(s, dtype=torch.long).unsqueeze(0).expand_as(data).clone()
        if reset_position_ids:
            for row in range(b):
                eod_index = position_ids[row, data[row] == eod].clone()
                prev_index = 0
                for j in range(eod_index.size()[0]):
                    i = eod_index[j]
                    position_ids[row, (i + 1):] -= i + 1 - prev_index
                    prev_index = i + 1
        return loss_mask, position_ids

    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        data = torch.randint(0, 6, (4, 33), generator=g)
        for mask in (False, True):
            for reset in (False, True):
                got = seqfeed.loss_mask_and_position_ids(data.to(torch.uint16), 0, mask, reset)
                want = megatron(data, 0, mask, reset)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_loader_masks_follow_eod(dataset):
    ds, plan = dataset
    b = next(seqfeed.Loader(plan, dataset=ds, labels=True, eod_token=0, eod_mask_loss=True, reset_position_ids=True, dp_rank=0, dp_size=1))
    assert b.loss_mask.shape == b.input_ids.shape
    assert torch.equal(b.loss_mask == 0, b.input_ids == 0)
    eod = (b.input_ids == 0).nonzero()
    assert len(eod) > 0, "the fixture's documents are shorter than a row"
    r, c = eod[0].tolist()
    if c + 1 < b.input_ids.shape[1]:
        assert b.position_ids[r, c + 1].item() == 0


def test_notebook_bindings(dataset):
    ds, plan = dataset
    st = seqfeed.plan_stats(plan, dataset=ds)
    assert st["global_batch"] == 8 and st["steps"] == 12
    assert sum(s["quota"] for s in st["sources"]) == 96
    rows = seqfeed.plan_show(plan, 0, 2, dataset=ds)
    assert [r["dp_rank"] for r in rows] == [0] * 4 + [1] * 4
    src = seqfeed.inspect_source(ds / "web", seq=0)
    assert src["seq_len"] == 65 and len(src["tokens"]) == 65
    with pytest.raises(seqfeed.SeqfeedError):
        seqfeed.inspect_source(ds / "nope")


def _identity(r):
    return (r["source"], r["file"], r["index"])


def test_validation_split_is_held_out_of_training_and_covers_the_rest(tmp_path):
    """split="validation" serves the plan's held-out sequences: batches are
    the validation stream's rows byte for byte, no sequence of it is ever in
    the training stream, and the two streams together cover every sequence."""
    ds = make_dataset(tmp_path)
    plan = tmp_path / "plan.toml"
    write_plan(plan, [("web", 0.6), ("code", 0.4)], 8, 200)
    plan.write_text(plan.read_text() + "[split]\nholdout = 0.2\nseed = 5\n")
    info = seqfeed.plan_stats(plan, dataset=ds)
    v, gb = info["validation_sequences"], info["global_batch"]
    assert v > gb and info["validation_steps"] == v // gb

    val = seqfeed.Loader(plan, dataset=ds, dtype="native", dp_rank=1, dp_size=2, split="validation")
    assert len(val) == v // gb
    served = []
    for b in val:
        rows = seqfeed.plan_show(plan, b.step, 2, 1, dataset=ds, split="validation")
        assert b.positions == [r["position"] for r in rows]
        assert b.sources == [r["source"] for r in rows]
        want = [seqfeed.inspect_source(ds / r["source"], seq=global_index(ds, r))["tokens"] for r in rows]
        assert b.tokens.to(torch.int64).tolist() == want
        served.extend(_identity(r) for r in rows)
    assert len(served) == (v // gb) * gb // 2

    # The whole validation stream (its short last step too) and the whole run.
    vsteps = -(-v // gb)
    validation = [
        _identity(r)
        for s in range(vsteps)
        for r in seqfeed.plan_show(plan, s, dataset=ds, split="validation")
    ]
    assert len(validation) == v == len(set(validation))
    assert set(served) <= set(validation)
    train = {_identity(r) for s in range(info["steps"]) for r in seqfeed.plan_show(plan, s, dataset=ds)}
    assert not train & set(validation)
    total = sum(s["size"] for s in info["sources"])
    assert len(train) + len(validation) == total
    assert {src for src, _, _ in validation} == {"web", "code"}

    # A state records its stream; the other stream's loader refuses it.
    st = val.state_dict()
    assert st["split"] == "validation"
    tr = seqfeed.Loader(plan, dataset=ds, dp_rank=1, dp_size=2)
    assert tr.state_dict()["split"] == "train"
    with pytest.raises(seqfeed.SeqfeedError, match="validation"):
        tr.load_state_dict(st)
    val.load_state_dict(dict(st, step=1, micro=0))
    assert next(iter(val)).step == 1


def test_validation_split_needs_a_holdout(dataset):
    ds, plan = dataset
    with pytest.raises(seqfeed.SeqfeedError, match="holds out no sequences"):
        seqfeed.Loader(plan, dataset=ds, split="validation")
    with pytest.raises(ValueError, match="split"):
        seqfeed.Loader(plan, dataset=ds, split="test")


def test_stats_count_each_node(dataset, node_factory):
    """Loader.stats()["nodes"]: per-node bytes, reads, batches, errors by
    kind, fail-overs, CRC mismatches and batch latency (issue 12 item 10)."""
    ds, plan = dataset
    a, b = node_factory(ds), node_factory(ds)
    loader = seqfeed.Loader(plan, dataset=ds, nodes=[f"a={a.addr}", f"b={b.addr}"], transport="tcp",
                            dtype="native", dp_rank=0, dp_size=1)
    local = [t.tokens.clone() for t in seqfeed.Loader(plan, dataset=ds, dtype="native", dp_rank=0, dp_size=1)]
    got = [t.tokens.clone() for t in loader]
    assert len(got) == 12 and all(torch.equal(x, y) for x, y in zip(local, got))
    st = loader.stats()
    assert st["crc_mismatches"] == 0
    nodes = st["nodes"]
    assert [n["name"] for n in nodes] == ["a", "b"]
    # 12 steps of 8 rows of 65 uint16 tokens, split between the two nodes.
    assert sum(n["reads"] for n in nodes) == 96
    assert sum(n["bytes"] for n in nodes) == 96 * 65 * 2
    for n in nodes:
        assert n["live"] and n["reads"] > 0 and n["batches"] >= 12
        assert n["errors"] == {"timeout": 0, "connection": 0, "protocol": 0, "backend": 0, "other": 0}
        assert n["failed_over"] == 0 and n["reconnects"] == 0 and n["crc_mismatches"] == 0
        assert n["last_crc_mismatch"] is None
        assert 0 < n["latency_p50_s"] <= n["latency_p99_s"] < 10
    # With the CRC check on (off by default), intact data reads the same.
    on = seqfeed.Loader(plan, dataset=ds, nodes=[a.addr], transport="tcp", dtype="native",
                        dp_rank=0, dp_size=1, verify_crc=True)
    assert all(torch.equal(x, t.tokens) for x, t in zip(local, on))
    assert on.stats()["crc_mismatches"] == 0 and on.stats()["nodes"][0]["reads"] == 96
