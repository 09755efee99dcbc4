"""Issue 17 item 2, Lightning (PyPI ``lightning``): ``seqfeed.SeqfeedDataModule``
under ``Trainer.fit`` on CPU. Epochs continue the stream (max_epochs > 1
does not replay it), the micro-batches trained on are the plan's, and a fit
resumed from a Lightning checkpoint trains on exactly the micro-batches the
uninterrupted fit trained on after it."""

import os

import pytest
import torch

import seqfeed
from test_contracts import plan_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")
L = pytest.importorskip("lightning", reason="lightning is not installed (pip install lightning)")
transformers = pytest.importorskip("transformers")


class TinyGPT(L.LightningModule):
    """A tiny Hugging Face GPT-2 (from a config) trained on format="hf" dicts;
    records every micro-batch training_step receives."""

    def __init__(self):
        super().__init__()
        cfg = transformers.GPT2Config(vocab_size=50001, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        torch.manual_seed(0)
        self.model = transformers.GPT2LMHeadModel(cfg)
        self.seen, self.losses = [], []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].tolist())
        loss = self.model(**batch).loss
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def fit(dm, model, epochs, tmp, ckpt_path=None, **kw):
    trainer = L.Trainer(
        max_epochs=epochs, limit_train_batches=4, accumulate_grad_batches=dm.accumulation,
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp, num_sanity_val_steps=0, **kw,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def stream(plan, ds, micro_batches, dp_size=2, dp_rank=1, mb=2):
    """The rank's first micro-batches (input_ids) from the plan and the files."""
    out = []
    step = 0
    while len(out) < micro_batches:
        rows = torch.tensor(plan_rows(plan, ds, step, dp_size, dp_rank))
        for m in range(len(rows) // mb):
            out.append(rows[m * mb:(m + 1) * mb, :-1].tolist())
        step += 1
    return out[:micro_batches]


def test_lightning_epochs_continue_and_a_resumed_fit_trains_on_the_same_batches(dataset, tmp_path):
    ds, plan = dataset
    kw = dict(format="hf", dataset=ds, labels=True, dp_rank=1, dp_size=2, micro_batch=2)
    # Uninterrupted: 3 epochs of 4 micro-batches (2 steps of 2) each.
    dm = seqfeed.SeqfeedDataModule(plan, **kw)
    assert dm.accumulation == 2
    ref = TinyGPT()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1,
                                               every_n_epochs=1, filename="{epoch}")
    fit(dm, ref, 3, tmp_path, callbacks=[ckpt])
    want = stream(plan, ds, 12)
    assert len(ref.seen) == 12
    assert ref.seen == want, "epochs must continue the stream, not replay or skip it"
    assert all(torch.isfinite(torch.tensor(ref.losses)))
    assert dm.state_dict()["step"] == 6 and dm.state_dict()["micro"] == 0
    # Resume from the end of epoch 1 (8 micro-batches trained) in a new
    # datamodule and model: epoch 3 trains on the same micro-batches.
    saved = torch.load(tmp_path / "ckpt" / "epoch=1.ckpt", weights_only=False)
    assert saved["SeqfeedDataModule"]["step"] == 4 and saved["SeqfeedDataModule"]["micro"] == 0
    resumed = TinyGPT()
    fit(seqfeed.SeqfeedDataModule(plan, **kw), resumed, 3, tmp_path / "r",
        ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")
    assert resumed.seen == want[8:]
    assert resumed.losses == pytest.approx(ref.losses[8:], rel=1e-5)
