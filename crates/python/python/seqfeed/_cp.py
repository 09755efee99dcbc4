"""Context-parallel slicing of a batch, as Megatron-core balances it.

``context_parallel_slice`` cuts each row's sequence dimension into
``2 * cp_size`` equal chunks and gives context-parallel rank ``r`` chunks
``r`` and ``2 * cp_size - 1 - r`` (in that order, concatenated): with causal
attention, early chunks are cheap and late ones expensive, so every rank
gets one of each. This is what megatron-core's
``megatron.core.utils.get_batch_on_this_cp_rank`` does (the tests compare
the two on real batches), without reading ``parallel_state`` and without
an index tensor built on the device.
"""

import torch


def context_parallel_slice(batch, cp_rank, cp_size):
    """The part of ``batch`` that context-parallel rank ``cp_rank`` of
    ``cp_size`` works on.

    ``batch`` is a dict such as ``Batch.as_dict(format="megatron")`` (or a
    single tensor). Every tensor of two or more dimensions (``[b, s, ...]``:
    tokens, labels, loss_mask, position_ids, document_ids) is sliced along
    dimension 1, which must divide into ``2 * cp_size`` chunks; the result
    has ``s / cp_size`` positions per row. ``None`` and plain Python values
    pass through unchanged. A one-dimensional tensor (e.g. ``cu_seqlens``)
    or a ``packed_seq_params`` is refused: document boundaries describe whole
    rows, and Megatron's ``thd`` context parallelism
    (``get_thd_batch_on_this_cp_rank``) needs every document padded to a
    multiple of ``2 * cp_size`` tokens, which packed rows are not. Use
    ``document_ids`` (sliced like the tokens) to tell documents apart on a
    rank. ``cp_size == 1`` returns the batch as it is.

    The slices are views joined with ``torch.cat`` on the tensors' own
    device: no host synchronization.

    >>> t = torch.arange(8).view(1, 8)
    >>> context_parallel_slice({"tokens": t}, 0, 2)["tokens"].tolist()
    [[0, 1, 6, 7]]
    """
    cp_rank, cp_size = int(cp_rank), int(cp_size)
    if cp_size < 1 or not 0 <= cp_rank < cp_size:
        raise ValueError(f"context-parallel rank {cp_rank} is out of range for size {cp_size}")
    if isinstance(batch, torch.Tensor):
        return _slice("tensor", batch, cp_rank, cp_size)
    if cp_size == 1:
        return dict(batch)
    return {k: _slice(k, v, cp_rank, cp_size) for k, v in batch.items()}


def _slice(key, value, cp_rank, cp_size):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{key!r}: cannot slice a {type(value).__name__} for context parallelism: document "
            "boundaries (cu_seqlens, packed_seq_params) describe whole rows; slice the per-token "
            "tensors (document_ids included) instead"
        )
    if cp_size == 1:
        return value
    if value.dim() < 2:
        raise ValueError(
            f"{key!r} has shape {tuple(value.shape)}: only [batch, seq, ...] tensors are sliced for "
            "context parallelism (cu_seqlens describe whole rows; use document_ids)"
        )
    s = value.shape[1]
    n = 2 * cp_size
    if s % n:
        raise ValueError(
            f"{key!r}: sequence length {s} does not split into 2 x cp_size = {n} equal chunks"
        )
    c = s // n
    first = value[:, cp_rank * c : (cp_rank + 1) * c]
    last = value[:, (n - 1 - cp_rank) * c : (n - cp_rank) * c]
    return torch.cat((first, last), dim=1)
