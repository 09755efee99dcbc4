"""Issue 17 item 4: document boundaries of packed rows (cu_seqlens,
max_seqlen, num_docs, document_ids), their place in the HF and Megatron
formats, and context-parallel slicing against megatron-core's own
``get_batch_on_this_cp_rank``. Data packed with the CLI (conftest)."""

import numpy as np
import pytest
import torch

import seqfeed
from conftest import make_dataset, run, write_plan

EOD = 0  # the conftest datasets end each document with id 0


def numpy_bounds(tokens, row_tokens, eod):
    """Independent reference: the EOD ends its document, the next token
    starts one; each row on its own; offsets over the flattened rows, padded
    to rows * row_tokens + 1 with the last offset."""
    rows = np.asarray(tokens)[:, :row_tokens].astype(np.int64)
    r, n = rows.shape
    doc_ids = np.zeros((r, n), dtype=np.int64)
    doc_ids[:, 1:] = np.cumsum(rows[:, :-1] == eod, axis=1)
    cu = [0]
    lengths = []
    for k in range(r):
        counts = np.bincount(doc_ids[k])
        lengths.extend(counts.tolist())
        cu.extend((k * n + np.cumsum(counts)).tolist())
    valid = len(cu) - 1
    cu += [r * n] * (r * n + 1 - len(cu))
    return np.array(cu, dtype=np.int32), valid, max(lengths), doc_ids.astype(np.int32)


@pytest.mark.parametrize("labels", [True, False])
def test_boundaries_equal_an_independent_numpy_computation(dataset, labels):
    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, labels=labels, micro_batch=2, dp_rank=0, dp_size=1)
    assert loader.eod_token == EOD and loader.document_boundaries
    seq_len = loader.plan_info["seq_len"]
    row_tokens = seq_len - 1 if labels else seq_len
    seen = {"batches": 0, "multi": 0, "eod_last_input": 0, "eod_first": 0}
    for b in loader:
        toks = b.tokens.numpy()
        cu, valid, longest, doc_ids = numpy_bounds(toks, row_tokens, EOD)
        assert b.cu_seqlens.dtype == torch.int32 and b.document_ids.dtype == torch.int32
        assert tuple(b.cu_seqlens.shape) == (2 * row_tokens + 1,)
        assert tuple(b.document_ids.shape) == (2, row_tokens)
        np.testing.assert_array_equal(b.cu_seqlens.numpy(), cu)
        np.testing.assert_array_equal(b.document_ids.numpy(), doc_ids)
        assert (b.num_docs, b.max_seqlen) == (valid, longest)
        seen["batches"] += 1
        seen["multi"] += int(valid > 2)
        seen["eod_last_input"] += int((toks[:, row_tokens - 1] == EOD).any())
        seen["eod_first"] += int((toks[:, 0] == EOD).any())
    assert seen["batches"] == 12 * 4
    assert seen["multi"] > 0, seen
    # Position ids restarting at each document are Megatron's
    # reset_position_ids over the same inputs.
    meg = seqfeed.Loader(plan, dataset=ds, labels=labels, micro_batch=2, reset_position_ids=True,
                         dp_rank=0, dp_size=1)
    for b in meg:
        assert torch.equal(b.as_dict("hf", packed=True)["position_ids"], b.position_ids)


def test_boundaries_of_u32_data_and_edge_rows(tmp_path):
    """32-bit ids, an EOD id above 65535, and rows that start with an EOD,
    end with one, hold consecutive EODs, no EOD, or only EODs."""
    eod = 70_000
    seq_len = 9
    rows = [
        [eod, 1, 2, 3, 4, 5, 6, 7, 8],        # EOD first
        [1, 2, 3, 4, 5, 6, 7, eod, 9],        # EOD as the last input (L = 8)
        [1, eod, eod, eod, 5, 6, 7, 8, 9],    # consecutive EODs
        [1, 2, 3, 4, 5, 6, 7, 8, 9],          # no EOD
        [eod] * 9,                            # only EODs
        [1, 2, 3, 4, 5, 6, 7, 8, eod],        # EOD only as the label
        [3, 3, eod, 3, 3, eod, 3, 3, 3],
        [eod, eod, 1, 1, 1, 1, 1, 1, 1],
    ]
    ids = np.array(rows, dtype=np.uint32).reshape(-1)
    src = tmp_path / "ids.npy"
    np.save(src, ids)
    ds = tmp_path / "data"
    run("pack", "--out", ds / "web", "--seq-len", seq_len, "--dtype", "u32", "--eos", eod, src)
    plan = write_plan(tmp_path / "plan.toml", [("web", 1.0)], 8, 1)
    loader = seqfeed.Loader(plan, dataset=ds, labels=True, micro_batch=4, dp_rank=0, dp_size=1)
    assert loader.eod_token == eod
    got = 0
    seen = set()
    for b in loader:
        seen.update(tuple(r) for r in b.tokens.tolist())
        cu, valid, longest, doc_ids = numpy_bounds(b.tokens.numpy().astype(np.int64), seq_len - 1, eod)
        np.testing.assert_array_equal(b.cu_seqlens.numpy(), cu)
        np.testing.assert_array_equal(b.document_ids.numpy(), doc_ids)
        assert (b.num_docs, b.max_seqlen) == (valid, longest)
        got += 4
    assert got == 8
    assert seen == {tuple(r) for r in rows}, "every edge row was checked"


