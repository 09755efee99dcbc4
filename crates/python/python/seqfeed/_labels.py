"""Loss mask and position ids for next-token training, as Megatron computes them.

``loss_mask_and_position_ids`` matches megatron-core's
``_get_ltor_masks_and_position_ids`` (``eod_mask_loss``, ``reset_position_ids``)
without the attention mask (``create_attention_mask=False``, as with flash
attention), computed with torch ops on the tokens' own device and no Python
loop over rows.
"""

import torch


def loss_mask_and_position_ids(input_ids, eod_token, eod_mask_loss=False, reset_position_ids=False):
    """Returns ``(loss_mask, position_ids)`` for ``input_ids`` of shape ``[b, s]``.

    * ``loss_mask`` (float32): 1.0 everywhere, 0.0 at EOD tokens when
      ``eod_mask_loss``.
    * ``position_ids`` (int64): ``0..s-1`` per row; with ``reset_position_ids``
      they restart at 0 right after each EOD token.

    >>> ids = torch.tensor([[5, 0, 7, 8]])
    >>> loss_mask_and_position_ids(ids, 0, True, True)[1].tolist()
    [[0, 1, 0, 1]]
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    ids = input_ids if input_ids.dtype in (torch.int64, torch.int32) else input_ids.to(torch.int64)
    b, s = ids.shape
    device = ids.device
    is_eod = ids == int(eod_token)
    loss_mask = torch.ones((b, s), dtype=torch.float32, device=device)
    if eod_mask_loss:
        loss_mask.masked_fill_(is_eod, 0.0)
    idx = torch.arange(s, dtype=torch.int64, device=device).unsqueeze(0).expand(b, s)
    if not reset_position_ids:
        return loss_mask, idx.clone()
    # A token's position counts from the last EOD before it: an EOD at i
    # starts a new document at i + 1.
    starts = torch.zeros((b, s), dtype=torch.int64, device=device)
    if s > 1:
        starts[:, 1:] = torch.where(is_eod[:, :-1], idx[:, 1:], torch.zeros_like(idx[:, 1:]))
    starts = torch.cummax(starts, dim=1).values
    return loss_mask, idx - starts
