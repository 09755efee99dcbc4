//! The handshake's challenge-response under a shared secret, sans-IO.
//!
//! The secret never crosses the network, and nothing sent depends on its
//! length:
//!
//! 1. client → node: [`Hello`] with a fresh 32-byte client nonce and
//!    `auth = true` when the client holds a secret;
//! 2. node → client: [`Frame::Challenge`] with a fresh 32-byte node nonce
//!    (a node without a secret answers a Hello without `auth` with its
//!    [`Welcome`] at once; when only one side holds a secret the node
//!    refuses, naming the side that lacks it);
//! 3. client → node: [`Frame::Proof`], [`client_proof`] =
//!    HMAC-SHA256(secret, [`CLIENT_LABEL`] ‖ version ‖ Hello ‖ Challenge);
//! 4. node: checks it with [`verify_client_proof`] (hmac's `verify_slice`,
//!    constant time) and answers a [`Welcome`] whose [`Welcome::proof`] is
//!    [`node_proof`] = HMAC-SHA256(secret, [`NODE_LABEL`] ‖ version ‖ Hello
//!    ‖ Challenge ‖ client proof ‖ Welcome without its proof), or refuses;
//! 5. client: checks the node proof ([`ClientHandshake`]), so it does not
//!    talk to a node that does not hold the secret.
//!
//! Hello and Challenge enter the MAC as their encoded frames (header and
//! body; each is self-delimiting by its length header), so the client
//! name, the expected fingerprint and both nonces are bound. The labels
//! keep a client proof from ever being valid as a node proof.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::{Frame, Hello, Welcome, NONCE_LEN, PROOF_LEN, PROTOCOL_VERSION};
use crate::session::{check_welcome, HandshakeError};

type HmacSha256 = Hmac<Sha256>;

/// Domain-separation label of the client's proof.
pub const CLIENT_LABEL: &[u8] = b"seqfeed handshake: client proof\0";

/// Domain-separation label of the node's proof.
pub const NODE_LABEL: &[u8] = b"seqfeed handshake: node proof\0";

fn transcript(
    secret: &[u8],
    label: &[u8],
    hello: &Hello,
    node_nonce: &[u8; NONCE_LEN],
) -> HmacSha256 {
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC hashes long keys and pads short ones: every length is valid.
        Err(_) => unreachable!("HMAC-SHA256 accepts keys of any length"),
    };
    m.update(label);
    m.update(&PROTOCOL_VERSION.to_le_bytes());
    m.update(&Frame::Hello(hello.clone()).to_bytes());
    m.update(&Frame::Challenge { nonce: *node_nonce }.to_bytes());
    m
}

fn node_transcript(
    secret: &[u8],
    hello: &Hello,
    node_nonce: &[u8; NONCE_LEN],
    client_proof: &[u8; PROOF_LEN],
    welcome: &Welcome,
) -> HmacSha256 {
    let mut m = transcript(secret, NODE_LABEL, hello, node_nonce);
    m.update(client_proof);
    let unproved = Welcome {
        proof: None,
        ..welcome.clone()
    };
    m.update(&Frame::Welcome(unproved).to_bytes());
    m
}

