"""DLPack versions (issue 17 D19): a consumer that asks for DLPack 1.0
(``max_version=(1, 0)``, as ``torch.from_dlpack`` does on the protocol path)
gets a ``"dltensor_versioned"`` capsule; an older one (no ``max_version``, or
0.x) the ``"dltensor"`` capsule. Both describe the step buffer's bytes without
a copy, and the step buffer goes back to the ring when the tensor is freed."""

import ctypes
import gc

import torch

import seqfeed

_valid = ctypes.pythonapi.PyCapsule_IsValid
_valid.restype = ctypes.c_int
_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]


def test_max_version_selects_the_versioned_capsule(dataset):
    ds, plan = dataset
    loader = seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=1, dtype="native", prefetch=1)
    b = next(loader)
    nb = b.native
    old = nb.__dlpack__()
    assert _valid(old, b"dltensor") == 1 and _valid(old, b"dltensor_versioned") == 0
    also_old = nb.__dlpack__(max_version=(0, 8))
    assert _valid(also_old, b"dltensor") == 1
    new = nb.__dlpack__(max_version=(1, 0))
    assert _valid(new, b"dltensor_versioned") == 1 and _valid(new, b"dltensor") == 0
    t = torch.utils.dlpack.from_dlpack(new)
    assert torch.equal(t, b.tokens) and t.data_ptr() == b.tokens.data_ptr()
    # The protocol path (torch passes max_version itself), zero-copy too.
    p = torch.from_dlpack(nb)
    assert torch.equal(p, b.tokens) and p.data_ptr() == b.tokens.data_ptr()
    # Unconsumed capsules free their tensors; then every view is dropped and
    # the loader reads on through a ring of 2 (prefetch 1) without RingHeld.
    del old, also_old, new, t, p, b, nb
    gc.collect()
    n = 1 + sum(1 for _ in loader)
    assert n == 12  # the fixture's plan: 12 steps of one micro-batch
    loader.close()
