"""Issue 17: the PyTorch contracts of seqfeed.Loader / Batch / SeqfeedDataset,
against real packed data (made with the CLI, see conftest.py), rows compared
byte for byte with what the plan and the files say, in real torch loops."""

import gc
import os
import signal
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import seqfeed
from conftest import make_dataset, write_plan
from test_loader import global_index


def plan_rows(plan, ds, step, dp_size, dp_rank, split="train"):
    """Each row's tokens as the plan and the files say (independent of the loader)."""
    rows = seqfeed.plan_show(plan, step, dp_size, dp_rank, dataset=ds, split=split)
    return [seqfeed.inspect_source(ds / r["source"], seq=global_index(ds, r))["tokens"] for r in rows]


def test_issue17_d2_hf_format_labels_are_unshifted_and_masked(dataset):
    """format="hf": input_ids are the L inputs and labels an unshifted copy,
    -100 after each EOD (eod_mask_loss), so a model that shifts once (as HF
    *ForCausalLM do) trains on the next token, not the one two ahead."""
    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, labels=True, eod_token=0, eod_mask_loss=True,
                            dp_rank=0, dp_size=1)
    n = 0
    for b in loader:
        rows = torch.tensor(plan_rows(plan, ds, b.step, 1, 0))  # [8, 65], L + 1 = 65
        d = b.as_dict(format="hf")
        assert set(d) == {"input_ids", "labels", "position_ids"}
        assert torch.equal(d["input_ids"], rows[:, :-1])
        want = rows[:, :-1].clone()
        after_eod = torch.zeros_like(want, dtype=torch.bool)
        after_eod[:, 1:] = rows[:, :-2] == 0
        want[after_eod] = -100
        assert d["labels"].dtype == torch.int64 and torch.equal(d["labels"], want)
        assert after_eod.any()
        # HF's loss (shift inside) == the next-token loss on the same rows.
        vocab = 50000
        logits = torch.randn(8, 64, vocab, generator=torch.Generator().manual_seed(b.step))
        hf = F.cross_entropy(logits[:, :-1].flatten(0, 1), d["labels"][:, 1:].flatten(), ignore_index=-100)
        m = b.as_dict(format="megatron")
        per_tok = F.cross_entropy(logits.flatten(0, 1), m["labels"].flatten(), reduction="none").view(8, 64)
        mask = m["loss_mask"].clone()
        mask[:, -1] = 0  # the HF shift leaves each row's last target out
        assert torch.allclose(hf, (per_tok * mask).sum() / mask.sum(), atol=1e-5)
        n += 1
    assert n == 12


def test_issue17_d2_megatron_format_is_megatrons_get_batch(dataset):
    """format="megatron": tokens are the L inputs (not the stored L+1 row),
    labels the next tokens, loss_mask and position_ids as Megatron's
    _get_ltor_masks_and_position_ids make them, no attention mask."""
    ds, plan = dataset
    kw = dict(dataset=ds, labels=True, dp_rank=1, dp_size=2, micro_batch=2)
    for b in seqfeed.Loader(plan, eod_token=0, eod_mask_loss=True, reset_position_ids=True, **kw):
        rows = torch.tensor(plan_rows(plan, ds, b.step, 2, 1))[2 * b.micro: 2 * b.micro + 2]
        m = b.as_dict(format="megatron")
        assert set(m) == {"tokens", "labels", "loss_mask", "position_ids"}
        assert torch.equal(m["tokens"], rows[:, :-1]) and m["tokens"].shape == (2, 64)
        assert torch.equal(m["labels"], rows[:, 1:])
        lm, pos = seqfeed.loss_mask_and_position_ids(rows[:, :-1], 0, True, True)
        assert torch.equal(m["loss_mask"], lm) and torch.equal(m["position_ids"], pos)
    # Without an eod_token: all-ones loss mask, plain positions.
    b = next(seqfeed.Loader(plan, **kw))
    m = b.as_dict(format="megatron")
    assert torch.equal(m["loss_mask"], torch.ones(2, 64)) and m["loss_mask"].dtype == torch.float32
    assert torch.equal(m["position_ids"], torch.arange(64).expand(2, 64))
    # Megatron's labels need L+1 rows; an unknown format is an argument error.
    nolabels = next(seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=1))
    with pytest.raises(seqfeed.SeqfeedError, match="labels=True"):
        nolabels.as_dict(format="megatron")
    with pytest.raises(ValueError, match="'hf' or 'megatron'"):
        nolabels.as_dict(format="torch")
    with pytest.raises(TypeError):
        nolabels.as_dict()  # the format is never guessed