/// The client's proof that it holds `secret`, for the node's challenge
/// `node_nonce` to `hello`.
pub fn client_proof(secret: &[u8], hello: &Hello, node_nonce: &[u8; NONCE_LEN]) -> [u8; PROOF_LEN] {
    transcript(secret, CLIENT_LABEL, hello, node_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `proof` is the client proof of `secret` for this handshake,
/// compared in constant time.
pub fn verify_client_proof(
    secret: &[u8],
    hello: &Hello,
    node_nonce: &[u8; NONCE_LEN],
    proof: &[u8],
) -> bool {
    transcript(secret, CLIENT_LABEL, hello, node_nonce)
        .verify_slice(proof)
        .is_ok()
}

/// The node's proof that it holds `secret`, over the whole handshake and
/// `welcome` (whose own `proof` field is left out).
pub fn node_proof(
    secret: &[u8],
    hello: &Hello,
    node_nonce: &[u8; NONCE_LEN],
    client_proof: &[u8; PROOF_LEN],
    welcome: &Welcome,
) -> [u8; PROOF_LEN] {
    node_transcript(secret, hello, node_nonce, client_proof, welcome)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `welcome.proof` is the node proof of `secret` for this
/// handshake, compared in constant time (false when it has none).
pub fn verify_node_proof(
    secret: &[u8],
    hello: &Hello,
    node_nonce: &[u8; NONCE_LEN],
    client_proof: &[u8; PROOF_LEN],
    welcome: &Welcome,
) -> bool {
    let Some(proof) = &welcome.proof else {
        return false;
    };
    node_transcript(secret, hello, node_nonce, client_proof, welcome)
        .verify_slice(proof)
        .is_ok()
}

/// What the driver of a [`ClientHandshake`] must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// Send this frame and pass the node's answer to
    /// [`ClientHandshake::on_frame`].
    Send(Frame),
    /// The session is open.
    Done(Welcome),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ClientState {
    AwaitAnswer,
    AwaitWelcome {
        node_nonce: [u8; NONCE_LEN],
        proof: [u8; PROOF_LEN],
    },
    Done,
}

/// The client side of the handshake: send [`ClientHandshake::hello`], then
/// feed each answer to [`ClientHandshake::on_frame`] until it is done.
///
/// ```
/// use seqfeed_wire::{ClientHandshake, ClientStep, Frame};
/// let mut c = ClientHandshake::new("rank0", Some(b"s3cret"), None, [7; 32]);
/// let first = Frame::Hello(c.hello().clone()); // send this
/// let step = c.on_frame(Frame::Challenge { nonce: [9; 32] }).unwrap();
/// assert!(matches!(step, ClientStep::Send(Frame::Proof { .. })));
/// # let _ = first;
/// ```
pub struct ClientHandshake {
    hello: Hello,
    secret: Option<Vec<u8>>,
    state: ClientState,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("hello", &self.hello)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("state", &self.state)
            .finish()
    }
}

impl ClientHandshake {
    /// A handshake for client `client`, holding `secret` when the nodes
    /// require one, expecting dataset `fingerprint` (`None`: any), with a
    /// fresh random `nonce` (from the OS RNG: never reuse one).
    pub fn new(
        client: &str,
        secret: Option<&[u8]>,
        fingerprint: Option<&str>,
        nonce: [u8; NONCE_LEN],
    ) -> Self {
        ClientHandshake {
            hello: Hello {
                version: PROTOCOL_VERSION,
                client: client.to_owned(),
                nonce,
                auth: secret.is_some(),
                fingerprint: fingerprint.map(str::to_owned),
            },
            secret: secret.map(<[u8]>::to_vec),
            state: ClientState::AwaitAnswer,
        }
    }

    /// The client's first frame (send it as [`Frame::Hello`]).
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Takes the node's answer to the last frame sent.
    pub fn on_frame(&mut self, answer: Frame) -> Result<ClientStep, HandshakeError> {
        match (&self.state, answer) {
            (ClientState::AwaitAnswer, Frame::Challenge { nonce }) => {
                let Some(secret) = &self.secret else {
                    return Err(HandshakeError::SecretRequired);
                };
                let proof = client_proof(secret, &self.hello, &nonce);
                self.state = ClientState::AwaitWelcome {
                    node_nonce: nonce,
                    proof,
                };
                Ok(ClientStep::Send(Frame::Proof { proof }))
            }
            (ClientState::AwaitAnswer, Frame::Welcome(w)) if self.secret.is_some() => {
                Err(HandshakeError::NodeUnauthenticated { node: w.node })
            }
            (ClientState::AwaitAnswer, Frame::Error { code, message })
                if code == crate::ErrorCode::BAD_FRAME =>
            {
                Err(HandshakeError::Incompatible(message))
            }
            (ClientState::AwaitWelcome { node_nonce, proof }, Frame::Welcome(w)) => {
                let secret = self.secret.as_deref().unwrap_or_default();
                if !verify_node_proof(secret, &self.hello, node_nonce, proof, &w) {
                    return Err(if w.proof.is_none() {
                        HandshakeError::NodeUnauthenticated { node: w.node }
                    } else {
                        HandshakeError::BadNodeProof { node: w.node }
                    });
                }
                self.finish(Frame::Welcome(w))
            }
            (ClientState::Done, f) => Err(HandshakeError::Unexpected(f.name())),
            (_, f) => self.finish(f),
        }
    }

    fn finish(&mut self, answer: Frame) -> Result<ClientStep, HandshakeError> {
        let w = check_welcome(&self.hello, answer)?;
        self.state = ClientState::Done;
        Ok(ClientStep::Done(w))
    }
}
