//! Tests of the loader: ring reuse, micro-batches, resume, GPUDirect paths.

use super::*;
use crate::cluster_reader::RetryPolicy;
use crate::testutil::{
    expected, files, flaky_node, DeviceCounters, FakeDeviceAllocator, FakeDeviceBuffer, Files,
    RandomBlocks, Switch,
};
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;

fn reader(f: &Files) -> ClusterReader {
    let on = |n: usize| -> Vec<String> {
        f.names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == n || *i == 0)
            .map(|(_, s)| s.clone())
            .collect()
    };
    let (a, _) = flaky_node(f.dir.path(), "a", on(0));
    let (b, _) = flaky_node(f.dir.path(), "b", on(1));
    ClusterReader::connect(f.names.clone(), vec![a, b], RetryPolicy::default()).unwrap()
}

#[test]
fn four_ranks_cover_each_step_byte_for_byte() {
    let f = files(5, 30, 512, 11);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 16, 12));
    let per_rank: Vec<Vec<(u64, Vec<u64>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|rank| {
                let src = src.clone();
                let f = &f;
                s.spawn(move || {
                    let mut l = Loader::new(LoaderConfig::new(rank, 4), src, reader(f)).unwrap();
                    let mut seen = Vec::new();
                    while let Some(b) = l.next() {
                        let b = b.unwrap();
                        assert_eq!(b.shape(), [4, 128]);
                        assert_eq!(b.dtype(), Dtype::U32);
                        assert_eq!(b.bytes(), &expected(f, b.reads())[..]);
                        assert_eq!(b.tokens_u32().unwrap().len(), 4 * 128);
                        assert!(b.tokens_u16().is_none());
                        for k in 0..4 {
                            let r = b.reads()[k];
                            assert_eq!(b.source(k), format!("s{}", r.file % 3));
                            assert_eq!(b.file(k), f.names[r.file as usize]);
                        }
                        seen.push((b.step(), b.reads().iter().map(|r| r.position).collect()));
                    }
                    assert_eq!(l.stats().steps, 12);
                    assert_eq!(l.stats().sequences, 48);
                    assert_eq!(l.stats().bytes, 48 * 512);
                    seen
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for step in 0..12u64 {
        let mut union = BTreeSet::new();
        for r in &per_rank {
            assert_eq!(r[step as usize].0, step);
            union.extend(r[step as usize].1.iter().copied());
        }
        let want: BTreeSet<u64> = (step * 16..(step + 1) * 16).collect();
        assert_eq!(union, want, "step {step}");
    }
}

#[test]
fn resume_matches_the_full_run_and_held_batches_stay_valid() {
    let f = files(3, 20, 256, 12);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 8, 20));
    let mut full = Loader::new(LoaderConfig::new(1, 2), src.clone(), reader(&f)).unwrap();
    let all: Vec<Vec<u8>> = full.by_ref().map(|b| b.unwrap().bytes().to_vec()).collect();
    assert_eq!(all.len(), 20);
    let cfg = LoaderConfig::new(1, 2).start_step(13).prefetch(3);
    let mut l = Loader::new(cfg, src, reader(&f)).unwrap();
    let held = l.next().unwrap().unwrap();
    assert_eq!(held.step(), 13);
    // Consume the rest while holding step 13: the ring must never reuse it.
    let mut n = 0;
    while let Some(b) = l.next() {
        let b = b.unwrap();
        assert_eq!(b.bytes(), &all[b.step() as usize][..]);
        n += 1;
    }
    assert_eq!(n, 6);
    assert_eq!(held.bytes(), &all[13][..]);
    assert!(l.next().is_none());
}

#[test]
fn prefetch_hides_reads_behind_a_slower_consumer() {
    let f = files(2, 10, 64, 15);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 4, 10));
    let (a, sa) = flaky_node(f.dir.path(), "a", f.names.clone());
    sa.delay_ms.store(15, std::sync::atomic::Ordering::SeqCst);
    let r = ClusterReader::connect(f.names.clone(), vec![a], RetryPolicy::default()).unwrap();
    let mut l = Loader::new(LoaderConfig::new(0, 1), src, r).unwrap();
    let mut n = 0;
    while let Some(b) = l.next() {
        let b = b.unwrap();
        assert_eq!(b.bytes(), &expected(&f, b.reads())[..]);
        std::thread::sleep(Duration::from_millis(60)); // the consumer's work
        n += 1;
    }
    assert_eq!(n, 10);
    let st = l.stats();
    // The first batch waits for its read; after that, reads of the next
    // steps overlap the consumer: without prefetch the stall would be at
    // least 9 x 15 ms.
    assert!(st.first_stall >= Duration::from_millis(15), "{st:?}");
    assert!(
        st.stall_after_warmup() < Duration::from_millis(60),
        "{st:?}"
    );
    assert!(st.read_time >= Duration::from_millis(150), "{st:?}");
}