def test_issue17_d2_dataset_yields_the_chosen_format(dataset):
    ds, plan = dataset
    kw = dict(dataset=ds, labels=True, dp_rank=0, dp_size=1, micro_batch=4)
    want = [torch.tensor(plan_rows(plan, ds, s, 1, 0))[m * 4:(m + 1) * 4] for s in range(12) for m in range(2)]
    hf = list(DataLoader(seqfeed.SeqfeedDataset(plan, format="hf", prefetch=30, **kw), batch_size=None))
    meg = list(DataLoader(seqfeed.SeqfeedDataset(plan, format="megatron", prefetch=30, **kw), batch_size=None))
    assert len(hf) == len(meg) == len(want) == 24
    for h, m, w in zip(hf, meg, want):
        # The dataset's manifests record EOS 0, so the loader knows the EOD
        # id and HF batches carry position_ids (plain, no reset asked for).
        assert set(h) == {"input_ids", "labels", "position_ids"}
        assert torch.equal(h["input_ids"], w[:, :-1]) and torch.equal(h["labels"], w[:, :-1])
        assert torch.equal(h["position_ids"], torch.arange(64).expand(4, 64))
        assert torch.equal(m["tokens"], w[:, :-1]) and torch.equal(m["labels"], w[:, 1:])
    with pytest.raises(ValueError, match="format='hf'"):
        seqfeed.SeqfeedDataset(plan, **kw)


def test_issue17_d20_labels_do_not_share_memory_with_input_ids(dataset):
    ds, plan = dataset
    for dtype in ("int64", "int32"):
        b = next(seqfeed.Loader(plan, dataset=ds, labels=True, dtype=dtype, dp_rank=0, dp_size=1))
        ids = b.input_ids.clone()
        b.labels[b.labels > 100] = 0  # mask in place, as training code does
        assert torch.equal(b.input_ids, ids), f"{dtype}: writing labels changed input_ids"
        assert torch.equal(b.tokens[:, :-1], ids)
        h = b.as_dict(format="hf")
        h["labels"][:] = -100
        assert torch.equal(b.input_ids, ids), f"{dtype}: writing HF labels changed input_ids"


def test_issue17_d3_step_boundary_state_loads_into_another_layout(dataset):
    """A state saved at a step boundary resumes with another dp_size and
    micro_batch (a 64-node job on 60 nodes); a mid-step one is refused."""
    ds, plan = dataset
    saver = seqfeed.Loader(plan, dataset=ds, dp_rank=1, dp_size=2, micro_batch=2)
    for _ in range(2 * 5):  # 5 whole steps
        next(saver)
    state = saver.state_dict()
    assert (state["step"], state["micro"]) == (5, 0)
    for dp_size, micro_batch in ((4, 1), (1, 8), (2, 4), (8, 1)):
        for dp_rank in range(dp_size):
            l = seqfeed.Loader(plan, dataset=ds, dtype="native", dp_rank=dp_rank, dp_size=dp_size,
                               micro_batch=micro_batch)
            l.load_state_dict(state)
            assert len(l) == 7 * (8 // dp_size // micro_batch)
            got = {}
            for b in l:
                got.setdefault(b.step, []).extend(b.tokens.to(torch.int64).tolist())
            assert sorted(got) == list(range(5, 12))
            for step, rows in got.items():
                assert rows == plan_rows(plan, ds, step, dp_size, dp_rank), (dp_size, micro_batch, step)
    next(saver)
    mid = saver.state_dict()
    assert (mid["step"], mid["micro"]) == (5, 1)
    with pytest.raises(seqfeed.SeqfeedError, match=r"inside step 5.*dp_size=2 \(this loader: 4\).*step boundary"):
        seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=4, micro_batch=1).load_state_dict(mid)
    with pytest.raises(seqfeed.SeqfeedError, match=r"micro_batch=2 \(this loader: 4\)"):
        seqfeed.Loader(plan, dataset=ds, dp_rank=1, dp_size=2, micro_batch=4).load_state_dict(mid)
    same = seqfeed.Loader(plan, dataset=ds, dp_rank=1, dp_size=2, micro_batch=2)
    same.load_state_dict(mid)
    assert mid["global_batch"] == 8
    assert next(same).tokens.to(torch.int64).tolist() == plan_rows(plan, ds, 5, 2, 1)[2:]


