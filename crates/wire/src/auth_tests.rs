//! The challenge-response handshake ([`crate::auth`]), sans-IO.

use crate::tests::Pair;
use crate::*;

/// A version 2 Hello as a version 2 client encoded it: magic, version,
/// client name, the secret in clear, the fingerprint.
pub(crate) fn v2_hello(client: &str, secret: Option<&str>, fp: Option<&str>) -> Vec<u8> {
    let mut body = HELLO_MAGIC.to_vec();
    body.extend(2u16.to_le_bytes());
    let s = |b: &mut Vec<u8>, v: &str| {
        b.extend((v.len() as u16).to_le_bytes());
        b.extend(v.as_bytes());
    };
    s(&mut body, client);
    for o in [secret, fp] {
        match o {
            None => body.push(0),
            Some(v) => {
                body.push(1);
                s(&mut body, v);
            }
        }
    }
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.push(1);
    out.extend(body);
    out
}

/// Every client frame of one handshake against a node holding `secret`.
fn client_bytes(client_secret: &[u8]) -> Vec<u8> {
    let mut p = Pair::new(Some(std::str::from_utf8(client_secret).unwrap()), 7);
    let mut c = ClientHandshake::new("rank0", Some(client_secret), Some("fp1"), [3; 32]);
    let mut sent = Frame::Hello(c.hello().clone()).to_bytes();
    p.client_send(&Frame::Hello(c.hello().clone()));
    loop {
        let got = p.drive(&mut Vec::new());
        match c.on_frame(got[0].clone()).unwrap() {
            ClientStep::Send(f) => {
                sent.extend(f.to_bytes());
                p.client_send(&f);
            }
            ClientStep::Done(_) => return sent,
        }
    }
}

/// Issue 12 item 5: the secret never crosses the wire and what the client
/// sends has the same size whatever the secret's length.
#[test]
fn the_secret_is_not_sent_and_its_length_does_not_show() {
    let short = client_bytes(b"k");
    let long_secret = "correct horse battery staple ".repeat(20);
    let long = client_bytes(long_secret.as_bytes());
    assert_eq!(short.len(), long.len());
    assert!(!long.windows(12).any(|w| w == &long_secret.as_bytes()[..12]));
}

#[test]
fn proofs_bind_every_field_and_differ_by_role() {
    let h = Hello {
        nonce: [1; 32],
        auth: true,
        ..hello("rank0", Some("fp"))
    };
    let n = [2u8; 32];
    let p = auth::client_proof(b"s", &h, &n);
    assert!(auth::verify_client_proof(b"s", &h, &n, &p));
    assert!(!auth::verify_client_proof(b"t", &h, &n, &p));
    assert!(!auth::verify_client_proof(b"s", &h, &[3; 32], &p));
    assert!(!auth::verify_client_proof(b"s", &h, &n, &p[..31]));
    for other in [
        Hello {
            client: "rank1".into(),
            ..h.clone()
        },
        Hello {
            fingerprint: None,
            ..h.clone()
        },
        Hello {
            nonce: [9; 32],
            ..h.clone()
        },
    ] {
        assert!(!auth::verify_client_proof(b"s", &other, &n, &p));
    }
    let w = Welcome {
        version: PROTOCOL_VERSION,
        node: "n".into(),
        fingerprint: "fp".into(),
        regions: vec![],
        proof: None,
    };
    let np = auth::node_proof(b"s", &h, &n, &p, &w);
    assert_ne!(np, p);
    let signed = Welcome {
        proof: Some(np),
        ..w.clone()
    };
    assert!(auth::verify_node_proof(b"s", &h, &n, &p, &signed));
    // A client proof is not a node proof; a changed Welcome is caught.
    assert!(!auth::verify_node_proof(
        b"s",
        &h,
        &n,
        &p,
        &Welcome {
            proof: Some(p),
            ..w.clone()
        }
    ));
    assert!(!auth::verify_node_proof(
        b"s",
        &h,
        &n,
        &p,
        &Welcome {
            fingerprint: "other".into(),
            ..signed.clone()
        }
    ));
    assert!(!auth::verify_node_proof(b"s", &h, &n, &p, &w));
}