#[test]
fn dropping_a_loader_mid_run_stops_its_reader() {
    let f = files(2, 10, 64, 13);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 4, 1000));
    let mut l = Loader::new(LoaderConfig::new(0, 1), src, reader(&f)).unwrap();
    let b = l.next().unwrap().unwrap();
    let t = Instant::now();
    drop(l);
    assert!(t.elapsed() < Duration::from_secs(2));
    // The batch outlives the loader.
    assert_eq!(b.bytes(), &expected(&f, b.reads())[..]);
}

#[test]
fn ring_and_staging_are_registered_and_every_batch_lands_in_registered_memory() {
    let f = files(5, 30, 512, 16);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 16, 12));
    let on = |n: usize| -> Vec<String> {
        f.names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == n || *i == 0)
            .map(|(_, s)| s.clone())
            .collect()
    };
    let (a, sa) = flaky_node(f.dir.path(), "a", on(0));
    let (b, sb) = flaky_node(f.dir.path(), "b", on(1));
    let r = ClusterReader::connect(f.names.clone(), vec![a, b], RetryPolicy::default()).unwrap();
    // Every batch into registered memory: no CRC header fetches (the one
    // per-batch registration each; these bare files have no table anyway).
    let config = LoaderConfig::new(0, 2).prefetch(2).verify_crc(false);
    let mut l = Loader::new(config, src, r).unwrap();
    let mut staged = 0;
    while let Some(b) = l.next() {
        let b = b.unwrap();
        assert_eq!(b.bytes(), &expected(&f, b.reads())[..]);
        staged += b.read_stats().staged_rows;
    }
    drop(l);
    assert!(staged > 0, "the test needs scattered rows");
    for (name, s) in [("a", &sa), ("b", &sb)] {
        let get = |x: &AtomicU64| x.load(Ordering::SeqCst);
        let (reg, unreg) = (get(&s.registers), get(&s.unregisters));
        assert_eq!(
            get(&s.misses),
            0,
            "node {name}: a batch outside registered memory"
        );
        assert_eq!(get(&s.hits), get(&s.batches), "node {name}");
        assert_eq!(get(&s.overlaps), 0, "node {name}: stale registration");
        // 3 ring buffers, then the staging buffer: once, plus once per regrowth
        // (each regrowth unregisters the old one first).
        assert_eq!(
            reg,
            3 + 1 + unreg,
            "node {name}: {reg} registrations, {unreg} removals"
        );
    }
}