def test_issue17_d17_state_version_is_checked(dataset):
    ds, plan = dataset
    l = seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=1)
    state = l.state_dict()
    assert state["version"] == 1
    for bad in (2, 99, 0, "1", None):
        with pytest.raises(seqfeed.SeqfeedError, match="state version"):
            l.load_state_dict(dict(state, version=bad))
    old = {k: v for k, v in state.items() if k not in ("version", "global_batch")}
    l.load_state_dict(dict(old, step=3))  # a state written before the key existed
    assert next(l).step == 3


def test_issue17_d5_validation_loader_reads_its_whole_stream_at_every_evaluation(tmp_path):
    ds = make_dataset(tmp_path)
    plan = write_plan(tmp_path / "plan.toml", [("web", 0.6), ("code", 0.4)], 8, 200)
    plan.write_text(plan.read_text() + "[split]\nholdout = 0.2\nseed = 5\n")
    info = seqfeed.plan_stats(plan, dataset=ds)
    vsteps = info["validation_steps"]
    assert vsteps >= 2
    want = [plan_rows(plan, ds, s, 2, 0, split="validation")[m * 2:(m + 1) * 2]
            for s in range(vsteps) for m in range(2)]
    val = seqfeed.Loader(plan, dataset=ds, dtype="native", dp_rank=0, dp_size=2, micro_batch=2,
                         split="validation")
    train = seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=2, micro_batch=2)
    for evaluation in range(3):
        next(train)  # training goes on between evaluations
        got = [b.tokens.to(torch.int64).tolist() for b in val]
        assert got == want, f"evaluation {evaluation}"
        assert len(val) == 0
    # A loop broken off early continues where it stopped.
    it = iter(val)
    first = next(it).tokens.to(torch.int64).tolist()
    assert first == want[0]
    assert [b.tokens.to(torch.int64).tolist() for b in val] == want[1:]
    # A training loader that has ended stays ended (no silent second pass).
    short = seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=2, end_step=2)
    assert len(list(short)) == 2 and list(short) == [] and len(short) == 0


def test_issue17_d13_dataset_iterators_continue_instead_of_replaying(dataset):
    """Lightning and friends make a new iterator per epoch: the second one
    continues the stream rather than starting the run over."""
    ds, plan = dataset
    kw = dict(dataset=ds, labels=True, dp_rank=0, dp_size=2, micro_batch=2)
    want = [torch.tensor(plan_rows(plan, ds, s, 2, 0))[m * 2:(m + 1) * 2] for s in range(12) for m in range(2)]
    dl = DataLoader(seqfeed.SeqfeedDataset(plan, format="megatron", **kw), batch_size=None)
    epochs = []
    for _ in range(3):  # three "epochs" of 8 micro-batches, a new iterator each
        got = []
        for batch in dl:
            got.append(torch.cat([batch["tokens"], batch["labels"][:, -1:]], dim=1))
            if len(got) == 8:
                break
        epochs.append(got)
    flat = [t for e in epochs for t in e]
    assert len(flat) == 24
    for g, w in zip(flat, want):
        assert torch.equal(g, w)
    assert list(dl) == []  # the run is over


def test_issue17_d15_prefetch_zero_is_refused(dataset):
    ds, plan = dataset
    with pytest.raises(seqfeed.SeqfeedError, match="prefetch 0: need at least 1"):
        seqfeed.Loader(plan, dataset=ds, prefetch=0, dp_rank=0, dp_size=1)
    with pytest.raises(ValueError, match="prefetch"):
        seqfeed.Loader(plan, dataset=ds, prefetch=1.5, dp_rank=0, dp_size=1)
    # prefetch 1, a plain loop holding the current batch: every step, no RingHeld.
    steps = [b.step for b in seqfeed.Loader(plan, dataset=ds, prefetch=1, dp_rank=0, dp_size=1)]
    assert steps == list(range(12))