def test_boundaries_follow_the_eod_setting(dataset):
    ds, plan = dataset
    off = next(seqfeed.Loader(plan, dataset=ds, document_boundaries=False, dp_rank=0, dp_size=1))
    assert off.cu_seqlens is None and off.document_ids is None and off.max_seqlen is None
    with pytest.raises(seqfeed.SeqfeedError, match="needs document boundaries"):
        off.as_dict("hf", packed=True)
    with pytest.raises(seqfeed.SeqfeedError, match="document_boundaries=True needs the EOD id"):
        seqfeed.Loader(plan, dataset=ds, eod_token=False, document_boundaries=True, dp_rank=0, dp_size=1)
    none = next(seqfeed.Loader(plan, dataset=ds, eod_token=False, dp_rank=0, dp_size=1))
    assert none.cu_seqlens is None


def test_hf_packed_kwargs_are_transformers_flash_attention_kwargs(dataset):
    from transformers.modeling_flash_attention_utils import FlashAttentionKwargs

    ds, plan = dataset
    b = next(seqfeed.Loader(plan, dataset=ds, labels=True, micro_batch=4, dp_rank=0, dp_size=1))
    d = b.as_dict("hf", packed=True)
    fa = set(FlashAttentionKwargs.__annotations__)
    extra = set(d) - {"input_ids", "labels", "position_ids"}
    assert extra == {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
    assert extra <= fa, extra - fa
    assert d["cu_seq_lens_q"] is b.cu_seqlens and isinstance(d["max_length_q"], int)
    assert d["max_length_q"] == b.max_seqlen
    # The valid offsets are what transformers derives from packed position ids.
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    (cu, _), (mx, _) = prepare_fa_kwargs_from_position_ids(d["position_ids"])
    assert torch.equal(cu, b.cu_seqlens[: b.num_docs + 1])
    assert int(mx) == b.max_seqlen


def split_documents(row, eod):
    """A row's documents by the rule, in plain Python: each EOD closes one."""
    docs, cur = [], []
    for i, t in enumerate(row):
        cur.append(t)
        if t == eod and i + 1 < len(row):
            docs.append(cur)
            cur = []
    return docs + [cur]


def test_hf_packed_dict_matches_transformers_flattening_collator(dataset):
    """transformers' own producer of packed batches
    (DataCollatorWithFlattening with return_flash_attn_kwargs), fed each
    row's documents as separate examples, gives the same offsets, dtypes,
    maximum length and per-document position ids; a real model takes the
    packed dict as it is."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import DataCollatorWithFlattening

    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, labels=True, micro_batch=4, reset_position_ids=True,
                            dp_rank=0, dp_size=1)
    collate = DataCollatorWithFlattening(return_flash_attn_kwargs=True)
    cfg = transformers.GPT2Config(vocab_size=50001, n_positions=128, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    for i, b in enumerate(loader):
        d = b.as_dict("hf", packed=True)
        feats = [{"input_ids": doc} for row in b.input_ids.tolist() for doc in split_documents(row, EOD)]
        hf = collate(feats, return_tensors="pt")
        assert hf["cu_seq_lens_q"].dtype == d["cu_seq_lens_q"].dtype == torch.int32
        assert torch.equal(hf["cu_seq_lens_q"], d["cu_seq_lens_q"][: b.num_docs + 1])
        # The rest is padding: the last offset repeated.
        assert bool((d["cu_seq_lens_q"][b.num_docs :] == hf["cu_seq_lens_q"][-1]).all())
        assert hf["max_length_q"] == d["max_length_q"] and isinstance(d["max_length_q"], int)
        assert torch.equal(hf["position_ids"], d["position_ids"].reshape(1, -1))
        assert torch.equal(hf["input_ids"], d["input_ids"].reshape(1, -1))
        if i < 3:
            # GPT2 here runs sdpa, which ignores the flash-attention kwargs
            # (only flash-attention implementations read them): the loss is
            # that of the same inputs and positions without them.
            with torch.no_grad():
                packed = model(**d).loss
                plain = model(**b.as_dict("hf")).loss
            assert torch.isfinite(packed) and torch.equal(packed, plain)


def test_dataset_yields_packed_dicts_through_a_dataloader(dataset):
    from torch.utils.data import DataLoader

    ds, plan = dataset
    data = seqfeed.SeqfeedDataset(plan, format="hf", packed=True, dataset=ds, labels=True,
                                  micro_batch=4, dp_rank=0, dp_size=1)
    ref = seqfeed.Loader(plan, dataset=ds, labels=True, micro_batch=4, dp_rank=0, dp_size=1)
    n = 0
    for d, b in zip(DataLoader(data, batch_size=None, num_workers=0), ref):
        assert torch.equal(d["cu_seq_lens_q"], b.cu_seqlens) and d["max_length_q"] == b.max_seqlen
        n += 1
    assert n == 24


def test_megatron_packed_format_carries_packed_seq_params(dataset):
    from megatron.core.packed_seq_params import PackedSeqParams

    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, labels=True, micro_batch=4, eod_mask_loss=True,
                            dp_rank=0, dp_size=1)
    b = next(loader)
    plain = b.as_dict("megatron")
    d = b.as_dict("megatron", packed=True)
    p = d["packed_seq_params"]
    assert isinstance(p, PackedSeqParams) and p.qkv_format == "thd"
    assert torch.equal(p.cu_seqlens_q, b.cu_seqlens[: b.num_docs + 1])
    assert p.cu_seqlens_kv is p.cu_seqlens_q
    assert p.max_seqlen_q == p.max_seqlen_kv == b.max_seqlen
    n = 4 * (loader.plan_info["seq_len"] - 1)
    for k in ("tokens", "labels", "loss_mask"):
        assert d[k].shape == (1, n)
        assert torch.equal(d[k], plain[k].reshape(1, n))
    # Positions restart at every cu_seqlens offset.
    pos = d["position_ids"][0]
    starts = p.cu_seqlens_q[:-1].long()
    assert torch.equal(pos[starts], torch.zeros_like(starts))
    assert int((pos == 0).sum()) == b.num_docs


class _Group:
    """What megatron-core reads of a process group: size() and rank()."""

    def __init__(self, size, rank):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def rank(self):
        return self._rank


@pytest.fixture
def dist_one(tmp_path):
    """torch.distributed initialized (gloo, one process): megatron-core's
    get_pg_size/get_pg_rank read the group only when it is."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("cp_size", [2, 4])
def test_context_parallel_slice_equals_megatron_core(dataset, dist_one, cp_size):
    from megatron.core.utils import get_batch_on_this_cp_rank

    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, labels=True, micro_batch=2, eod_mask_loss=True,
                            reset_position_ids=True, dp_rank=0, dp_size=1)
    assert (loader.plan_info["seq_len"] - 1) % (2 * cp_size) == 0
    checked = 0
    for b in loader:
        d = b.as_dict("megatron")
        for r in range(cp_size):
            ours = seqfeed.context_parallel_slice(d, r, cp_size)
            theirs = get_batch_on_this_cp_rank(dict(d), cp_group=_Group(cp_size, r))
            assert set(ours) == set(theirs) == {"tokens", "labels", "loss_mask", "position_ids"}
            for k in theirs:
                assert ours[k].dtype == theirs[k].dtype
                assert torch.equal(ours[k], theirs[k]), (b.step, r, k)
            doc = seqfeed.context_parallel_slice({"document_ids": b.document_ids}, r, cp_size)
            theirs_doc = get_batch_on_this_cp_rank({"document_ids": b.document_ids}, cp_group=_Group(cp_size, r))
            assert torch.equal(doc["document_ids"], theirs_doc["document_ids"])
            checked += 1
    assert checked == 12 * 4 * cp_size
    # Rank r holds chunks r and 2cp-1-r: together the ranks hold every
    # position once.
    tok = b.input_ids
    parts = [seqfeed.context_parallel_slice(tok, r, cp_size) for r in range(cp_size)]
    assert sum(p.shape[1] for p in parts) == tok.shape[1]


