"""The CUDA tensor path with torch: batches land in device memory and are
handed to torch without a copy; held tensors survive ring reuse while the
consumer's stream still works on them. Skips (loudly) without a GPU."""

import pytest
import torch

import seqfeed

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="SKIP: no CUDA device here; the CUDA tensor path runs in a GPU session"
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_asking_for_a_gpu_without_one_is_a_clear_error(dataset):
    ds, plan = dataset
    with pytest.raises(seqfeed.SeqfeedError, match="cuda:0"):
        next(seqfeed.Loader(plan, dataset=ds, device="cuda:0", dp_rank=0, dp_size=1))


@needs_gpu
def test_cuda_batches_equal_the_cpu_batches(dataset):
    ds, plan = dataset
    cpu = [b.tokens.clone() for b in seqfeed.Loader(plan, dataset=ds, dp_rank=0, dp_size=1)]
    gpu = seqfeed.Loader(plan, dataset=ds, device="cuda:0", dp_rank=0, dp_size=1)
    for b, want in zip(gpu, cpu):
        assert b.tokens.device.type == "cuda"
        assert b.tokens.dtype == torch.int64
        assert torch.equal(b.tokens.cpu(), want)


@needs_gpu
def test_held_cuda_tensors_survive_ring_reuse_under_stream_work(dataset):
    ds, plan = dataset
    cpu = [b.tokens.clone() for b in seqfeed.Loader(plan, dataset=ds, dtype="native", dp_rank=0, dp_size=1)]
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        loader = seqfeed.Loader(plan, dataset=ds, device="cuda:0", dtype="native", prefetch=1, dp_rank=0, dp_size=1)
        held = []
        for b in loader:
            t = b.tokens
            # Long work on the consumer stream that reads the batch.
            x = torch.randn(2048, 2048, device="cuda")
            for _ in range(8):
                x = x @ x
                x = x / x.norm()
            acc = t.to(torch.int64).sum() + x.sum().to(torch.int64) * 0
            held.append((b.step, t, acc))
            del b
            while len(held) > 1:
                step, t, acc = held.pop(0)
                assert torch.equal(t.cpu().to(torch.int64), cpu[step].to(torch.int64)), f"step {step}"
                assert acc.item() == int(cpu[step].to(torch.int64).sum())
    torch.cuda.synchronize()