/// A two-node reader (partial placement, so some rows are scattered) with
/// the nodes' device modes set before connecting.
/// (`full`: every file on both nodes.)
fn device_reader(f: &Files, modes: [u8; 2], full: bool) -> (ClusterReader, Vec<Arc<Switch>>) {
    let on = |n: usize| -> Vec<String> {
        f.names
            .iter()
            .enumerate()
            .filter(|(i, _)| full || i % 2 == n || *i == 0)
            .map(|(_, s)| s.clone())
            .collect()
    };
    let (a, sa) = flaky_node(f.dir.path(), "a", on(0));
    let (b, sb) = flaky_node(f.dir.path(), "b", on(1));
    sa.device_mode.store(modes[0], Ordering::SeqCst);
    sb.device_mode.store(modes[1], Ordering::SeqCst);
    let policy = RetryPolicy {
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    let r = ClusterReader::connect(f.names.clone(), vec![a, b], policy).unwrap();
    (r, vec![sa, sb])
}

fn device_loader(
    f: &Files,
    modes: [u8; 2],
    steps: u64,
) -> (Loader, Vec<Arc<Switch>>, Arc<DeviceCounters>) {
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(f, 16, steps));
    let (r, sw) = device_reader(f, modes, false);
    let counters = Arc::new(DeviceCounters::default());
    let alloc = Arc::new(FakeDeviceAllocator {
        dmabuf: true,
        counters: counters.clone(),
    });
    let l = Loader::with_allocator(LoaderConfig::new(0, 2), src, r, alloc).unwrap();
    (l, sw, counters)
}

fn device_bytes(b: &Batch) -> Vec<u8> {
    let buf = b.buffer().unwrap().backend().unwrap();
    let fake = buf.downcast_ref::<FakeDeviceBuffer>().unwrap();
    let n = b.reads().len() * 512;
    fake.device_bytes()[..n].to_vec()
}