def test_context_parallel_slice_refuses_what_it_cannot_slice(dataset):
    ds, plan = dataset
    b = next(seqfeed.Loader(plan, dataset=ds, labels=True, micro_batch=2, dp_rank=0, dp_size=1))
    with pytest.raises(ValueError, match="cu_seqlens"):
        seqfeed.context_parallel_slice({"cu_seqlens": b.cu_seqlens}, 0, 2)
    with pytest.raises(ValueError, match="does not split"):
        seqfeed.context_parallel_slice({"tokens": b.tokens}, 0, 2)  # 65 positions
    with pytest.raises(ValueError, match="out of range"):
        seqfeed.context_parallel_slice({"tokens": b.input_ids}, 2, 2)
    same = seqfeed.context_parallel_slice({"tokens": b.input_ids, "max_seqlen": 5}, 0, 1)
    assert same["tokens"] is b.input_ids


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="SKIP: no CUDA device here; document boundaries on a GPU loader run in a GPU session",
)
def test_cuda_boundaries_equal_the_cpu_ones(dataset):
    ds, plan = dataset
    cpu = [(b.cu_seqlens.clone(), b.document_ids.clone(), b.max_seqlen)
           for b in seqfeed.Loader(plan, dataset=ds, labels=True, micro_batch=2, dp_rank=0, dp_size=1)]
    gpu = seqfeed.Loader(plan, dataset=ds, labels=True, micro_batch=2, device="cuda:0", dp_rank=0, dp_size=1)
    n = 0
    for b, (cu, doc, mx) in zip(gpu, cpu):
        assert b.cu_seqlens.device.type == "cuda" and b.document_ids.device.type == "cuda"
        assert torch.equal(b.cu_seqlens.cpu(), cu) and torch.equal(b.document_ids.cpu(), doc)
        assert b.max_seqlen == mx
        n += 1
    assert n == len(cpu)
