"""Issue 17 D2 against the real library: a Hugging Face GPT2LMHeadModel
(tiny, built from a GPT2Config: nothing is downloaded) takes
``batch.as_dict(format="hf")`` as it is, and its own loss equals the
Megatron-style loss computed by hand from ``format="megatron"`` on the same
rows."""

import os

import pytest
import torch
import torch.nn.functional as F

import seqfeed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


def tiny_gpt2(vocab):
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_issue17_d2_hf_model_loss_equals_the_megatron_loss(dataset):
    ds, plan = dataset
    model = tiny_gpt2(50001)  # the fixture's ids are 0..49999
    loader = seqfeed.Loader(plan, dataset=ds, labels=True, eod_token=0, eod_mask_loss=True,
                            dp_rank=0, dp_size=2, micro_batch=2)
    n = 0
    with torch.no_grad():
        for b in loader:
            hf = b.as_dict(format="hf")
            m = b.as_dict(format="megatron")
            loss_hf = model(**hf).loss
            logits = model(input_ids=m["tokens"], position_ids=m["position_ids"]).logits
            per_tok = F.cross_entropy(logits.flatten(0, 1), m["labels"].flatten(), reduction="none")
            mask = m["loss_mask"].clone()
            mask[:, -1] = 0  # the model's shift leaves each row's last target out
            manual = (per_tok * mask.flatten()).sum() / mask.sum()
            assert torch.allclose(loss_hf, manual, rtol=1e-5, atol=1e-6), (b.step, b.micro, loss_hf, manual)
            # The old dict's already-shifted labels, shifted again by the
            # model, score the token two ahead: a different loss.
            wrong = model(input_ids=hf["input_ids"], labels=b.labels).loss
            assert torch.equal(b.labels[:, 1:], b.tokens[:, 2:])
            two_ahead = F.cross_entropy(logits[:, :-1].flatten(0, 1), b.labels[:, 1:].flatten())
            assert torch.allclose(wrong, two_ahead, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(wrong, manual, rtol=1e-5, atol=0)
            n += 1
    assert n == 24


def test_issue17_d2_hf_model_trains_on_seqfeed_dataset(dataset):
    """A real loop: DataLoader over SeqfeedDataset(format="hf"), model(**batch)."""
    from torch.utils.data import DataLoader

    ds, plan = dataset
    model = tiny_gpt2(50001).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = seqfeed.SeqfeedDataset(plan, format="hf", dataset=ds, labels=True, dp_rank=0, dp_size=1,
                                  micro_batch=4)
    acc = 2  # global batch 8 / micro_batch 4
    losses = []
    for i, batch in enumerate(DataLoader(data, batch_size=None, num_workers=0)):
        loss = model(**batch).loss
        (loss / acc).backward()
        losses.append(loss.item())
        if i % acc == acc - 1:
            opt.step()
            opt.zero_grad()
    assert len(losses) == 24 and all(torch.isfinite(torch.tensor(losses)))