#[test]
fn gpudirect_fills_device_memory_directly_when_every_node_accepts() {
    let f = files(5, 30, 512, 21);
    let (mut l, sw, counters) = device_loader(&f, [2, 2], 8);
    // dmabuf (the first region offered) registered with both nodes for all 3 buffers.
    for s in &sw {
        assert_eq!(s.device_live.load(Ordering::SeqCst), 3);
        assert_eq!(s.device_dmabuf.load(Ordering::SeqCst), 3);
    }
    let mut n = 0;
    while let Some(b) = l.next() {
        let b = b.unwrap();
        assert!(b.filled_directly(), "step {}", b.step());
        assert!(b.bytes().is_empty(), "no stale host view of a device batch");
        assert_eq!(
            device_bytes(&b),
            expected(&f, b.reads()),
            "step {}",
            b.step()
        );
        assert_eq!(
            b.read_stats().staged_rows,
            0,
            "no staging on the device path"
        );
        n += 1;
    }
    assert_eq!(n, 8);
    assert_eq!(l.stats().direct_steps, 8);
    assert_eq!(counters.direct.load(Ordering::SeqCst), 8);
    assert_eq!(counters.begun.load(Ordering::SeqCst), 8);
    assert_eq!(counters.bounced.load(Ordering::SeqCst), 0, "no host copy");
    let device_batches: u64 = sw
        .iter()
        .map(|s| s.device_batches.load(Ordering::SeqCst))
        .sum();
    assert!(device_batches >= 8, "{device_batches}");
    drop(l);
    // The transports (and their device registrations) are gone with the loader.
    for s in &sw {
        assert_eq!(s.device_live.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn gpudirect_dmabuf_refused_by_one_node_falls_back_to_peer_memory() {
    let f = files(5, 30, 512, 22);
    let (mut l, sw, counters) = device_loader(&f, [2, 1], 6);
    // a accepted dmabuf for the first buffer, b refused: a's was withdrawn, and
    // peer memory (the next region) was registered with both for every buffer.
    for s in &sw {
        assert_eq!(s.device_live.load(Ordering::SeqCst), 3);
    }
    assert_eq!(sw[0].device_dmabuf.load(Ordering::SeqCst), 1);
    assert_eq!(sw[1].device_dmabuf.load(Ordering::SeqCst), 0);
    while let Some(b) = l.next() {
        let b = b.unwrap();
        assert!(b.filled_directly());
        assert_eq!(device_bytes(&b), expected(&f, b.reads()));
    }
    assert_eq!(l.stats().direct_steps, 6);
    assert_eq!(counters.bounced.load(Ordering::SeqCst), 0);
}

#[test]
fn gpudirect_refused_everywhere_uses_the_host_bounce_path() {
    let f = files(5, 30, 512, 23);
    let (mut l, sw, counters) = device_loader(&f, [2, 0], 6);
    for s in &sw {
        assert_eq!(
            s.device_live.load(Ordering::SeqCst),
            0,
            "all-or-none registration"
        );
    }
    while let Some(b) = l.next() {
        let b = b.unwrap();
        assert!(!b.filled_directly());
        assert_eq!(b.bytes(), &expected(&f, b.reads())[..]);
        assert_eq!(device_bytes(&b), expected(&f, b.reads()), "bounce copy");
    }
    assert_eq!(l.stats().direct_steps, 0);
    assert_eq!(counters.bounced.load(Ordering::SeqCst), 6);
    assert_eq!(counters.direct.load(Ordering::SeqCst), 0);
}

#[test]
fn gpudirect_node_reconnecting_without_device_memory_moves_steps_to_host() {
    let f = files(5, 30, 512, 24);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 16, 40));
    let (mut r, sw) = device_reader(&f, [2, 2], true);
    let mut buf = FakeDeviceAllocator {
        dmabuf: false,
        counters: Arc::new(DeviceCounters::default()),
    }
    .allocate(8 * 512)
    .unwrap();
    let region = buf.device_regions()[0];
    r.register_device(&region).unwrap();
    let mut rows = Vec::new();
    let mut step = 0;
    let mut next = |r: &mut ClusterReader, buf: &mut Box<dyn HostBuffer>| {
        rows.clear();
        src.block(step, 0, 2, &mut rows).unwrap();
        let (_, direct) = read_into(r, step, &rows, 512, buf.as_mut()).unwrap();
        let dev = buf
            .backend()
            .unwrap()
            .downcast_ref::<FakeDeviceBuffer>()
            .unwrap()
            .device_bytes();
        assert_eq!(dev, expected(&f, &rows), "step {step}");
        step += 1;
        direct
    };
    assert!(next(&mut r, &mut buf));
    // a fails; it comes back refusing device memory.
    sw[0].down.store(true, Ordering::SeqCst);
    assert!(next(&mut r, &mut buf), "b serves everything, directly");
    sw[0].device_mode.store(0, Ordering::SeqCst);
    sw[0].down.store(false, Ordering::SeqCst);
    let t = Instant::now();
    let mut host_steps = 0;
    while r.live_nodes() != vec![true, true] || host_steps < 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "a never reconnected");
        std::thread::sleep(Duration::from_millis(5));
        if !next(&mut r, &mut buf) {
            host_steps += 1;
        }
    }
    // Withdrawn from every node; later steps go through host memory.
    assert!(!r.has_device(&region));
    for s in &sw {
        assert_eq!(s.device_live.load(Ordering::SeqCst), 0);
    }
    assert!(!next(&mut r, &mut buf));
}

#[test]
fn bad_configs_are_refused() {
    let f = files(2, 10, 64, 14);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 6, 5));
    let e = Loader::new(LoaderConfig::new(0, 4), src.clone(), reader(&f)).unwrap_err();
    assert!(e.to_string().contains("does not divide"), "{e}");
    let e = Loader::new(
        LoaderConfig::new(0, 3).start_step(6),
        src.clone(),
        reader(&f),
    )
    .unwrap_err();
    assert!(e.to_string().contains("start step 6"), "{e}");
    let mut l = Loader::new(LoaderConfig::new(2, 3).start_step(5), src, reader(&f)).unwrap();
    assert!(l.next().is_none());
}

