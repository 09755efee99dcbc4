"""``SeqfeedDataset``: the loader as a ``torch.utils.data.IterableDataset``.

Use it with ``DataLoader(ds, batch_size=None, num_workers=0)`` or
torchdata's ``StatefulDataLoader`` (its ``state_dict()`` then includes
seqfeed's position). ``num_workers > 0`` is refused: seqfeed already reads
ahead in its own threads, and worker processes would each read the whole
rank's stream. The loader starts inside ``__iter__``, so the dataset object
itself can be created before a fork and pickled freely.
"""

import torch.utils.data

from ._loader import Loader
from ._native import SeqfeedError

_FORMATS = ("hf", "megatron")


class SeqfeedDataset(torch.utils.data.IterableDataset):
    """Yields each micro-batch as a dict in ``format`` (see
    ``Batch.as_dict``):

    * ``"hf"``: ``input_ids``, unshifted ``labels`` (-100 where no loss
      applies) and, with an ``eod_token``, ``position_ids``: what
      ``model(**batch)`` takes for a Hugging Face ``*ForCausalLM``.
    * ``"megatron"``: ``tokens`` (the L inputs), shifted ``labels``,
      ``loss_mask``, ``position_ids`` (needs ``labels=True``).

    ``packed=True`` yields ``as_dict(format, packed=True)``: attention
    within documents (transformers' flash-attention ``cu_seq_lens_q/k`` and
    ``max_length_q/k``; Megatron's ``packed_seq_params``); it needs document
    boundaries (an ``eod_token``).

    The other arguments are ``seqfeed.Loader``'s.

    Every ``iter()`` continues from the current position (it does not start
    the run over): a framework that makes a new iterator each epoch
    (Lightning, several ``for`` loops over one ``DataLoader``) reads on
    where the last one stopped. A training stream that has ended yields
    nothing; a validation stream (``split="validation"``) that has ended
    starts over, so each evaluation reads all of it.

    Example::

        ds = seqfeed.SeqfeedDataset("plan.toml", format="hf", dataset="data",
                                    labels=True, dp_rank=r, dp_size=n)
        for batch in DataLoader(ds, batch_size=None, num_workers=0):
            model(**batch).loss.backward()
    """

    def __init__(self, plan, *, format=None, packed=False, **loader_args):
        super().__init__()
        if format not in _FORMATS:
            raise ValueError(
                f"SeqfeedDataset format {format!r}: give format='hf' (input_ids and unshifted labels, "
                "for model(**batch) with Hugging Face models) or format='megatron' (tokens, shifted "
                "labels, loss_mask, position_ids)"
            )
        self._plan = plan
        self._format = format
        self._packed = bool(packed)
        self._args = loader_args
        self._loader = None
        self._state = None

    def _make(self):
        loader = Loader(self._plan, **self._args)
        if self._state is not None:
            loader.load_state_dict(self._state)
        return loader

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is not None:
            raise SeqfeedError(
                f"SeqfeedDataset runs in DataLoader worker {info.id} of {info.num_workers}: use "
                "num_workers=0. seqfeed reads ahead in its own threads, and each worker would read "
                "the whole rank's stream again"
            )
        if self._loader is None:
            self._loader = self._make()
        for batch in self._loader:
            yield batch.as_dict(self._format, packed=self._packed)

    def state_dict(self):
        """The loader's position (before iteration: the loaded or initial one)."""
        if self._loader is not None:
            return self._loader.state_dict()
        if self._state is not None:
            return dict(self._state)
        return self._make().state_dict()

    def load_state_dict(self, state):
        """Continues the next iteration from ``state``."""
        self._make().load_state_dict(state)  # validates against the plan now
        self._state = dict(state)
        if self._loader is not None:
            self._loader.close()
            self._loader = None

    def __getstate__(self):
        # The running loader does not travel (threads, sockets); the
        # configuration and position do.
        state = self.__dict__.copy()
        if self._loader is not None:
            state["_state"] = self._loader.state_dict()
        state["_loader"] = None
        return state
