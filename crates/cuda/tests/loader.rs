//! The loader with CUDA destinations, over the local transport and real
//! files: without CUDA the destination is the heap (tested for real here);
//! with a GPU every batch's device bytes are copied back and compared with
//! the files.

#![allow(clippy::unwrap_used)]

use seqfeed_cuda::{
    device_batch, probe, widen_u16_host, CudaProbe, CudaStepBuffer, DType, DevicePath,
    LoaderDestination, TransportCaps,
};
use seqfeed_loader::{
    node_spec, BlockSource, BoxError, ClusterReader, Dtype, Endpoint, Loader, LoaderConfig,
    RetryPolicy, SeqRead, TransportKind,
};
use std::sync::Arc;

struct Files {
    dir: tempfile::TempDir,
    names: Vec<String>,
    bytes: Vec<Vec<u8>>,
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn files(n: usize, len: usize) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    let mut bytes = Vec::new();
    for i in 0..n {
        let name = format!("part-{i:05}.seq");
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
        let b: Vec<u8> = (0..len)
            .map(|_| {
                x = xorshift(x);
                (x >> 32) as u8
            })
            .collect();
        std::fs::write(dir.path().join(&name), &b).unwrap();
        names.push(name);
        bytes.push(b);
    }
    Files { dir, names, bytes }
}

/// Rows drawn pseudo-randomly (keyed by global position) from the files.
struct Blocks {
    files: Vec<String>,
    sources: Vec<String>,
    seqs_per_file: usize,
    seq_len: usize,
    global: usize,
    steps: u64,
}

impl Blocks {
    fn read(&self, pos: u64) -> SeqRead {
        let r = xorshift(pos.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        let seq_bytes = self.seq_len * 2;
        SeqRead {
            file: (r % self.files.len() as u64) as u32,
            offset: ((r >> 20) % self.seqs_per_file as u64) * seq_bytes as u64,
            len: seq_bytes as u32,
            source: 0,
            position: pos,
        }
    }
}

impl BlockSource for Blocks {
    fn steps(&self) -> u64 {
        self.steps
    }
    fn global_batch(&self) -> usize {
        self.global
    }
    fn seq_len(&self) -> usize {
        self.seq_len
    }
    fn dtype(&self) -> Dtype {
        Dtype::U16
    }
    fn files(&self) -> &[String] {
        &self.files
    }
    fn sources(&self) -> &[String] {
        &self.sources
    }
    fn block(
        &self,
        step: u64,
        rank: usize,
        world: usize,
        out: &mut Vec<SeqRead>,
    ) -> Result<(), BoxError> {
        let micro = self.micro_batch(world)?;
        let first = step * self.global as u64 + (rank * micro) as u64;
        out.extend((first..first + micro as u64).map(|p| self.read(p)));
        Ok(())
    }
}

fn run_loader(f: &Files, dest: &LoaderDestination, steps: u64) -> u64 {
    let seq_len = 1024;
    let source = Arc::new(Blocks {
        files: f.names.clone(),
        sources: vec!["s".into()],
        seqs_per_file: f.bytes[0].len() / (seq_len * 2),
        seq_len,
        global: 64,
        steps,
    });
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
        let want: Vec<u8> = batch
            .reads()
            .iter()
            .flat_map(|r| {
                f.bytes[r.file as usize][r.offset as usize..r.offset as usize + r.len as usize]
                    .iter()
                    .copied()
            })
            .collect();
        assert!(
            batch.bytes() == want.as_slice(),
            "step {step}: host view differs from the files"
        );
        match device_batch(&batch) {
            None => assert_eq!(dest.path, DevicePath::Host),
            Some(db) => {
                let db = db.unwrap();
                assert_eq!(db.shape, vec![32, seq_len]);
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