/// The trainer boundary: a consumer (here a second thread, like a GPU
/// stream finishing late) keeps every micro-batch and a clone of it for
/// a while; the loader moves on only as slots are released, never
/// writes a slot under a live view, and releases each slot once, after
/// the last view, with the consumer's streams.
#[test]
fn held_batches_stay_valid_after_the_loader_moves_on() {
    use crate::testutil::{RecordingAllocator, SlotEvent};
    let f = files(5, 30, 512, 31);
    let steps = 8u64; // 4x the ring of 2
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 16, steps));
    let alloc = RecordingAllocator::default();
    let cfg = LoaderConfig::new(1, 2).prefetch(1).accumulation(2);
    let mut l = Loader::with_allocator(cfg, src, reader(&f), Arc::new(alloc.clone())).unwrap();
    assert_eq!(l.micro_batch(), 4);
    let (tx, rx) = mpsc::channel::<(Batch, Vec<u8>)>();
    let holder = {
        let alloc = alloc.clone();
        std::thread::spawn(move || {
            let mut checked = 0;
            let mut held: Vec<(Batch, Vec<u8>, Instant)> = Vec::new();
            let mut open = true;
            while open || !held.is_empty() {
                match rx.recv_timeout(Duration::from_millis(5)) {
                    Ok((b, want)) => {
                        b.record_stream(1000 + b.step());
                        held.push((b.clone(), want.clone(), Instant::now()));
                        held.push((b, want, Instant::now()));
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                // Each view lives 40 ms; then it is checked byte for byte
                // (the loader has read later steps meanwhile) and dropped.
                while let Some(i) = held
                    .iter()
                    .position(|(_, _, t)| t.elapsed() > Duration::from_millis(40))
                {
                    let (b, want, _) = held.remove(i);
                    assert_eq!(
                        b.bytes(),
                        &want[..],
                        "step {} micro {}",
                        b.step(),
                        b.micro()
                    );
                    checked += 1;
                    if b.views() == 1 {
                        alloc.note(SlotEvent::Dropping {
                            buf: alloc.id_of(&b),
                            step: b.step(),
                        });
                    }
                }
            }
            checked
        })
    };
    let mut order = Vec::new();
    while let Some(b) = l.next() {
        let b = b.unwrap();
        order.push((b.step(), b.micro()));
        let want = expected(&f, b.reads());
        assert_eq!(b.bytes(), &want[..]);
        tx.send((b, want)).unwrap();
    }
    drop(tx);
    assert_eq!(holder.join().unwrap(), 2 * 2 * steps as usize);
    let want_order: Vec<(u64, usize)> = (0..steps).flat_map(|s| [(s, 0), (s, 1)]).collect();
    assert_eq!(order, want_order);
    assert!(
        l.stats().stall_after_warmup() > Duration::from_millis(40),
        "{:?}",
        l.stats()
    );
    drop(l);
    // Per buffer: fill, (consumer drops its last view), release with the
    // consumer's stream, fill, ... never two fills without a release.
    let events = alloc.events();
    for buf in 0..2 {
        let mine: Vec<&SlotEvent> = events
            .iter()
            .filter(|e| match e {
                SlotEvent::Filled { buf: b }
                | SlotEvent::Released { buf: b, .. }
                | SlotEvent::Dropping { buf: b, .. } => *b == buf,
            })
            .collect();
        assert!(mine.len() >= 6, "buffer {buf}: {mine:?}");
        for w in mine.chunks(3) {
            assert!(
                matches!(w[0], SlotEvent::Filled { .. }),
                "buffer {buf}: {mine:?}"
            );
            let SlotEvent::Dropping { step, .. } = w[1] else {
                panic!("buffer {buf}: {mine:?}");
            };
            assert_eq!(
                w[2],
                &SlotEvent::Released {
                    buf,
                    streams: vec![1000 + step]
                },
                "buffer {buf}: {mine:?}"
            );
        }
    }
}

#[test]
fn a_consumer_holding_the_whole_ring_gets_an_error_not_a_hang() {
    let f = files(2, 10, 64, 32);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 4, 10));
    let cfg = LoaderConfig::new(0, 1)
        .prefetch(1)
        .ring_wait(Duration::from_millis(300));
    let mut l = Loader::new(cfg, src, reader(&f)).unwrap();
    let a = l.next().unwrap().unwrap();
    let b = l.next().unwrap().unwrap();
    let t = Instant::now();
    let e = l.next().unwrap().unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(
            e,
            LoaderError::RingHeld {
                step: 2,
                ring: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("holds all 2 step buffers"), "{e}");
    // What the consumer holds is intact.
    assert_eq!(a.bytes(), &expected(&f, a.reads())[..]);
    assert_eq!(b.bytes(), &expected(&f, b.reads())[..]);
}