#[test]
fn client_refuses_a_node_that_does_not_prove_the_secret() {
    // An impostor without the secret answers the Hello with a Welcome.
    let mut c = ClientHandshake::new("c", Some(b"s"), None, [1; 32]);
    let w = Welcome {
        version: PROTOCOL_VERSION,
        node: "evil".into(),
        fingerprint: "fp".into(),
        regions: vec![],
        proof: None,
    };
    let e = c.on_frame(Frame::Welcome(w.clone())).unwrap_err();
    assert!(matches!(&e, HandshakeError::NodeUnauthenticated { node } if node == "evil"));
    assert!(e.to_string().contains("did not prove"), "{e}");
    // ... or challenges and then makes a proof up.
    let mut c = ClientHandshake::new("c", Some(b"s"), None, [1; 32]);
    assert!(matches!(
        c.on_frame(Frame::Challenge { nonce: [4; 32] }),
        Ok(ClientStep::Send(Frame::Proof { .. }))
    ));
    let e = c
        .on_frame(Frame::Welcome(Welcome {
            proof: Some([0; 32]),
            ..w
        }))
        .unwrap_err();
    assert!(matches!(e, HandshakeError::BadNodeProof { .. }), "{e}");
    // A client without a secret asked for one.
    let mut c = ClientHandshake::new("c", None, None, [1; 32]);
    let e = c.on_frame(Frame::Challenge { nonce: [4; 32] }).unwrap_err();
    assert_eq!(e, HandshakeError::SecretRequired);
    // A node that cannot decode the Hello (an older version).
    let mut c = ClientHandshake::new("c", None, None, [1; 32]);
    let e = c
        .on_frame(Frame::Error {
            code: ErrorCode::BAD_FRAME,
            message: "bad frame: secret at byte 11: option tag is neither 0 nor 1".into(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("older protocol version"), "{e}");
}

#[test]
fn a_recorded_proof_does_not_open_another_session() {
    // Session 1, recorded.
    let mut p1 = Pair::new(Some("s"), 64);
    let mut c = ClientHandshake::new("c", Some(b"s"), None, [1; 32]);
    p1.handshake(&mut c).unwrap();
    let h = c.hello().clone();
    let proof = auth::client_proof(b"s", &h, &[9; 32]);
    // Replayed to a connection with another node nonce.
    let mut s = ServerConn::new(tests::policy(Some("s")), [8; 32]);
    s.feed(&Frame::Hello(h).to_bytes());
    assert!(matches!(
        s.poll(),
        Some(ServerAction::Send(Frame::Challenge { nonce })) if nonce == [8; 32]
    ));
    s.feed(&Frame::Proof { proof }.to_bytes());
    assert!(matches!(
        s.poll(),
        Some(ServerAction::Close { frame: Some(Frame::Refused { reason }), .. })
            if reason.contains("wrong shared secret")
    ));
    assert!(s.auth_failed());
}

#[test]
fn a_blocked_peer_is_refused_without_a_challenge_or_a_check() {
    let h = Hello {
        nonce: [1; 32],
        auth: true,
        ..hello("c", None)
    };
    let mut s = ServerConn::new(tests::policy(Some("s")), [8; 32]);
    s.block("too many failures".into());
    s.feed(&Frame::Hello(h.clone()).to_bytes());
    assert!(matches!(
        s.poll(),
        Some(ServerAction::Close { frame: Some(Frame::Refused { reason }), .. })
            if reason == "too many failures"
    ));
    // Blocked between the challenge and the proof: even a right proof is
    // refused, and not counted as a failure.
    let mut s = ServerConn::new(tests::policy(Some("s")), [8; 32]);
    s.feed(&Frame::Hello(h.clone()).to_bytes());
    assert!(s.poll().is_some());
    assert!(s.in_handshake());
    s.block("too many failures".into());
    let proof = auth::client_proof(b"s", &h, &[8; 32]);
    s.feed(&Frame::Proof { proof }.to_bytes());
    assert!(matches!(
        s.poll(),
        Some(ServerAction::Close {
            frame: Some(Frame::Refused { .. }),
            ..
        })
    ));
    assert!(!s.auth_failed() && !s.proved());
    // Frames other than Proof after a challenge are protocol errors.
    let mut s = ServerConn::new(tests::policy(Some("s")), [8; 32]);
    s.feed(&Frame::Hello(h).to_bytes());
    s.feed(&Frame::Health.to_bytes());
    assert!(s.poll().is_some());
    assert!(matches!(
        s.poll(),
        Some(ServerAction::Close {
            frame: Some(Frame::Error {
                code: ErrorCode::UNEXPECTED,
                ..
            }),
            ..
        })
    ));
}
