use std::collections::VecDeque;
use std::sync::Arc;

use proptest::prelude::*;

use crate::*;

fn region(id: u32, name: &str, len: u64) -> RegionInfo {
    RegionInfo {
        id: RegionId(id),
        name: name.into(),
        len,
        addr: 0,
        rkey: 0,
    }
}

fn qp(n: u32) -> QpEndpoint {
    QpEndpoint {
        qp_num: n,
        psn: n * 3,
        gid: [n as u8; 16],
        lid: 7,
        mtu: 5,
        rd_atomic: (n * 5) as u8,
    }
}

fn samples() -> Vec<Frame> {
    let cc = ClientCounters {
        client: "rank0".into(),
        peer: "127.0.0.1:5555".into(),
        batches: 1,
        reads: 2,
        bytes: 3,
    };
    let nc = NodeCounters {
        uptime_ms: 9,
        connections_total: 8,
        connections_open: 7,
        refused: 6,
        batches: 5,
        reads: 4,
        bytes: 3,
        errors: 2,
    };
    vec![
        Frame::Hello(Hello {
            nonce: [5; NONCE_LEN],
            auth: true,
            ..hello("rank0", Some("abcd"))
        }),
        Frame::Hello(hello("", None)),
        Frame::Challenge {
            nonce: [0xa5; NONCE_LEN],
        },
        Frame::Proof {
            proof: [0x5a; PROOF_LEN],
        },
        Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            node: "node-a".into(),
            fingerprint: "ff00".into(),
            regions: vec![
                region(0, "web/part-00000.seq", 1 << 40),
                region(1, "é.seq", 0),
            ],
            proof: Some([3; PROOF_LEN]),
        }),
        Frame::Refused {
            reason: "no".into(),
        },
        Frame::ReadBatch(ReadBatch {
            id: u64::MAX,
            reads: vec![
                WireRead {
                    region: RegionId(3),
                    offset: 1 << 33,
                    len: 16384,
                },
                WireRead {
                    region: RegionId(0),
                    offset: 0,
                    len: 0,
                },
            ],
        }),
        Frame::ReadData { id: 4, total: 100 },
        Frame::Manifests,
        Frame::ManifestsOk {
            manifests: vec![
                "{\"name\": \"web\"}".into(),
                String::new(),
                "é".repeat(70_000),
            ],
        },
        Frame::Health,
        Frame::HealthOk(HealthOk {
            node: nc,
            you: cc.clone(),
        }),
        Frame::Stats,
        Frame::StatsOk(StatsOk {
            node: nc,
            clients: vec![cc.clone(), cc],
        }),
        Frame::Error {
            code: ErrorCode::OUT_OF_BOUNDS,
            message: "bad".into(),
        },
        Frame::VerbsConnect(VerbsConnect {
            qps: vec![qp(1), qp(2)],
            device: "rxe0".into(),
            rail: 1,
            replaces: vec![0x11, 0x22],
        }),
        Frame::VerbsAccept(VerbsAccept {
            qps: vec![qp(9)],
            regions: vec![RegionKey {
                id: RegionId(0),
                addr: 0x7f00_0000_0000,
                rkey: 0x1234,
            }],
        }),
    ]
}

#[test]
fn round_trip_every_frame() {
    let mut stream = Vec::new();
    for f in samples() {
        let b = f.to_bytes();
        match decode(&b, &Limits::DEFAULT).unwrap() {
            Decoded::Frame { frame, consumed } => {
                assert_eq!(frame, f);
                assert_eq!(consumed, b.len());
            }
            d => panic!("{d:?}"),
        }
        // Every strict prefix needs more bytes, never errors.
        for cut in 0..b.len() {
            assert!(matches!(
                decode(&b[..cut], &Limits::DEFAULT).unwrap(),
                Decoded::NeedMore { .. }
            ));
        }
        stream.extend_from_slice(&b);
    }
    // A stream of frames fed one byte at a time.
    let mut r = FrameReader::new(Limits::DEFAULT);
    let mut got = Vec::new();
    for byte in stream {
        r.feed(&[byte]);
        while let Some(f) = r.next_frame().unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, samples());
}