def test_issue17_d23_len_counts_micro_batches_and_is_documented(dataset):
    ds, plan = dataset
    l = seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=2, micro_batch=2)
    assert l.accumulation == 2 and len(l) == 12 * 2
    doc = seqfeed.Loader.__doc__
    assert "micro-batches left to yield (not steps)" in seqfeed.Loader.__len__.__doc__.lower()
    assert "``len(loader)`` is the number of\n    *micro-batches*" in doc
    assert "``accumulation``" in doc


def test_issue17_d23_inspect_source_takes_a_file_and_plan_show_columns(dataset):
    """plan_show's `file`/`index` columns and its `seq` column (within the
    source) both lead to the same tokens through inspect_source."""
    ds, plan = dataset
    rows = seqfeed.plan_show(plan, 3, dataset=ds)
    assert len(rows) == 8
    for r in rows:
        by_file = seqfeed.inspect_source(ds / r["file"], index=r["index"])
        by_source = seqfeed.inspect_source(ds / r["source"], seq=r["seq"])
        assert by_file["tokens"] == by_source["tokens"] and len(by_file["tokens"]) == 65
        assert by_file["index"] == r["index"] and by_source["seq"] == r["seq"]
        assert by_file["seq_len"] == 65 and by_file["dtype"] == "u16"
    f = ds / rows[0]["file"]
    with pytest.raises(ValueError, match="index="):
        seqfeed.inspect_source(f, seq=0)
    with pytest.raises(ValueError, match="seq="):
        seqfeed.inspect_source(ds / rows[0]["source"], index=0)


def test_issue17_d14_a_collected_loader_releases_the_gil_while_it_stops(dataset, node_factory):
    """A loader dropped by the GC while its reader waits on a node that does
    not answer: other Python threads keep running during the drop."""
    ds, plan = dataset
    node = node_factory(ds)
    loader = seqfeed.Loader(plan, dataset=ds, nodes=[node.addr], transport="tcp", prefetch=1,
                            io_timeout_ms=2500, failover_ms=2500, dp_rank=0, dp_size=1)
    b = next(loader)  # step 0
    time.sleep(0.5)  # the reader has read step 1 into the ring's other slot
    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        del b
        b = next(loader)  # step 1, read before the node stopped
        assert b.step == 1
        del b
        gc.collect()
        time.sleep(0.3)  # the reader now waits on the stopped node for step 2
        ticks, stop = [], threading.Event()

        def tick():
            while not stop.is_set():
                ticks.append(time.monotonic())
                time.sleep(0.01)

        t = threading.Thread(target=tick)
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        del loader
        gc.collect()
        dropped = time.monotonic() - t0
        time.sleep(0.1)
        stop.set()
        t.join()
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)
    gaps = [y - x for x, y in zip(ticks, ticks[1:])]
    assert dropped > 1.0, f"the drop took {dropped:.2f}s: the reader was not waiting on the node"
    # A drop that held the GIL would stall the ticker for the whole drop; half
    # of it leaves room for a loaded machine's scheduling gaps.
    assert max(gaps) < dropped / 2, f"other threads stalled {max(gaps):.2f}s during a {dropped:.2f}s drop"


def _in_child(fn):
    """Runs fn in a forked child; returns its exit status, or None if it
    hung for 20 s (the child is then killed)."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os._exit(0)
        except BaseException:
            os._exit(3)
    deadline = time.time() + 20
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_issue17_d16_close_and_finalization_in_a_forked_child_return(dataset):
    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=1)
    next(loader)
    assert _in_child(loader.close) == 0, "close() in a forked child hung"
    holder = [loader]
    del loader

    def finalize():
        holder.clear()  # the last reference: the loader is collected in the child
        gc.collect()

    assert _in_child(finalize) == 0, "finalizing the loader in a forked child hung"
    # The parent's loader is unharmed.
    assert [b.step for b in holder[0]] == list(range(1, 12))