#[test]
fn micro_batches_cover_the_block_in_order_and_resume_mid_step() {
    let f = files(3, 40, 256, 33);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 24, 6));
    // dp size 2, accumulation 3: 12 rows per rank per step, micro-batches of 4.
    // A ring of 7 holds the whole run, so every batch can be kept.
    let cfg = LoaderConfig::new(1, 2).accumulation(3).prefetch(6);
    let l = Loader::new(cfg.clone(), src.clone(), reader(&f)).unwrap();
    let all: Vec<Batch> = l.map(|b| b.unwrap()).collect::<Vec<_>>();
    assert_eq!(all.len(), 18);
    for (i, b) in all.iter().enumerate() {
        assert_eq!((b.step(), b.micro()), ((i / 3) as u64, i % 3));
        assert_eq!(b.shape(), [4, 64]);
        assert_eq!(b.micro_batches(), 3);
        let mut block = Vec::new();
        src.block(b.step(), 1, 2, &mut block).unwrap();
        assert_eq!(b.reads(), &block[b.block_rows()]);
        assert_eq!(b.bytes(), &expected(&f, b.reads())[..]);
    }
    // Resume at step 2, micro-batch 2: exactly the rest of the run.
    let mut l = Loader::new(cfg.start_step(2).start_micro(2), src.clone(), reader(&f)).unwrap();
    assert_eq!(l.position(), (2, 2));
    let rest: Vec<Batch> = l.by_ref().map(|b| b.unwrap()).collect();
    assert_eq!(rest.len(), 18 - 8);
    for (b, want) in rest.iter().zip(&all[8..]) {
        assert_eq!((b.step(), b.micro()), (want.step(), want.micro()));
        assert_eq!(b.bytes(), want.bytes());
    }
    assert_eq!(l.position(), (6, 0));
    let e = Loader::new(LoaderConfig::new(0, 2).accumulation(5), src, reader(&f)).unwrap_err();
    assert!(e.to_string().contains("does not split into 5"), "{e}");
}

/// Issue 12 item 10: the loader's per-node counters add up to the run.
#[test]
fn loader_node_stats_add_up_to_the_run() {
    let f = files(3, 20, 256, 17);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 8, 6));
    let (a, _) = flaky_node(f.dir.path(), "a", f.names.clone());
    let (b, _) = flaky_node(f.dir.path(), "b", f.names.clone());
    let r = ClusterReader::connect(f.names.clone(), vec![a, b], RetryPolicy::default()).unwrap();
    let mut l = Loader::new(LoaderConfig::new(0, 1), src, r).unwrap();
    let mut rows = 0u64;
    while let Some(b) = l.next() {
        let b = b.unwrap();
        assert_eq!(b.bytes(), &expected(&f, b.reads())[..]);
        rows += b.reads().len() as u64;
    }
    assert_eq!(rows, 48);
    let ns = l.node_stats();
    assert_eq!(ns.len(), 2);
    assert_eq!(ns.iter().map(|n| n.reads).sum::<u64>(), 48);
    assert_eq!(ns.iter().map(|n| n.bytes).sum::<u64>(), 48 * 256);
    assert!(ns.iter().all(|n| n.reads == 24 && n.errors.total() == 0));
    assert_eq!(l.stats().crc_mismatches, 0);
}