/// A version-1 endpoint (27 bytes, no read depth) does not decode as a
/// version-2 one: the count check and the exact-body rule refuse it.
#[test]
fn version_1_endpoints_refused() {
    const { assert!(PROTOCOL_VERSION >= 2) };
    assert_eq!(QpEndpoint::ENCODED_LEN, 28);
    let f = Frame::VerbsConnect(VerbsConnect {
        qps: vec![qp(1), qp(2)],
        device: "rxe0".into(),
        rail: 0,
        replaces: vec![],
    });
    let b = f.to_bytes();
    // The wire layout of one endpoint: qpn, psn, gid, lid, mtu, depth.
    let ep = &b[HEADER_LEN + 4..HEADER_LEN + 4 + QpEndpoint::ENCODED_LEN];
    assert_eq!(&ep[..4], &1u32.to_le_bytes());
    assert_eq!(&ep[4..8], &3u32.to_le_bytes());
    assert_eq!(&ep[8..24], &[1u8; 16]);
    assert_eq!(&ep[24..26], &7u16.to_le_bytes());
    assert_eq!((ep[26], ep[27]), (5, 5));
    // Drop every endpoint's last byte: what a version-1 peer would send.
    let mut body = b[HEADER_LEN..HEADER_LEN + 4].to_vec();
    for i in 0..2 {
        let at = HEADER_LEN + 4 + i * QpEndpoint::ENCODED_LEN;
        body.extend_from_slice(&b[at..at + QpEndpoint::ENCODED_LEN - 1]);
    }
    body.extend_from_slice(&b[HEADER_LEN + 4 + 2 * QpEndpoint::ENCODED_LEN..]);
    let mut v1 = (body.len() as u32).to_le_bytes().to_vec();
    v1.push(b[4]);
    v1.extend_from_slice(&body);
    assert!(decode(&v1, &Limits::DEFAULT).is_err());
    // A count promising more endpoints than the body can hold is refused
    // before anything is allocated.
    let mut hostile = b.clone();
    hostile[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&3u32.to_le_bytes());
    assert!(matches!(
        decode(&hostile, &Limits::DEFAULT),
        Err(WireError::Truncated {
            what: "queue pair count",
            ..
        })
    ));
}

