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


def _stream(plan, ds, micro_batches, mb=4):
    """The first micro-batches (input_ids) of a dp_size 1 run, from the plan and the files."""
    from test_contracts import plan_rows

    out, step = [], 0
    while len(out) < micro_batches:
        rows = torch.tensor(plan_rows(plan, ds, step, 1, 0))
        out += [rows[m * mb:(m + 1) * mb, :-1].tolist() for m in range(len(rows) // mb)]
        step += 1
    return out[:micro_batches]


def _trainer(plan, ds, out, seen, max_steps=6):
    """seqfeed.SeqfeedTrainer over SeqfeedDataset(format="hf"): one item per
    micro-batch (per_device_train_batch_size=1 + hf_collate), accelerate's
    dispatch_batches off (every rank reads its own rows), gradient
    accumulation = the loader's."""
    model = tiny_gpt2(50001).train()
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].tolist()), with_kwargs=True)
    data = seqfeed.SeqfeedDataset(plan, format="hf", dataset=ds, labels=True, dp_rank=0, dp_size=1,
                                  micro_batch=4)
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=1,
        gradient_accumulation_steps=2, learning_rate=3e-3, lr_scheduler_type="constant",
        save_steps=3, logging_steps=1, report_to=[], use_cpu=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, accelerator_config={"dispatch_batches": False, "split_batches": False},
        disable_tqdm=True, seed=0,
    )
    return seqfeed.SeqfeedTrainer(model=model, args=args, train_dataset=data,
                                  data_collator=seqfeed.hf_collate)


def test_issue17_hf_trainer_trains_on_the_loaders_batches_and_resumes(dataset, tmp_path):
    """transformers.Trainer (via seqfeed.SeqfeedTrainer) trains a tiny GPT-2
    on exactly the loader's micro-batches, in order; resumed from its
    step-3 checkpoint in a fresh Trainer, it trains on the same micro-batches
    as the uninterrupted run (positioned, not re-read) with the same losses."""
    ds, plan = dataset
    seen = []
    ref = _trainer(plan, ds, tmp_path / "run", seen)
    ref.train()
    want = _stream(plan, ds, 12)  # 6 optimizer steps x 2 micro-batches
    assert seen == want
    losses = [h["loss"] for h in ref.state.log_history if "loss" in h]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
    resumed_seen = []
    resumed = _trainer(plan, ds, tmp_path / "run", resumed_seen)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    assert resumed_seen == want[6:], "the resumed Trainer must go on with micro-batch 6, read once"
    # Positioned, not skipped by reading: the resumed loader read the 6
    # micro-batches trained on plus the one accelerate's DataLoaderShard
    # fetches ahead (so the dataset's own position is one past what was
    # trained on: the Trainer's step count, not the dataset, says where to
    # resume); skipping by reading would have read 12 or more.
    stats = resumed.train_dataset._loader.stats()
    assert stats["micro_batches"] == 7, stats
    pos = resumed.train_dataset.state_dict()
    assert (pos["step"], pos["micro"]) == (6, 1), pos  # 6 steps trained (12 micro-batches) + 1 ahead
    again = [h["loss"] for h in resumed.state.log_history if "loss" in h and h["step"] > 3]
    assert again == pytest.approx(losses[3:], rel=1e-4)
