//! A minimal, self-contained QP exchange over TCP, for the verbs self-test
//! and benchmark binaries (the storage node carries the same exchange in its
//! real control service as the `VerbsConnect` frame).
//!
//! Request: `"SQFV"`, rail (u32), device name (u8 length + bytes), count
//! (u32), count x [`QpEndpoint`].
//! Answer: status (u32, 0 = ok), then count x [`QpEndpoint`], region count
//! (u32) and per region id (u32), len (u64), addr (u64), rkey (u32),
//! name length (u16) and name; or, when status != 0, a length-prefixed
//! error message. All integers little-endian. Every length is checked.
//!
//! The server keeps a connection's QPs alive until the client closes it.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seqfeed_transport::{RegionId, RegionInfo, TransportError};

use crate::endpoint::{Accepted, QpEndpoint, QpExchange};
use crate::server::{ServerQps, VerbsServer, MAX_QPS_PER_CONNECT};

const MAGIC: &[u8; 4] = b"SQFV";
const MAX_REGIONS: u32 = 1 << 20;

fn read_u32(s: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(s: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_eps(s: &mut impl Read, n: u32) -> io::Result<Vec<QpEndpoint>> {
    let mut out = Vec::with_capacity(n as usize);
    let mut b = [0u8; QpEndpoint::ENCODED_LEN];
    for _ in 0..n {
        s.read_exact(&mut b)?;
        out.push(QpEndpoint::decode(&b).ok_or_else(|| io::Error::other("short endpoint"))?);
    }
    Ok(out)
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Client side of the exchange: one TCP connection to the node, reused for
/// every (re)connect; its QPs live as long as this connection.
#[derive(Debug)]
pub struct TcpExchange {
    addr: String,
    stream: TcpStream,
}

impl TcpExchange {
    /// Connects to a [`serve`] loop at `addr` (5 s connect and I/O timeouts).
    pub fn connect(addr: &str) -> Result<TcpExchange, TransportError> {
        let io_err = |what: &str, source: io::Error| TransportError::Io {
            node: addr.to_string(),
            what: what.to_string(),
            source,
        };
        let sa = addr
            .to_socket_addrs()
            .map_err(|e| io_err("resolving address", e))?
            .next()
            .ok_or_else(|| io_err("resolving address", io::Error::other("no address")))?;
        let stream = TcpStream::connect_timeout(&sa, Duration::from_secs(5))
            .map_err(|e| io_err("connecting", e))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| io_err("setting timeout", e))?;
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| io_err("setting timeout", e))?;
        let _ = stream.set_nodelay(true);
        Ok(TcpExchange {
            addr: addr.to_string(),
            stream,
        })
    }

    fn roundtrip(&mut self, rail: u32, device: &str, qps: &[QpEndpoint]) -> io::Result<Accepted> {
        let mut req = Vec::with_capacity(14 + device.len() + qps.len() * QpEndpoint::ENCODED_LEN);
        req.extend_from_slice(MAGIC);
        req.extend_from_slice(&rail.to_le_bytes());
        let dev = &device.as_bytes()[..device.len().min(255)];
        req.push(dev.len() as u8);
        req.extend_from_slice(dev);
        req.extend_from_slice(&(qps.len() as u32).to_le_bytes());
        for q in qps {
            q.encode(&mut req);
        }
        self.stream.write_all(&req)?;
        let s = &mut self.stream;
        let status = read_u32(s)?;
        if status != 0 {
            let n = read_u32(s)?.min(4096);
            let mut m = vec![0u8; n as usize];
            s.read_exact(&mut m)?;
            return Err(io::Error::other(format!(
                "node refused: {}",
                String::from_utf8_lossy(&m)
            )));
        }
        let n = read_u32(s)?;
        if n as usize != qps.len() {
            return Err(bad(format!("answer has {n} QPs for {} asked", qps.len())));
        }
        let eps = read_eps(s, n)?;
        let nr = read_u32(s)?;
        if nr > MAX_REGIONS {
            return Err(bad(format!("answer claims {nr} regions")));
        }
        let mut regions = Vec::with_capacity(nr as usize);
        for _ in 0..nr {
            let id = read_u32(s)?;
            let len = read_u64(s)?;
            let addr = read_u64(s)?;
            let rkey = read_u32(s)?;
            let mut nl = [0u8; 2];
            s.read_exact(&mut nl)?;
            let mut name = vec![0u8; u16::from_le_bytes(nl) as usize];
            s.read_exact(&mut name)?;
            regions.push(RegionInfo {
                id: RegionId(id),
                name: String::from_utf8_lossy(&name).into_owned(),
                len,
                addr,
                rkey,
            });
        }
        Ok(Accepted { qps: eps, regions })
    }
}

impl QpExchange for TcpExchange {
    fn check_alive(&mut self) -> Result<(), TransportError> {
        let gone = |source: io::Error| TransportError::Io {
            node: self.addr.clone(),
            what: "control connection".into(),
            source,
        };
        self.stream.set_nonblocking(true).map_err(gone)?;
        let mut b = [0u8; 1];
        let r = self.stream.peek(&mut b);
        self.stream.set_nonblocking(false).map_err(gone)?;
        match r {
            Ok(0) => Err(gone(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the node",
            ))),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(gone(e)),
        }
    }

    fn connect(
        &mut self,
        rail: u32,
        device: &str,
        qps: &[QpEndpoint],
        replaces: &[u32],
    ) -> Result<Accepted, TransportError> {
        // This test exchange does not carry `replaces`: its node keeps
        // replaced QPs until the connection closes (the storage node's
        // control service destroys them at once).
        let _ = replaces;
        self.roundtrip(rail, device, qps)
            .map_err(|source| TransportError::Io {
                node: self.addr.clone(),
                what: format!("verbs connect exchange (rail {rail}, {} QPs)", qps.len()),
                source,
            })
    }
}