/// Version 4's `VerbsConnect` tail: the rail and the replaced QP numbers
/// cross the wire; a version-3 body (no tail) and a count of replaced QPs
/// the body cannot hold are refused.
#[test]
fn verbs_connect_rail_and_replaces() {
    let f = Frame::VerbsConnect(VerbsConnect {
        qps: vec![qp(1)],
        device: "rxe1".into(),
        rail: 1,
        replaces: vec![0x33, 0x44],
    });
    let b = f.to_bytes();
    let tail = &b[b.len() - 16..];
    assert_eq!(&tail[..4], &1u32.to_le_bytes(), "rail");
    assert_eq!(&tail[4..8], &2u32.to_le_bytes(), "replaced count");
    assert_eq!(&tail[8..12], &0x33u32.to_le_bytes());
    assert_eq!(&tail[12..], &0x44u32.to_le_bytes());
    assert_eq!(
        decode(&b, &Limits::DEFAULT).unwrap(),
        Decoded::Frame {
            frame: f.clone(),
            consumed: b.len()
        }
    );
    // What a version-3 peer sends: the same frame without the tail.
    let mut v3 = b[..b.len() - 16].to_vec();
    let body_len = (v3.len() - HEADER_LEN) as u32;
    v3[..4].copy_from_slice(&body_len.to_le_bytes());
    assert!(decode(&v3, &Limits::DEFAULT).is_err());
    // A replaced count larger than the body: refused before allocating.
    let mut hostile = b.clone();
    let at = b.len() - 12;
    hostile[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
    assert!(matches!(
        decode(&hostile, &Limits::DEFAULT),
        Err(WireError::Truncated {
            what: "replaced QP count",
            ..
        })
    ));
}

#[test]
fn limits_enforced() {
    let limits = Limits {
        max_frame: 1000,
        max_reads: 4,
        max_batch_bytes: 100,
    };
    let read = |len| WireRead {
        region: RegionId(0),
        offset: 0,
        len,
    };
    let b = Frame::ReadBatch(ReadBatch {
        id: 1,
        reads: vec![read(1); 5],
    });
    assert!(matches!(
        decode(&b.to_bytes(), &limits),
        Err(WireError::TooLarge {
            what: "read count",
            ..
        })
    ));
    let b = Frame::ReadBatch(ReadBatch {
        id: 1,
        reads: vec![read(60), read(41)],
    });
    assert!(matches!(
        decode(&b.to_bytes(), &limits),
        Err(WireError::TooLarge {
            what: "batch bytes",
            ..
        })
    ));
    // An oversized header fails before its body arrives.
    let mut h = 5000u32.to_le_bytes().to_vec();
    h.push(1);
    assert!(matches!(
        decode(&h, &limits),
        Err(WireError::TooLarge {
            what: "frame length",
            ..
        })
    ));
    // Unknown kind.
    assert_eq!(
        decode(&[0, 0, 0, 0, 99], &limits),
        Err(WireError::UnknownKind(99))
    );
    // Trailing bytes.
    let mut t = Frame::Health.to_bytes();
    t[0] = 1;
    t.push(0);
    assert!(matches!(
        decode(&t, &limits),
        Err(WireError::Trailing { .. })
    ));
    // A hostile count larger than the body is refused without allocating.
    let mut w = Vec::new();
    w.extend_from_slice(&14u32.to_le_bytes());
    w.push(2); // Welcome
    w.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    w.extend_from_slice(&[0, 0, 0, 0]); // empty node, empty fingerprint
    w.extend_from_slice(&u32::MAX.to_le_bytes());
    w.extend_from_slice(&[0; 4]);
    assert!(matches!(
        decode(&w, &limits),
        Err(WireError::Truncated {
            what: "region count",
            ..
        })
    ));
    // Oversized string.
    let long = "x".repeat(MAX_STRING + 1);
    let f = Frame::Refused { reason: long };
    assert!(f.encoded_checked(&Limits::DEFAULT).is_err());
    // Bad UTF-8 and bad option tag.
    let mut u = Frame::Refused {
        reason: "ab".into(),
    }
    .to_bytes();
    u[7] = 0xff;
    assert!(matches!(
        decode(&u, &limits),
        Err(WireError::BadUtf8 { .. })
    ));
    for back in [1, 2] {
        // The fingerprint's option tag, the auth flag.
        let mut o = Frame::Hello(hello("c", None)).to_bytes();
        let tag = o.len() - back;
        o[tag] = 7;
        assert!(matches!(
            decode(&o, &limits),
            Err(WireError::BadValue { .. })
        ));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes never panic the decoder, and a successful decode
    /// re-encodes to the same bytes.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Decoded::Frame { frame, consumed }) = decode(&bytes, &Limits::DEFAULT) {
            prop_assert_eq!(frame.to_bytes(), bytes[..consumed].to_vec());
        }
    }

    /// A valid header with a random body never panics the decoder or the
    /// node's state machine (before and after a handshake).
    #[test]
    fn random_bodies_never_panic(kind in 1u8..=14, body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut b = (body.len() as u32).to_le_bytes().to_vec();
        b.push(kind);
        b.extend_from_slice(&body);
        if let Ok(Decoded::Frame { frame, consumed }) = decode(&b, &Limits::DEFAULT) {
            prop_assert_eq!(consumed, b.len());
            prop_assert_eq!(frame.to_bytes(), b.clone());
        }
        let mut conn = ServerConn::new(policy(None), [0; NONCE_LEN]);
        conn.feed(&Frame::Hello(hello("c", None)).to_bytes());
        conn.feed(&b);
        let mut n = 0;
        while conn.poll().is_some() {
            n += 1;
            prop_assert!(n < 10);
        }
    }

    /// Valid frames with random mutations never panic.
    #[test]
    fn mutated_frames_never_panic(which in 0usize..64, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let all = samples();
        let mut b = all[which % all.len()].to_bytes();
        for (pos, val) in flips {
            let i = pos % b.len();
            b[i] = val;
        }
        let _ = decode(&b, &Limits::DEFAULT);
        let mut conn = ServerConn::new(policy(Some("s")), [1; NONCE_LEN]);
        conn.feed(&b);
        while conn.poll().is_some() {}
    }

    /// Random verbs endpoints round-trip in both verbs frames, every field
    /// (the read depth included) at its encoded size; any cut of the body
    /// is refused, never misread.
    #[test]
    fn verbs_endpoints_round_trip(
        eps in proptest::collection::vec(
            (any::<u32>(), any::<u32>(), any::<[u8; 16]>(), any::<u16>(), any::<u8>(), any::<u8>()),
            0..40,
        ),
        cut in any::<usize>(),
    ) {
        let qps: Vec<QpEndpoint> = eps
            .into_iter()
            .map(|(qp_num, psn, gid, lid, mtu, rd_atomic)| QpEndpoint { qp_num, psn, gid, lid, mtu, rd_atomic })
            .collect();
        let n = qps.len();
        for f in [
            Frame::VerbsConnect(VerbsConnect { qps: qps.clone(), device: "mlx5_0".into(), rail: 3, replaces: vec![7; n % 3] }),
            Frame::VerbsAccept(VerbsAccept { qps: qps.clone(), regions: vec![] }),
        ] {
            let b = f.to_bytes();
            // header + count + endpoints + (device string | region count)
            prop_assert_eq!(b.len(), HEADER_LEN + 4 + n * QpEndpoint::ENCODED_LEN + if matches!(f, Frame::VerbsConnect(_)) { 2 + 6 + 4 + 4 + 4 * (n % 3) } else { 4 });
            prop_assert_eq!(decode(&b, &Limits::DEFAULT).unwrap(), Decoded::Frame { frame: f.clone(), consumed: b.len() });
            // The same frame with a shorter body (its length field fixed up) is an error.
            let body_len = b.len() - HEADER_LEN;
            let keep = cut % body_len.max(1);
            if keep < body_len {
                let mut short = (keep as u32).to_le_bytes().to_vec();
                short.push(b[4]);
                short.extend_from_slice(&b[HEADER_LEN..HEADER_LEN + keep]);
                prop_assert!(decode(&short, &Limits::DEFAULT).is_err());
            }
        }
    }

    /// Random read batches round-trip.
    #[test]
    fn batches_round_trip(id in any::<u64>(), reads in proptest::collection::vec((any::<u32>(), any::<u64>(), 0u32..1<<20), 0..200)) {
        let f = Frame::ReadBatch(ReadBatch {
            id,
            reads: reads.into_iter().map(|(r, o, l)| WireRead { region: RegionId(r), offset: o, len: l }).collect(),
        });
        let b = f.to_bytes();
        prop_assert_eq!(decode(&b, &Limits::DEFAULT).unwrap(), Decoded::Frame { frame: f, consumed: b.len() });
    }
}