#[test]
fn doc_bounds_are_computed_by_the_reader_for_every_micro_batch() {
    let f = files(5, 30, 512, 31);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 16, 4));
    // An EOD id that occurs in the data: a token of the first batch.
    let mut plain = Loader::new(LoaderConfig::new(0, 2), src.clone(), reader(&f)).unwrap();
    let first = plain.next().unwrap().unwrap();
    assert!(first.doc_bounds().is_none(), "off unless configured");
    let eod = first.tokens_u32().unwrap()[5];
    drop((first, plain));
    let config = LoaderConfig::new(0, 2)
        .accumulation(2)
        .doc_boundaries(eod, 127);
    let mut l = Loader::new(config, src, reader(&f)).unwrap();
    let (mut n, mut split) = (0, 0);
    while let Some(b) = l.next() {
        let b = b.unwrap();
        let d = b.doc_bounds().expect("configured");
        let want = DocBounds::compute(b.bytes(), Dtype::U32, 4, 128, 127, eod).unwrap();
        assert_eq!(d, &want, "step {} micro {}", b.step(), b.micro());
        assert_eq!(d.cu_seqlens().len(), 4 * 127 + 1);
        split += usize::from(d.num_docs() > 4);
        n += 1;
    }
    assert_eq!(n, 8);
    assert!(split > 0, "the EOD id splits some row");
    // Boundaries over more tokens than a row, or none, are refused.
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 16, 4));
    for bad in [0, 129] {
        let c = LoaderConfig::new(0, 2).doc_boundaries(1, bad);
        let e = Loader::new(c, src.clone(), reader(&f)).unwrap_err();
        assert!(e.to_string().contains("document boundaries"), "{e}");
    }
}

#[test]
fn doc_bounds_of_a_direct_step_need_a_buffer_that_copies_back() {
    let f = files(5, 30, 512, 41);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 16, 2));
    let (r, _sw) = device_reader(&f, [2, 2], false);
    let alloc = Arc::new(FakeDeviceAllocator {
        dmabuf: true,
        counters: Arc::new(DeviceCounters::default()),
    });
    let config = LoaderConfig::new(0, 2).doc_boundaries(7, 128);
    let mut l = Loader::with_allocator(config, src, r, alloc).unwrap();
    let e = l.next().unwrap().unwrap_err();
    assert!(e.to_string().contains("cannot copy a step"), "{e}");
}

#[test]
fn doc_bounds_of_a_direct_step_come_from_its_device_bytes() {
    let f = files(5, 30, 512, 43);
    let src: Arc<dyn BlockSource> = Arc::new(RandomBlocks::new(&f, 16, 3));
    let (r, _sw) = device_reader(&f, [2, 2], false);
    let counters = Arc::new(DeviceCounters::default());
    counters.can_copy_back.store(true, Ordering::SeqCst);
    let alloc = Arc::new(FakeDeviceAllocator {
        dmabuf: true,
        counters: counters.clone(),
    });
    // The EOD id: a token of the data, so some row splits.
    let mut rows = Vec::new();
    RandomBlocks::new(&f, 16, 3)
        .block(0, 0, 2, &mut rows)
        .unwrap();
    let eod = u32::from_le_bytes(expected(&f, &rows)[8..12].try_into().unwrap());
    let config = LoaderConfig::new(0, 2).doc_boundaries(eod, 128);
    let mut l = Loader::with_allocator(config, src, r, alloc).unwrap();
    let mut n = 0;
    while let Some(b) = l.next() {
        let b = b.unwrap();
        assert!(b.filled_directly());
        let want = DocBounds::compute(&device_bytes(&b), Dtype::U32, 8, 128, 128, eod).unwrap();
        assert_eq!(b.doc_bounds(), Some(&want), "step {}", b.step());
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(counters.copied_back.load(Ordering::SeqCst), 3);
}
