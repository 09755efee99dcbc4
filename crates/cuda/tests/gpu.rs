//! Device tests. Each needs a CUDA GPU and skips with a printed reason
//! without one; with `SEQFEED_REQUIRE_CUDA=1` (set by scripts/gpu-check.sh)
//! a missing GPU fails instead of skipping.

#![allow(clippy::unwrap_used)]

use seqfeed_cuda::{
    probe, widen_u16_host, BounceSlot, CudaError, CudaProbe, DType, Device, DevicePath,
    TransportCaps, Widener,
};
use std::sync::Arc;

#[path = "common/release_checks.rs"]
mod release_checks;

fn gpu_or_skip(test: &str) -> Option<Device> {
    match probe() {
        CudaProbe::NotAvailable { reason } => {
            if std::env::var("SEQFEED_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("{test}: SEQFEED_REQUIRE_CUDA=1 but CUDA is not available: {reason}");
            }
            eprintln!("SKIP {test}: no CUDA: {reason}");
            None
        }
        CudaProbe::Available(_) => Some(Device::open(0).unwrap()),
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a mismatch is reproducible.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn probe_never_panics_and_is_consistent() {
    match probe() {
        CudaProbe::NotAvailable { reason } => {
            assert!(!reason.is_empty());
            let e = Device::open(0).unwrap_err();
            assert!(e.is_not_available(), "{e}");
            assert!(e.to_string().contains(reason.as_str()), "{e}");
            let side = seqfeed_cuda::gpu_side(0);
            let c =
                seqfeed_cuda::choose_path(&side, &TransportCaps::cpu_copy("tcp"), None).unwrap();
            assert_eq!(c.path(), DevicePath::Host);
            eprintln!("no CUDA here (reported, not panicked): {reason}");
        }
        CudaProbe::Available(sys) => {
            assert!(!sys.devices.is_empty());
            assert!(sys.driver_version >= seqfeed_cuda::MIN_DRIVER_VERSION);
            for (i, d) in sys.devices.iter().enumerate() {
                assert_eq!(d.index, i);
                assert!(d.total_mem > 0);
                eprintln!(
                    "GPU {i}: {} cc {}.{} {} MiB pci {} dmabuf={} gpudirect_rdma={} peermem={:?}",
                    d.name,
                    d.compute_capability.0,
                    d.compute_capability.1,
                    d.total_mem >> 20,
                    d.pci_bus_id,
                    d.dmabuf_supported,
                    d.gpudirect_rdma_supported,
                    sys.peer_mem_module
                );
            }
        }
    }
}

#[test]
fn device_index_beyond_gpus_is_a_clear_error() {
    let Some(_dev) = gpu_or_skip("device_index_beyond_gpus_is_a_clear_error") else {
        return;
    };
    let n = probe().system().unwrap().devices.len();
    let e = Device::open_from(n + 3, "LOCAL_RANK=x").unwrap_err();
    match &e {
        CudaError::NoSuchDevice { index, count, .. } => {
            assert_eq!((*index, *count), (n + 3, n));
        }
        other => panic!("wrong error: {other}"),
    }
    assert!(e.to_string().contains("LOCAL_RANK=x"), "{e}");
}

#[test]
fn bounce_slot_lands_exact_bytes_and_signals_event() {
    let Some(dev) = gpu_or_skip("bounce_slot_lands_exact_bytes_and_signals_event") else {
        return;
    };
    let stream = Arc::new(dev.stream().unwrap());
    let len = 8 << 20;
    let mut slot = BounceSlot::new(&dev, stream, len).unwrap();
    assert!(slot.is_ready().unwrap(), "a fresh slot is ready");
    for round in 0..3u64 {
        let want = pattern(len, 17 + round);
        slot.host_mut().unwrap().copy_from_slice(&want);
        // A partial batch in the last round: only the submitted prefix counts.
        let n = if round == 2 { len / 2 + 6 } else { len };
        slot.submit(n).unwrap();
        slot.wait().unwrap();
        assert!(slot.is_ready().unwrap());
        let mut got = vec![0u8; n];
        slot.device_buffer().copy_to_host(0, &mut got).unwrap();
        assert!(
            got == want[..n],
            "round {round}: device bytes differ from the staged bytes"
        );
    }
    let b = slot.batch(&[1, (len / 2 + 6) / 2], DType::U16).unwrap();
    assert_eq!(b.ptr, slot.device_buffer().device_ptr());
    assert_eq!(b.bytes(), len / 2 + 6);
    assert!(
        slot.batch(&[2, 2], DType::U16).is_err(),
        "shape/bytes mismatch is refused"
    );
}

#[test]
fn copy_back_brings_a_direct_step_to_the_pinned_buffer() {
    let Some(dev) = gpu_or_skip("copy_back_brings_a_direct_step_to_the_pinned_buffer") else {
        return;
    };
    let stream = Arc::new(dev.stream().unwrap());
    let len = 1 << 20;
    let mut slot = BounceSlot::new(&dev, stream, len).unwrap();
    slot.host_mut().unwrap().fill(0);
    for round in 0..2u64 {
        // A direct fill: the bytes land in device memory (here written by
        // a synchronous copy standing in for the NICs), not in the pinned
        // buffer.
        slot.begin_direct().unwrap();
        let want = pattern(len, 91 + round);
        let n = if round == 1 { len / 2 + 4 } else { len };
        slot.device_buffer().copy_from_host(0, &want).unwrap();
        slot.complete_direct(n).unwrap();
        slot.copy_back(n).unwrap();
        assert!(
            slot.host()[..n] == want[..n],
            "round {round}: pinned bytes differ from the device bytes"
        );
    }
    assert!(
        slot.copy_back(len + 1).is_err(),
        "past the buffer is refused"
    );
}

#[test]
fn consumer_stream_waits_on_copy_event() {
    let Some(dev) = gpu_or_skip("consumer_stream_waits_on_copy_event") else {
        return;
    };
    let copy_stream = Arc::new(dev.stream().unwrap());
    let consumer = dev.stream().unwrap();
    let len = 64 << 20;
    let mut slot = BounceSlot::new(&dev, copy_stream, len).unwrap();
    let want = pattern(len, 99);
    slot.host_mut().unwrap().copy_from_slice(&want);
    slot.submit(len).unwrap();
    // The consumer orders itself after the copy without blocking the host.
    consumer.wait_event(slot.event()).unwrap();
    let done = dev.event(false).unwrap();
    done.record(&consumer).unwrap();
    done.synchronize().unwrap();
    assert!(
        slot.is_ready().unwrap(),
        "consumer finished, so the copy had to"
    );
    let mut got = vec![0u8; len];
    slot.device_buffer().copy_to_host(0, &mut got).unwrap();
    assert!(got == want);
}

#[test]
fn out_of_memory_is_a_clear_error() {
    let Some(dev) = gpu_or_skip("out_of_memory_is_a_clear_error") else {
        return;
    };
    let total = dev.info().total_mem;
    let e = dev
        .alloc(total.saturating_mul(4), "an impossible step buffer")
        .unwrap_err();
    match &e {
        CudaError::OutOfMemory {
            device, requested, ..
        } => {
            assert_eq!(*device, 0);
            assert_eq!(*requested, total * 4);
        }
        other => panic!("wrong error: {other}"),
    }
    let s = e.to_string();
    assert!(
        s.contains("out of device memory") && s.contains("impossible step buffer"),
        "{s}"
    );
    // The device still works afterwards.
    let b = dev.alloc(4096, "after oom").unwrap();
    b.fill(0xab).unwrap();
    let mut got = [0u8; 4096];
    b.copy_to_host(0, &mut got).unwrap();
    assert!(got.iter().all(|x| *x == 0xab));
}

#[test]
fn out_of_range_copies_are_refused() {
    let Some(dev) = gpu_or_skip("out_of_range_copies_are_refused") else {
        return;
    };
    let b = dev.alloc(1000, "range test").unwrap();
    assert!(b.copy_from_host(999, &[1, 2]).is_err());
    let mut out = [0u8; 10];
    assert!(b.copy_to_host(usize::MAX - 3, &mut out).is_err());
    assert!(dev.alloc(0, "empty").is_err());
}

#[test]
fn dmabuf_export_or_clear_refusal() {
    let Some(dev) = gpu_or_skip("dmabuf_export_or_clear_refusal") else {
        return;
    };
    let b = dev.alloc(4 << 20, "dmabuf test").unwrap();
    match b.export_dmabuf(100, 1 << 20) {
        Ok(r) => {
            use std::os::fd::AsRawFd;
            assert!(r.fd.as_raw_fd() >= 0);
            assert_eq!(r.iova, b.device_ptr() + 100);
            assert_eq!(r.len, 1 << 20);
            assert_eq!(r.fd_offset, 100, "cuMemAlloc memory is page-aligned");
            eprintln!(
                "dmabuf export OK: fd {} offset {}",
                r.fd.as_raw_fd(),
                r.fd_offset
            );
        }
        Err(e) => {
            assert!(matches!(e, CudaError::DmaBufUnsupported { .. }), "{e}");
            assert!(
                !dev.info().dmabuf_supported || e.to_string().contains("refused"),
                "{e}"
            );
            eprintln!("dmabuf export refused (reported): {e}");
        }
    }
}

#[test]
fn widening_kernel_matches_host() {
    let Some(dev) = gpu_or_skip("widening_kernel_matches_host") else {
        return;
    };
    if let Err(why) = seqfeed_cuda::nvrtc_available() {
        if std::env::var("SEQFEED_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("SEQFEED_REQUIRE_NVRTC=1 but {why}");
        }
        eprintln!("SKIP widening_kernel_matches_host: {why}");
        return;
    }
    let w = Widener::new(&dev).unwrap();
    let stream = dev.stream().unwrap();
    let n = (1 << 20) + 7; // not a multiple of anything convenient
    let src_bytes = pattern(n * 2 + 2, 5);
    let src = dev.alloc(src_bytes.len(), "u16 tokens").unwrap();
    src.copy_from_host(0, &src_bytes).unwrap();
    let dst = dev.alloc(n * 8, "i64 ids").unwrap();
    dst.fill(0xee).unwrap();
    // From byte offset 2 (token 1) to exercise offsets.
    w.widen(&src, 2, DType::U16, n, &dst, 0, &stream).unwrap();
    stream.synchronize().unwrap();
    let mut got = vec![0u8; n * 8];
    dst.copy_to_host(0, &mut got).unwrap();
    let got: Vec<i64> = got
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, widen_u16_host(&src_bytes[2..2 + n * 2]));
    // u32 too.
    let m = 12345;
    let src32 = pattern(m * 4, 6);
    let s32 = dev.alloc(m * 4, "u32 tokens").unwrap();
    s32.copy_from_host(0, &src32).unwrap();
    w.widen(&s32, 0, DType::U32, m, &dst, 8, &stream).unwrap();
    stream.synchronize().unwrap();
    let mut got = vec![0u8; m * 8];
    dst.copy_to_host(8, &mut got).unwrap();
    for (i, c) in got.chunks_exact(8).enumerate() {
        let want = u32::from_le_bytes(src32[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(
            i64::from_le_bytes(c.try_into().unwrap()),
            i64::from(want),
            "token {i}"
        );
    }
    // Out-of-range widening is refused before launch.
    assert!(w
        .widen(&src, 0, DType::U16, n * 4, &dst, 0, &stream)
        .is_err());
}

#[test]
fn batch_converts_to_dlpack() {
    let Some(dev) = gpu_or_skip("batch_converts_to_dlpack") else {
        return;
    };
    let stream = Arc::new(dev.stream().unwrap());
    let mut slot = BounceSlot::new(&dev, stream, 4 * 512 * 2).unwrap();
    slot.submit(4 * 512 * 2).unwrap();
    let b = slot.batch(&[4, 512], DType::U16).unwrap();
    let t = b.to_dlpack().unwrap();
    let m = t.get();
    assert_eq!(m.dl_tensor.data as u64, b.ptr);
    assert_eq!(
        m.dl_tensor.device.device_type,
        seqfeed_cuda::dlpack::KDL_CUDA
    );
    assert_eq!(t.shape(), &[4, 512]);
    assert_eq!(t.strides(), &[512, 1]);
    assert_eq!((m.dl_tensor.dtype.code, m.dl_tensor.dtype.bits), (1, 16));
    slot.wait().unwrap();
}

#[test]
fn direct_fill_records_the_ready_event_and_step_buffers_offer_device_memory() {
    use seqfeed_cuda::{CudaBounceAllocator, CudaStepBuffer};
    use seqfeed_loader::BufferAllocator;
    let Some(dev) =
        gpu_or_skip("direct_fill_records_the_ready_event_and_step_buffers_offer_device_memory")
    else {
        return;
    };
    let len = 1 << 20;
    let stream = Arc::new(dev.stream().unwrap());
    let mut slot = BounceSlot::new(&dev, stream, len).unwrap();
    let bytes = pattern(len, 5);
    slot.begin_direct().unwrap();
    // A synchronous copy stands in for the NIC writing device memory.
    slot.device_buffer().copy_from_host(0, &bytes).unwrap();
    slot.complete_direct(len).unwrap();
    slot.wait().unwrap();
    let b = slot.batch(&[256, 1024], DType::U32).unwrap();
    assert_eq!(b.ptr, slot.device_buffer().device_ptr());
    assert_eq!(b.event, slot.event().handle());
    let mut back = vec![0u8; len];
    slot.device_buffer().copy_to_host(0, &mut back).unwrap();
    assert!(back == bytes);
    assert!(slot.complete_direct(len + 1).is_err());

    let alloc = CudaBounceAllocator::new(&dev)
        .unwrap()
        .with_direct(&[DevicePath::DmaBuf, DevicePath::PeerMem]);
    let buf = alloc.allocate(4096).unwrap();
    let ptr = buf
        .backend()
        .and_then(|b| b.downcast_ref::<CudaStepBuffer>())
        .unwrap()
        .slot()
        .device_buffer()
        .device_ptr();
    let regions = buf.device_regions();
    let peer = regions.last().unwrap();
    assert_eq!((peer.addr(), peer.len(), peer.dmabuf()), (ptr, 4096, None));
    if regions.len() == 2 {
        // dmabuf export worked: offered first, same device addresses.
        assert!(regions[0].dmabuf().is_some());
        assert_eq!((regions[0].addr(), regions[0].len()), (ptr, 4096));
    } else {
        assert_eq!(regions.len(), 1, "export refused: only peer memory offered");
    }
}

#[test]
fn held_batches_stay_intact_while_the_loader_moves_on() {
    let Some(dev) = gpu_or_skip("held_batches_stay_intact_while_the_loader_moves_on") else {
        return;
    };
    for prefetch in [1, 2] {
        match release_checks::held_batches(&dev, prefetch) {
            Ok(summary) => eprintln!("prefetch {prefetch}: {summary}"),
            Err(e) => panic!("prefetch {prefetch}: {e}"),
        }
    }
}

#[test]
fn released_slot_is_rewritten_only_after_the_consumer_stream() {
    let Some(dev) = gpu_or_skip("released_slot_is_rewritten_only_after_the_consumer_stream") else {
        return;
    };
    match release_checks::release_ordering(&dev) {
        Ok(summary) => eprintln!("{summary}"),
        Err(e) => panic!("{e}"),
    }
}