pub(crate) fn policy(secret: Option<&str>) -> Arc<ServerPolicy> {
    Arc::new(ServerPolicy {
        node: "node-a".into(),
        fingerprint: "fp1".into(),
        secret: secret.map(Into::into),
        regions: vec![region(0, "a.seq", 100), region(1, "b.seq", 50)],
        limits: Limits::DEFAULT,
    })
}

/// In-memory client/server pair: bytes move through queues, delivered in
/// chunks of `chunk` bytes to exercise partial frames.
pub(crate) struct Pair {
    pub(crate) server: ServerConn,
    to_server: VecDeque<u8>,
    client_rx: FrameReader,
    pub(crate) closed: Option<String>,
    chunk: usize,
}

impl Pair {
    pub(crate) fn new(secret: Option<&str>, chunk: usize) -> Self {
        Pair {
            server: ServerConn::new(policy(secret), [9; NONCE_LEN]),
            to_server: VecDeque::new(),
            client_rx: FrameReader::new(Limits::DEFAULT),
            closed: None,
            chunk,
        }
    }

    /// Runs a client handshake to its end.
    pub(crate) fn handshake(&mut self, c: &mut ClientHandshake) -> Result<Welcome, HandshakeError> {
        self.client_send(&Frame::Hello(c.hello().clone()));
        loop {
            let got = self.drive(&mut Vec::new());
            assert_eq!(got.len(), 1, "{got:?}");
            match c.on_frame(got[0].clone())? {
                ClientStep::Send(f) => self.client_send(&f),
                ClientStep::Done(w) => return Ok(w),
            }
        }
    }

    pub(crate) fn client_send(&mut self, f: &Frame) {
        self.to_server.extend(f.to_bytes());
    }

