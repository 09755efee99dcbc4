"""Issue 17 item 2, Megatron-core (PyPI ``megatron-core``, the installed
0.16.1): ``format="megatron"`` batches against megatron-core's own
``GPTDataset`` on the same packed sequences, key by key; tensor-parallel
peers under megatron-core's ``parallel_state`` (gloo) each read the same
rows; a Megatron-style cyclic validation iterator over the validation split.

Why the comparison is exact: GPTDataset's samples overlap by one token
(its sample index has one boundary per sample, and sample k reads
``sequence_length + 1`` tokens from boundary k, so its last token is sample
k+1's first), while seqfeed's rows are disjoint spans of L+1 tokens of the
same token stream. So GPTDataset is built by megatron-core's own builder
over a Megatron corpus, and then given a *sample index over seqfeed's rows*:
entry 2g is where seqfeed row g starts (a (document, offset) pair) and entry
2g+1 where its last token is, so GPTDataset item 2g (its shuffle index is
the identity) reads exactly row g with its own reading code (documents
spanned, ``add_extra_token_to_sequence``) and builds ``tokens``, ``labels``,
``loss_mask`` and ``position_ids`` with its own
``_get_ltor_masks_and_position_ids`` (``eod_mask_loss``,
``reset_position_ids``, no attention mask). Items 2g+1 are never used."""

import hashlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import default_collate

import seqfeed
from conftest import run, write_plan
from test_loader import global_index

pytest.importorskip("megatron.core", reason="megatron-core is not installed (scripts/python-env.sh)")

L = 64  # model sequence length; seqfeed rows hold L + 1 tokens
EOD = 0
GB, STEPS = 8, 6


class Tokenizer:
    """What GPTDataset reads of a tokenizer (as benches/scripts/megatron_gptdataset.py)."""

    vocab_size, eod, eos, pad = 50000, EOD, EOD, -1
    unique_identifiers = {"class": "Tokenizer", "vocab_size": 50000, "eod": EOD}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A Megatron .bin/.idx corpus written by megatron-core's own builder,
    packed by ``seqfeed pack`` into one source, and a plan over it."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    tmp = tmp_path_factory.mktemp("megatron")
    prefix = str(tmp / "corpus_text_document")
    rng = np.random.default_rng(5)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    total = 0
    while total < 9000:
        doc = rng.integers(1, 50000, size=int(rng.integers(5, 150)), dtype=np.uint16)
        doc[-1] = EOD
        builder.add_document(doc, [len(doc)])
        total += len(doc)
    builder.finalize(prefix + ".idx")
    ds = tmp / "data"
    # The documents already end in EOD: no --eos.
    run("pack", "--out", ds / "mega", "--seq-len", L + 1, "--dtype", "u16", prefix + ".idx")
    plan = write_plan(tmp / "plan.toml", [("mega", 1.0)], GB, STEPS)
    return tmp, prefix, ds, plan


