"""``TorchtitanDataLoader``: seqfeed in torchtitan's dataloader contract.

torchtitan's trainer builds its dataloader with ``dp_rank`` and
``dp_world_size`` read off its ``DeviceMesh`` (the ``"batch"`` dimension:
``dp_replicate x dp_shard``), iterates ``(input_dict, labels)`` pairs
(``input_dict["input"]`` the model's tokens, ``labels`` the shifted targets
with -100 where no loss applies), and checkpoints it with
``torch.distributed.checkpoint`` as a ``Stateful``. This class is that
shape around a ``seqfeed.Loader``; it subclasses torchtitan's
``BaseDataLoader`` when torchtitan is installed (a DCP ``Stateful`` either
way).
"""

import torch

from ._loader import Loader

try:  # torchtitan's own base class when it is there, DCP's protocol otherwise
    from torchtitan.components.dataloader import BaseDataLoader as _Base
except ImportError:  # pragma: no cover - exercised where torchtitan is absent
    from torch.distributed.checkpoint.stateful import Stateful as _Base

_RANK_KEYS = ("dp_rank",)


class TorchtitanDataLoader(_Base):
    """Yields ``({"input": input_ids}, labels)`` per micro-batch, as
    torchtitan's ``ParallelAwareDataloader`` does.

    * ``input`` is ``batch.input_ids`` (the L inputs of an L+1 row);
      ``labels`` is ``batch.labels`` (the next tokens, int64), with -100
      after an EOD when the loader has ``eod_mask_loss`` (torchtitan's
      ``cross_entropy_loss`` ignores -100). With ``positions=True`` and an
      EOD id, ``input_dict["positions"]`` carries ``batch.position_ids``
      (the keyword torchtitan's Llama takes).
    * ``state_dict()`` is the loader's position *without* the
      data-parallel rank: every rank of a step-synchronous job holds the
      same position, so DCP stores it once and any rank of any
      data-parallel size loads it (a state saved at a step boundary resumes
      with another ``dp_world_size``; torchtitan's own dataloader refuses
      that).

    Example (in a ``build_dataloader_fn`` of a torchtitan ``TrainSpec``)::

        def build_seqfeed_dataloader(dp_world_size, dp_rank, tokenizer, job_config):
            return seqfeed.TorchtitanDataLoader(
                "plan.toml", dataset="data", dp_rank=dp_rank, dp_world_size=dp_world_size,
                micro_batch=job_config.training.local_batch_size)

    The other keyword arguments are ``seqfeed.Loader``'s (``labels=True``
    is the default here: torchtitan needs the shifted labels).
    """

    def __init__(self, plan, *, dp_rank, dp_world_size, positions=False, **loader_args):
        loader_args.setdefault("labels", True)
        self.loader = Loader(plan, dp_rank=dp_rank, dp_size=dp_world_size, **loader_args)
        self.dp_rank, self.dp_world_size = int(dp_rank), int(dp_world_size)
        self._positions = bool(positions)

    def __iter__(self):
        mask = self.loader._eod_mask_loss
        for b in self.loader:
            labels = b.labels.to(torch.int64)
            if mask:
                labels = labels.masked_fill(b.loss_mask == 0, -100)
            d = {"input": b.input_ids}
            if self._positions and b.position_ids is not None:
                d["positions"] = b.position_ids
            yield d, labels

    def __len__(self):
        return len(self.loader)

    def state_dict(self):
        return {k: v for k, v in self.loader.state_dict().items() if k not in _RANK_KEYS}

    def load_state_dict(self, state_dict):
        # An empty state is valid (torchtitan: nothing saved yet).
        if state_dict:
            self.loader.load_state_dict(state_dict)

    def close(self):
        self.loader.close()