    /// Moves all queued bytes to the server and runs its actions; returns
    /// the frames the client received (ReadData payloads as `Refused`-free
    /// raw bytes appended to `raw`).
    pub(crate) fn drive(&mut self, raw: &mut Vec<u8>) -> Vec<Frame> {
        let mut out = Vec::new();
        while !self.to_server.is_empty() && self.closed.is_none() {
            let n = self.chunk.min(self.to_server.len());
            let chunk: Vec<u8> = self.to_server.drain(..n).collect();
            self.server.feed(&chunk);
            while let Some(a) = self.server.poll() {
                match a {
                    ServerAction::Send(f) => self.client_rx.feed(&f.to_bytes()),
                    ServerAction::ServeReads { batch, total } => {
                        let mut bytes = Frame::ReadData {
                            id: batch.id,
                            total,
                        }
                        .to_bytes();
                        for r in &batch.reads {
                            // region content: byte i of region r is (i + r*7) as u8
                            bytes.extend(
                                (r.offset..r.offset + u64::from(r.len))
                                    .map(|i| (i + u64::from(r.region.0) * 7) as u8),
                            );
                        }
                        self.client_rx.feed(&bytes);
                    }
                    ServerAction::Health => self.client_rx.feed(
                        &Frame::HealthOk(HealthOk {
                            node: NodeCounters::default(),
                            you: ClientCounters {
                                client: self.server.client().unwrap().into(),
                                peer: "mem".into(),
                                batches: 0,
                                reads: 0,
                                bytes: 0,
                            },
                        })
                        .to_bytes(),
                    ),
                    ServerAction::Manifests => self.client_rx.feed(
                        &Frame::ManifestsOk {
                            manifests: vec!["m1".into(), "m2".into()],
                        }
                        .to_bytes(),
                    ),
                    ServerAction::Stats | ServerAction::VerbsConnect(_) => {
                        self.client_rx.feed(
                            &Frame::Error {
                                code: ErrorCode::NOT_SUPPORTED,
                                message: "not here".into(),
                            }
                            .to_bytes(),
                        );
                    }
                    ServerAction::Close { frame, reason } => {
                        if let Some(f) = frame {
                            self.client_rx.feed(&f.to_bytes());
                        }
                        self.closed = Some(reason);
                    }
                }
            }
        }
        while let Some(f) = self.client_rx.next_frame().unwrap() {
            if let Frame::ReadData { total, .. } = f {
                raw.extend_from_slice(self.client_rx.take_raw(total as usize));
            }
            out.push(f);
        }
        out
    }
}

#[test]
fn pair_handshake_and_reads() {
    for chunk in [1, 3, 1000] {
        let mut p = Pair::new(Some("s"), chunk);
        let mut c = ClientHandshake::new("rank0", Some(b"s"), Some("fp1"), [chunk as u8; 32]);
        let w = p.handshake(&mut c).unwrap();
        let mut raw = Vec::new();
        assert_eq!(w.node, "node-a");
        assert!(w.proof.is_some());
        assert_eq!(w.regions.len(), 2);
        assert_eq!(p.server.client(), Some("rank0"));

        let batch = ReadBatch {
            id: 42,
            reads: vec![
                WireRead {
                    region: RegionId(1),
                    offset: 10,
                    len: 40,
                },
                WireRead {
                    region: RegionId(0),
                    offset: 0,
                    len: 100,
                },
            ],
        };
        p.client_send(&Frame::ReadBatch(batch));
        p.client_send(&Frame::Health);
        p.client_send(&Frame::Manifests);
        let got = p.drive(&mut raw);
        assert_eq!(got[0], Frame::ReadData { id: 42, total: 140 });
        assert!(matches!(&got[1], Frame::HealthOk(h) if h.you.client == "rank0"));
        assert_eq!(
            got[2],
            Frame::ManifestsOk {
                manifests: vec!["m1".into(), "m2".into()]
            }
        );
        let want: Vec<u8> = (10..50u64)
            .map(|i| (i + 7) as u8)
            .chain((0..100u64).map(|i| i as u8))
            .collect();
        assert_eq!(raw, want);
        assert!(p.closed.is_none());

        // A read past the end of its region closes the connection.
        p.client_send(&Frame::ReadBatch(ReadBatch {
            id: 43,
            reads: vec![WireRead {
                region: RegionId(1),
                offset: 11,
                len: 40,
            }],
        }));
        let got = p.drive(&mut raw);
        assert!(
            matches!(&got[..], [Frame::Error { code: ErrorCode::OUT_OF_BOUNDS, message }] if message.contains("b.seq")),
            "{got:?}"
        );
        assert!(p.closed.is_some());
        assert!(p.server.is_closed());
    }
}

