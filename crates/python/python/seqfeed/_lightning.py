"""``SeqfeedDataModule``: seqfeed as a Lightning ``LightningDataModule``."""

from torch.utils.data import DataLoader

from .data import SeqfeedDataset

try:
    from lightning.pytorch import LightningDataModule
except ImportError:  # the older package name
    from pytorch_lightning import LightningDataModule


class SeqfeedDataModule(LightningDataModule):
    """Training batches for ``Trainer.fit``.

    ``train_dataloader()`` is ``DataLoader(SeqfeedDataset(...), batch_size=None,
    num_workers=0)``. Each epoch continues the stream where the last one
    stopped (an epoch is ``limit_train_batches`` micro-batches; the run's end
    is the plan's). For evaluation, subclass and add a ``val_dataloader``
    over ``SeqfeedDataset(..., split="validation")``, which reads the whole
    validation stream at every evaluation.

    Checkpoints: ``state_dict()`` (which Lightning stores in its checkpoint)
    is the position after the last micro-batch handed to ``training_step``,
    counted in ``on_before_batch_transfer``, not the dataset's own position:
    a fetcher that reads ahead (Lightning prefetches for loaders with a
    length; 2.6 does not for this one) leaves the dataset past what was
    trained on. ``load_state_dict()`` resumes there: ``Trainer.fit(..., ckpt_path=...)``
    continues with exactly the next micro-batch.

    Example::

        dm = seqfeed.SeqfeedDataModule("plan.toml", format="hf", dataset="data",
                                       labels=True, dp_rank=rank, dp_size=world, micro_batch=4)
        trainer = lightning.Trainer(max_epochs=3, limit_train_batches=1000,
                                    accumulate_grad_batches=dm.accumulation)
        trainer.fit(model, datamodule=dm)

    Keyword arguments are ``seqfeed.Loader``'s (``format`` as for
    ``SeqfeedDataset``).
    """

    def __init__(self, plan, *, format="hf", **loader_args):
        super().__init__()
        self._plan, self._format, self._args = plan, format, loader_args
        self._train = None
        self._base = None  # the position train_dataloader() started from
        self._consumed = 0  # micro-batches handed to training_step since then
        self._loaded = None
        self._acc = None

    @property
    def accumulation(self):
        """Micro-batches per plan step (``accumulate_grad_batches``)."""
        self._dataset()
        return self._acc

    def _dataset(self):
        if self._train is None:
            ds = SeqfeedDataset(self._plan, format=self._format, **self._args)
            if self._loaded is not None:
                ds.load_state_dict(self._loaded)
            st = ds.state_dict()
            self._acc = st["global_batch"] // (st["dp_size"] * st["micro_batch"])
            self._train, self._base, self._consumed = ds, st, 0
        return self._train

    def train_dataloader(self):
        return DataLoader(self._dataset(), batch_size=None, num_workers=0)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        # Called for the batch about to be trained on (not the one fetched ahead).
        if self.trainer is not None and self.trainer.training:
            self._consumed += 1
        return batch

    def state_dict(self):
        if self._train is None:
            return dict(self._loaded) if self._loaded is not None else {}
        base = self._base
        acc = self._acc
        i = base["step"] * acc + base["micro"] + self._consumed
        return dict(base, step=i // acc, micro=i % acc)

    def load_state_dict(self, state_dict):
        if not state_dict:
            return
        self._loaded = dict(state_dict)
        if self._train is not None:
            self._train.load_state_dict(self._loaded)
            self._base, self._consumed = self._train.state_dict(), 0