fn handle(server: &VerbsServer, mut s: TcpStream, stop: &AtomicBool) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut keep: Vec<ServerQps> = Vec::new();
    loop {
        let mut magic = [0u8; 4];
        // Wait for the next request (or the client closing), checking `stop`.
        loop {
            match s.read(&mut magic[..1]) {
                Ok(0) => return Ok(()),
                Ok(_) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.read_exact(&mut magic[1..])?;
        if &magic != MAGIC {
            return Err(bad(format!("bad magic {magic:?}")));
        }
        let rail = read_u32(&mut s)?;
        let mut dl = [0u8; 1];
        s.read_exact(&mut dl)?;
        let mut dev = vec![0u8; dl[0] as usize];
        s.read_exact(&mut dev)?;
        let dev = String::from_utf8_lossy(&dev).into_owned();
        let n = read_u32(&mut s)?;
        if n == 0 || n as usize > MAX_QPS_PER_CONNECT {
            return Err(bad(format!("request for {n} QPs")));
        }
        let eps = read_eps(&mut s, n)?;
        let mut out = Vec::new();
        match server.accept(&dev, rail, &eps) {
            Ok((acc, qps)) => {
                keep.push(qps);
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&(acc.qps.len() as u32).to_le_bytes());
                for q in &acc.qps {
                    q.encode(&mut out);
                }
                out.extend_from_slice(&(acc.regions.len() as u32).to_le_bytes());
                for r in &acc.regions {
                    out.extend_from_slice(&r.id.0.to_le_bytes());
                    out.extend_from_slice(&r.len.to_le_bytes());
                    out.extend_from_slice(&r.addr.to_le_bytes());
                    out.extend_from_slice(&r.rkey.to_le_bytes());
                    let name = &r.name.as_bytes()[..r.name.len().min(u16::MAX as usize)];
                    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                    out.extend_from_slice(name);
                }
            }
            Err(e) => {
                let m = e.to_string();
                out.extend_from_slice(&1u32.to_le_bytes());
                out.extend_from_slice(&(m.len() as u32).to_le_bytes());
                out.extend_from_slice(m.as_bytes());
            }
        }
        s.write_all(&out)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
    }
}

/// Serves connect requests on `listener` until `stop` is set, one thread
/// per client connection. Returns when the listener is closed or `stop` set.
pub fn serve(
    server: Arc<VerbsServer>,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut workers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false)?;
                let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
                workers.push(std::thread::spawn(move || {
                    if let Err(e) = handle(&server, s, &stop) {
                        tracing::warn!(%peer, "verbs exchange connection ended: {e}");
                    }
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// Deterministic synthetic bytes for self-tests: byte `i` of region `r`
/// under `seed` (a cheap mix that differs across regions and positions).
pub fn synthetic_byte(seed: u64, region: u32, i: u64) -> u8 {
    let mut x = seed ^ (u64::from(region) << 40) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    x as u8
}

/// Fills a synthetic region.
pub fn synthetic_region(seed: u64, region: u32, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| synthetic_byte(seed, region, i))
        .collect()
}