#[test]
fn pair_refusals() {
    // (node secret, client secret, expected fingerprint, wanted message)
    type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            Some("s"),
            None,
            None,
            "requires a shared secret and client \"c\" has none",
        ),
        (Some("s"), Some("t"), None, "wrong shared secret"),
        (Some("s"), Some("ss"), None, "wrong shared secret"),
        (None, Some("s"), None, "node node-a has none configured"),
        (None, None, Some("fp2"), "fingerprint mismatch"),
        (Some("s"), Some("s"), Some("fp2"), "fingerprint mismatch"),
    ];
    for (secret, client_secret, fp, want) in cases {
        let mut p = Pair::new(secret, 2);
        let mut c = ClientHandshake::new("c", client_secret.map(str::as_bytes), fp, [1; 32]);
        let e = p.handshake(&mut c).unwrap_err();
        assert!(
            matches!(&e, HandshakeError::Refused(r) if r.contains(want)),
            "{e}"
        );
        assert!(p.server.is_closed());
        assert_eq!(p.server.auth_failed(), want == "wrong shared secret");
    }
    for (version, want) in [(99, "protocol version 99"), (1, "protocol version 1,")] {
        let mut p = Pair::new(Some("s"), 2);
        let h = Hello {
            version,
            ..hello("c", None)
        };
        p.client_send(&Frame::Hello(h.clone()));
        let got = p.drive(&mut Vec::new());
        let e = check_welcome(&h, got[0].clone()).unwrap_err();
        assert!(
            matches!(&e, HandshakeError::Refused(r) if r.contains(want)),
            "{e}"
        );
        assert!(p.server.is_closed());
    }
    // Anything but Hello first is refused.
    let mut p = Pair::new(None, 5);
    p.client_send(&Frame::Health);
    let got = p.drive(&mut Vec::new());
    assert!(matches!(
        &got[0],
        Frame::Error {
            code: ErrorCode::UNEXPECTED,
            ..
        }
    ));
    // Garbage closes the connection with BAD_FRAME.
    let mut p = Pair::new(None, 5);
    p.to_server.extend([1, 0, 0, 0, 77, 0]);
    let got = p.drive(&mut Vec::new());
    assert!(matches!(
        &got[0],
        Frame::Error {
            code: ErrorCode::BAD_FRAME,
            ..
        }
    ));
    // Unknown region after a good handshake.
    let mut p = Pair::new(None, 5);
    p.client_send(&Frame::Hello(hello("c", None)));
    p.client_send(&Frame::ReadBatch(ReadBatch {
        id: 1,
        reads: vec![WireRead {
            region: RegionId(2),
            offset: 0,
            len: 1,
        }],
    }));
    let got = p.drive(&mut Vec::new());
    assert!(matches!(
        &got[1],
        Frame::Error {
            code: ErrorCode::UNKNOWN_REGION,
            ..
        }
    ));
}

#[test]
fn client_checks_welcome() {
    let h = hello("c", Some("fp1"));
    let w = Welcome {
        version: PROTOCOL_VERSION,
        node: "n".into(),
        fingerprint: "other".into(),
        regions: vec![],
        proof: None,
    };
    assert!(matches!(
        check_welcome(&h, Frame::Welcome(w.clone())),
        Err(HandshakeError::Fingerprint { .. })
    ));
    assert!(matches!(
        check_welcome(
            &h,
            Frame::Welcome(Welcome {
                version: PROTOCOL_VERSION + 1,
                ..w.clone()
            })
        ),
        Err(HandshakeError::Version { .. })
    ));
    // A version-1 node (QP endpoints without the read depth) is refused.
    assert!(matches!(
        check_welcome(&h, Frame::Welcome(Welcome { version: 1, ..w })),
        Err(HandshakeError::Version { .. })
    ));
    assert!(matches!(
        check_welcome(&h, Frame::Health),
        Err(HandshakeError::Unexpected("Health"))
    ));
}