def gpt_dataset_over_rows(prefix, n_rows, cache):
    """megatron-core's GPTDataset over the corpus, with a sample index whose
    item 2g is seqfeed row g (see the module docstring)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    config = GPTDatasetConfig(
        random_seed=1, sequence_length=L, blend=([prefix], None), split="100,0,0",
        path_to_cache=str(cache), tokenizer=Tokenizer(), reset_position_ids=True,
        reset_attention_mask=False, eod_mask_loss=True, create_attention_mask=False,
        mmap_bin_files=True,
    )
    gpt, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [16, 0, 0], lambda: True, config).build()
    lengths = np.asarray(gpt.dataset.sequence_lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])

    def where(t):  # token offset in the stream -> (document, offset in it)
        d = int(np.searchsorted(starts, t, side="right") - 1)
        return d, t - int(starts[d])

    index = []
    for g in range(n_rows):
        index += [where(g * (L + 1)), where(g * (L + 1) + L)]
    index.append(index[-1])
    gpt.document_index = np.arange(len(lengths), dtype=np.int32)
    gpt.sample_index = np.asarray(index, dtype=np.int64)
    gpt.shuffle_index = np.arange(2 * n_rows, dtype=np.int64)
    return gpt


def test_megatron_format_equals_gptdataset_get_batch(corpus):
    tmp, prefix, ds, plan = corpus
    n_rows = seqfeed.plan_stats(plan, dataset=ds)["sources"][0]["size"]
    gpt = gpt_dataset_over_rows(prefix, n_rows, tmp / "cache")
    n = 0
    for dp_rank in range(2):
        loader = seqfeed.Loader(plan, dataset=ds, labels=True, eod_token=EOD, eod_mask_loss=True,
                                reset_position_ids=True, dp_rank=dp_rank, dp_size=2, micro_batch=2)
        for b in loader:
            rows = seqfeed.plan_show(plan, b.step, 2, dp_rank, dataset=ds)[2 * b.micro: 2 * b.micro + 2]
            want = default_collate([gpt[2 * global_index(ds, r)] for r in rows])  # what get_batch receives
            got = b.as_dict(format="megatron")
            assert set(got) == set(want) == {"tokens", "labels", "loss_mask", "position_ids"}
            for k in want:
                assert got[k].shape == want[k].shape == (2, L), k
                assert got[k].dtype == want[k].dtype, (k, got[k].dtype, want[k].dtype)
                assert torch.equal(got[k], want[k]), (b.step, b.micro, k)
            n += 1
    assert n == 2 * STEPS * 2
    # The fixture exercises what the masks are for: EODs inside rows.
    assert (want["loss_mask"] == 0).any() and (want["position_ids"][:, 1:] == 0).any()


def _tp_worker(rank, world, store, plan, ds, q):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        from megatron.core import parallel_state

        parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
        dp_rank, dp_size = seqfeed.data_parallel_from_megatron()
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        # Every tensor-parallel peer reads the step's rows itself (no
        # broadcast from TP rank 0); peers compare what they read.
        loader = seqfeed.Loader(plan, dataset=ds, labels=True, dp_rank=dp_rank, dp_size=dp_size,
                                micro_batch=2)
        digests, positions = [], []
        for b in loader:
            m = b.as_dict(format="megatron")
            h = hashlib.sha256(b"".join(m[k].numpy().tobytes() for k in sorted(m))).hexdigest()
            mine = torch.tensor([int(h[:15], 16)])
            peers = [torch.zeros_like(mine) for _ in range(2)]
            dist.all_gather(peers, mine, group=parallel_state.get_tensor_model_parallel_group())
            digests.append([int(p) for p in peers])
            positions.append(list(b.positions))
        q.put((rank, {"dp": (dp_rank, dp_size), "tp": tp_rank, "digests": digests, "positions": positions}))
    except BaseException as e:
        q.put((rank, {"crash": repr(e)}))
    finally:
        dist.destroy_process_group()


def test_megatron_tensor_parallel_peers_each_read_the_same_rows(corpus):
    """4 gloo processes, megatron-core parallel_state with TP 2: the
    data-parallel layout comes from data_parallel_from_megatron(), and both
    TP peers of a data-parallel rank read identical batches (all-gathered
    digests over Megatron's TP group), the plan's rows for that rank."""
    tmp, _, ds, plan = corpus
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_tp_worker, args=(r, 4, str(tmp / "tpstore"), str(plan), str(ds), q))
             for r in range(4)]
    for p in procs:
        p.start()
    got = {}
    try:
        while len(got) < 4:
            rank, g = q.get(timeout=300)
            assert "crash" not in g, (rank, g)
            got[rank] = g
    finally:
        for p in procs:
            p.join(timeout=60 if len(got) == 4 else 0)
            if p.is_alive():
                p.kill()
                p.join()
    for rank, g in got.items():
        assert g["dp"] == (rank // 2, 2) and g["tp"] == rank % 2, (rank, g["dp"], g["tp"])
        assert len(g["digests"]) == STEPS * 2
        assert all(a == b for a, b in g["digests"]), f"rank {rank}: TP peers read different batches"
        want = [[r["position"] for r in seqfeed.plan_show(plan, s, 2, rank // 2, dataset=ds)][2 * m: 2 * m + 2]
                for s in range(STEPS) for m in range(2)]
        assert g["positions"] == want
    assert got[0]["digests"] != got[2]["digests"]


def cyclic_iter(iterable):
    """Megatron-LM's ``cyclic_iter`` (megatron/training/training.py; the
    training package is not part of the megatron-core wheel): endless
    passes over an iterable."""
    while True:
        for x in iterable:
            yield x


def test_megatron_cyclic_validation_iterator(corpus):
    """A cyclic iterator over a validation loader (as Megatron builds its
    valid_data_iterator) yields the whole validation stream again and again,
    in the same order: each pass is the plan's validation rows."""
    tmp, _, ds, _ = corpus
    plan = tmp / "plan_val.toml"
    plan.write_text(f"seed = 7\nglobal_batch = {GB}\n[run]\nsteps = 4\n[[sources]]\nname = \"mega\"\n"
                    f"weight = 1.0\n[split]\nholdout_sequences = {2 * GB}\n")
    val = seqfeed.Loader(plan, dataset=ds, split="validation", labels=True, eod_token=EOD,
                         dp_rank=1, dp_size=2, micro_batch=2)
    assert seqfeed.plan_stats(plan, dataset=ds)["validation_steps"] == 2
    per_pass = 2 * val.accumulation
    it = cyclic_iter(val)
    seen = [next(it) for _ in range(3 * per_pass + 1)]
    one = [[r["position"] for r in seqfeed.plan_show(plan, s, 2, 1, dataset=ds, split="validation")][2 * m: 2 * m + 2]
           for s in range(2) for m in range(2)]
    assert [list(b.positions) for b in seen] == (one * 4)[: 3 * per_pass + 1]
    first, again = seen[0].as_dict(format="megatron"), seen[per_pass].as_dict(format="megatron")
    for k in first:
        assert torch.equal(first[k], again[k])
