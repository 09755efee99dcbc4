"""Hugging Face ``Trainer`` glue: ``hf_collate`` and ``SeqfeedTrainer``."""

import transformers

from .data import SeqfeedDataset


def hf_collate(features):
    """The ``data_collator`` for a ``SeqfeedDataset`` under
    ``per_device_train_batch_size=1``: each item already is a whole
    micro-batch (a dict of ``[micro_batch, L]`` tensors), so the list of one
    is unwrapped instead of stacked."""
    if len(features) != 1:
        raise ValueError(
            f"hf_collate got {len(features)} items: a SeqfeedDataset item is a whole micro-batch; "
            "set per_device_train_batch_size=1 (micro_batch= sets the rows)"
        )
    return features[0]


class SeqfeedTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that resumes a ``SeqfeedDataset`` by
    position.

    On ``train(resume_from_checkpoint=...)`` the Trainer skips the
    micro-batches already trained on; the stock Trainer reads and drops
    them (accelerate's ``skip_first_batches``), which for a long run reads
    the whole trained prefix again. Here the dataset is moved to that
    position instead (the count the Trainer passes is in micro-batches, one
    per ``per_device_train_batch_size=1`` item), so nothing is read twice.
    Any other dataset is skipped the stock way.
    """

    def get_resumed_dataloader(self, dataloader, num_batches):
        ds = self.train_dataset
        if not isinstance(ds, SeqfeedDataset):
            return super().get_resumed_dataloader(dataloader, num_batches)
        st = ds.state_dict()
        acc = st["global_batch"] // (st["dp_size"] * st["micro_batch"])
        i = st["step"] * acc + st["micro"] + num_batches
        ds.load_state_dict(dict(st, step=i // acc, micro=i % acc))
        return dataloader