/// Issue 12 item 2: before the handshake only a small Hello is accepted,
/// so an unauthenticated peer announcing a big frame is refused at its
/// header instead of being buffered (the old reader accepted 16 MiB).
#[test]
fn pre_auth_frames_are_small_and_the_largest_hello_fits() {
    // The largest legitimate Hello is accepted.
    let big = Frame::Hello(hello(
        &"c".repeat(MAX_STRING),
        Some(&"f".repeat(MAX_FINGERPRINT)),
    ));
    let bytes = big.to_bytes();
    assert_eq!(bytes.len() - HEADER_LEN, 4396);
    let mut s = ServerConn::new(policy(None), [0; NONCE_LEN]);
    s.feed(&bytes);
    // Decoded whole (then refused for its made-up fingerprint, not for its size).
    match s.poll() {
        Some(ServerAction::Close {
            frame: Some(Frame::Refused { reason }),
            ..
        }) => assert!(reason.contains("fingerprint mismatch"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // So is the largest version 2 Hello (it carried a secret), refused for
    // its version.
    let v2 = crate::auth_tests::v2_hello(
        &"c".repeat(MAX_STRING),
        Some(&"s".repeat(MAX_STRING)),
        Some(&"f".repeat(MAX_FINGERPRINT)),
    );
    assert_eq!(v2.len() - HEADER_LEN, 8462);
    assert!(v2.len() - HEADER_LEN <= MAX_PRE_AUTH_FRAME as usize / 2 + 400);
    let mut s = ServerConn::new(policy(Some("s")), [0; NONCE_LEN]);
    s.feed(&v2);
    match s.poll() {
        Some(ServerAction::Close {
            frame: Some(Frame::Refused { reason }),
            ..
        }) => assert!(
            reason.contains(&format!(
                "protocol version 2, node node-a speaks {PROTOCOL_VERSION}"
            )),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }

    // A 16 MiB frame announced before the Hello fails at its 5-byte header.
    let mut s = ServerConn::new(policy(None), [0; NONCE_LEN]);
    let mut header = (16u32 << 20).to_le_bytes().to_vec();
    header.push(4); // ReadBatch
    s.feed(&header);
    match s.poll() {
        Some(ServerAction::Close {
            frame: Some(Frame::Error { code, .. }),
            ..
        }) => assert_eq!(code, ErrorCode::TOO_LARGE),
        other => panic!("{other:?}"),
    }
    assert!(s.is_closed());

    // After the handshake the policy's limits apply again: a 1 MiB batch
    // frame is fine.
    let mut s = ServerConn::new(policy(None), [0; NONCE_LEN]);
    s.feed(&Frame::Hello(hello("c", None)).to_bytes());
    assert!(matches!(
        s.poll(),
        Some(ServerAction::Send(Frame::Welcome(_)))
    ));
    let reads = (0..65_536)
        .map(|i| WireRead {
            region: RegionId(0),
            offset: i % 50,
            len: 1,
        })
        .collect();
    let b = Frame::ReadBatch(ReadBatch { id: 1, reads }).to_bytes();
    assert!(b.len() > 1 << 20);
    s.feed(&b);
    assert_eq!(s.buffered(), b.len());
    assert!(matches!(s.poll(), Some(ServerAction::ServeReads { .. })));
    assert_eq!(s.buffered(), 0);
}

/// The manifests are only for authenticated sessions: asked for before the
/// handshake, the node closes the connection; a manifest longer than the
/// frame limit, or not UTF-8, is refused by the decoder.
#[test]
fn manifests_need_the_handshake_and_are_bounded() {
    let mut p = Pair::new(Some("s"), 7);
    p.client_send(&Frame::Manifests);
    let got = p.drive(&mut Vec::new());
    assert!(
        matches!(&got[..], [Frame::Error { code: ErrorCode::UNEXPECTED, message }] if message.contains("expected Hello, got Manifests")),
        "{got:?}"
    );
    assert!(p.server.is_closed());

    let limits = Limits {
        max_frame: 64,
        ..Limits::DEFAULT
    };
    let big = Frame::ManifestsOk {
        manifests: vec!["x".repeat(100)],
    };
    // The frame itself is over the limit, and so is its one manifest.
    assert!(matches!(
        decode(&big.to_bytes(), &limits),
        Err(WireError::TooLarge { .. })
    ));
    let mut bad = Frame::ManifestsOk {
        manifests: vec!["ab".into()],
    }
    .to_bytes();
    let n = bad.len();
    bad[n - 1] = 0xff;
    assert!(matches!(
        decode(&bad, &Limits::DEFAULT),
        Err(WireError::BadUtf8 {
            what: "manifest",
            ..
        })
    ));
}
