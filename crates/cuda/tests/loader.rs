//! The loader with CUDA destinations, over the local transport and real
//! files: without CUDA the destination is the heap (tested for real here);
//! with a GPU every batch's device bytes are copied back and compared with
//! the files.

#![allow(clippy::unwrap_used)]

use seqfeed_cuda::{
    batch_ready_on, device_batch, probe, widen_u16_host, CudaProbe, CudaStepBuffer, DType,
    DevicePath, LoaderDestination, TransportCaps,
};
use seqfeed_loader::testutil::{expected, xorshift_files, Files, RandomBlocks};
use seqfeed_loader::{
    node_spec, ClusterReader, Dtype, Endpoint, Loader, LoaderConfig, RetryPolicy, TransportKind,
};
use std::sync::Arc;

const SEQ_LEN: usize = 1024;

/// `n` files of u16 rows of [`SEQ_LEN`] tokens, `len` bytes each.
fn files(n: usize, len: usize) -> Files {
    xorshift_files(n, len / (SEQ_LEN * 2), SEQ_LEN * 2)
}

fn run_loader(f: &Files, dest: &LoaderDestination, steps: u64) -> u64 {
    let source = Arc::new(RandomBlocks::xorshift(f, 64, steps));
    let spec = node_spec(
        TransportKind::Local,
        &Endpoint::local(f.dir.path(), Some(f.names.clone())),
    )
    .unwrap();
    let reader =
        ClusterReader::connect(f.names.clone(), vec![spec], RetryPolicy::default()).unwrap();
    let config = LoaderConfig::new(1, 2).prefetch(3);
    let mut loader =
        Loader::with_allocator(config, source, reader, dest.allocator.clone()).unwrap();
    let mut checked = 0u64;
    let mut step = 0u64;
    while let Some(batch) = loader.next() {
        let batch = batch.unwrap();
        assert_eq!(batch.step(), step);
        let want = expected(f, batch.reads());
        assert!(
            batch.bytes() == want.as_slice(),
            "step {step}: host view differs from the files"
        );
        match device_batch(&batch) {
            None => {
                assert_eq!(dest.path, DevicePath::Host);
                assert!(batch_ready_on(&batch, 0x1).is_none(), "a host batch");
            }
            Some(db) => {
                let db = db.unwrap();
                assert_eq!(db.shape, vec![32, SEQ_LEN]);
                let slot = CudaStepBuffer::of(&batch).unwrap().slot();
                slot.event().synchronize().unwrap();
                let mut got = vec![0u8; db.bytes()];
                match slot.widened_buffer() {
                    None => {
                        assert_eq!(db.dtype, DType::U16);
                        slot.device_buffer().copy_to_host(0, &mut got).unwrap();
                        assert!(
                            got == want,
                            "step {step}: device bytes differ from the files"
                        );
                    }
                    Some(wide) => {
                        assert_eq!(db.dtype, DType::I64);
                        assert_eq!(db.ptr, wide.device_ptr());
                        wide.copy_to_host(0, &mut got).unwrap();
                        let ids: Vec<i64> = got
                            .chunks_exact(8)
                            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                            .collect();
                        assert_eq!(ids, widen_u16_host(&want), "step {step}: int64 ids differ");
                    }
                }
            }
        }
        checked += want.len() as u64;
        step += 1;
    }
    assert_eq!(step, steps);
    checked
}

#[test]
fn loader_lands_exact_bytes_in_the_selected_destination() {
    let f = files(3, 4 << 20);
    let dest = LoaderDestination::select(&TransportCaps::cpu_copy("local"), None).unwrap();
    match probe() {
        CudaProbe::NotAvailable { reason } => {
            if std::env::var("SEQFEED_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("SEQFEED_REQUIRE_CUDA=1 but CUDA is not available: {reason}");
            }
            assert_eq!(dest.path, DevicePath::Host);
            assert!(dest.device.is_none());
            assert_eq!(dest.allocator.name(), "heap");
            eprintln!("no CUDA ({reason}): checked the heap destination only");
        }
        CudaProbe::Available(_) => {
            assert_eq!(dest.path, DevicePath::PinnedBounce, "{:?}", dest.choice);
            assert_eq!(dest.allocator.name(), "cuda-bounce");
        }
    }
    let bytes = run_loader(&f, &dest, 20);
    assert_eq!(bytes, 20 * 32 * 1024 * 2);
}

#[test]
fn forcing_a_device_path_without_cuda_is_an_error_and_host_is_not() {
    if probe().system().is_some() {
        eprintln!(
            "SKIP forcing_a_device_path_without_cuda_is_an_error_and_host_is_not: CUDA is present"
        );
        return;
    }
    let e = LoaderDestination::select(
        &TransportCaps::cpu_copy("local"),
        Some(DevicePath::PinnedBounce),
    )
    .unwrap_err();
    assert!(e.to_string().contains("CUDA is absent"), "{e}");
    let d = LoaderDestination::select(&TransportCaps::cpu_copy("local"), Some(DevicePath::Host))
        .unwrap();
    assert_eq!(d.path, DevicePath::Host);
}

#[test]
fn loader_widens_tokens_to_int64_on_the_device() {
    let require = |v: &str| std::env::var(v).is_ok_and(|x| x == "1");
    if let CudaProbe::NotAvailable { reason } = probe() {
        assert!(
            !require("SEQFEED_REQUIRE_CUDA"),
            "SEQFEED_REQUIRE_CUDA=1 but {reason}"
        );
        eprintln!("SKIP loader_widens_tokens_to_int64_on_the_device: no CUDA: {reason}");
        return;
    }
    if let Err(why) = seqfeed_cuda::nvrtc_available() {
        assert!(
            !require("SEQFEED_REQUIRE_NVRTC"),
            "SEQFEED_REQUIRE_NVRTC=1 but {why}"
        );
        eprintln!("SKIP loader_widens_tokens_to_int64_on_the_device: {why}");
        return;
    }
    let f = files(2, 2 << 20);
    let dest =
        LoaderDestination::select_with(&TransportCaps::cpu_copy("local"), None, Some(Dtype::U16))
            .unwrap();
    assert_eq!(dest.path, DevicePath::PinnedBounce);
    assert_eq!(run_loader(&f, &dest, 6), 6 * 32 * 1024 * 2);
}
