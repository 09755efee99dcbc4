//! Decoding frames: bounded reads of every length and count against
//! [`Limits`] and the bytes present, exact consumption of a body.

use super::{
    kind, ClientCounters, ErrorCode, Frame, HealthOk, Hello, Limits, NodeCounters, QpEndpoint,
    ReadBatch, RegionId, RegionInfo, RegionKey, StatsOk, VerbsAccept, VerbsConnect, Welcome,
    WireRead, HEADER_LEN, HELLO_MAGIC, MAX_CLIENTS, MAX_FINGERPRINT, MAX_MANIFESTS, MAX_QPS,
    MAX_STRING, NONCE_LEN, PROTOCOL_VERSION,
};

/// Result of [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The buffer holds no complete frame yet; at least `needed` more bytes
    /// are required.
    NeedMore {
        /// Minimum number of further bytes.
        needed: usize,
    },
    /// A complete frame, which took `consumed` bytes of the buffer.
    Frame {
        /// The frame.
        frame: Frame,
        /// Bytes consumed from the start of the buffer.
        consumed: usize,
    },
}

/// A frame that cannot be decoded. Offsets count from the start of the
/// frame body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A length or count exceeds its limit.
    #[error("{what} is {value}, more than the limit {max}")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The body ends inside a field.
    #[error("frame body ends inside {what} at byte {at}")]
    Truncated {
        /// The field.
        what: &'static str,
        /// Offset of the field.
        at: usize,
    },
    /// The body has bytes after its last field.
    #[error("{extra} trailing bytes after a {frame} frame")]
    Trailing {
        /// Frame kind.
        frame: &'static str,
        /// Number of unread bytes.
        extra: usize,
    },
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A string field is not UTF-8.
    #[error("{what} at byte {at} is not UTF-8")]
    BadUtf8 {
        /// The field.
        what: &'static str,
        /// Offset of the field.
        at: usize,
    },
    /// A field holds an impossible value.
    #[error("{what} at byte {at}: {why}")]
    BadValue {
        /// The field.
        what: &'static str,
        /// Offset of the field.
        at: usize,
        /// What is wrong.
        why: &'static str,
    },
}

/// Decodes the first frame of `buf`.
///
/// Returns [`Decoded::NeedMore`] while the frame is incomplete (after
/// checking the announced length against `limits.max_frame`, so an
/// oversized frame fails as soon as its header arrives).
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Decoded, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(Decoded::NeedMore {
            needed: HEADER_LEN - buf.len(),
        });
    }
    let (len, kind) = decode_header(&buf[..HEADER_LEN], limits)?;
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Ok(Decoded::NeedMore {
            needed: total - buf.len(),
        });
    }
    let frame = decode_body(kind, &buf[HEADER_LEN..total], limits)?;
    Ok(Decoded::Frame {
        frame,
        consumed: total,
    })
}

/// Decodes a 5-byte frame header into `(body length, kind)`, checking the
/// length against `limits.max_frame` and the kind against known kinds.
pub fn decode_header(header: &[u8], limits: &Limits) -> Result<(usize, u8), WireError> {
    let Some(h) = header.get(..HEADER_LEN) else {
        return Err(WireError::Truncated {
            what: "frame header",
            at: 0,
        });
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let kind = h[4];
    if !(kind::HELLO..=kind::LAST).contains(&kind) {
        return Err(WireError::UnknownKind(kind));
    }
    if len > limits.max_frame {
        return Err(WireError::TooLarge {
            what: "frame length",
            value: u64::from(len),
            max: u64::from(limits.max_frame),
        });
    }
    Ok((len as usize, kind))
}

/// Decodes a frame body of kind `kind` (from [`decode_header`]).
pub fn decode_body(kind: u8, body: &[u8], limits: &Limits) -> Result<Frame, WireError> {
    let mut r = Reader { buf: body, pos: 0 };
    let frame = match kind {
        kind::HELLO => {
            let at = r.pos;
            let magic = r.take(4, "hello magic")?;
            if magic != HELLO_MAGIC {
                return Err(WireError::BadValue {
                    what: "hello magic",
                    at,
                    why: "not a seqfeed client",
                });
            }
            let version = r.u16("version")?;
            let client = r.str("client name", MAX_STRING)?;
            if version != PROTOCOL_VERSION {
                // Another version's fields follow: leave them unread, so
                // the node can refuse the version by name.
                return Ok(Frame::Hello(Hello {
                    version,
                    client,
                    nonce: [0; NONCE_LEN],
                    auth: false,
                    fingerprint: None,
                }));
            }
            Frame::Hello(Hello {
                version,
                client,
                nonce: r.array("client nonce")?,
                auth: r.flag("auth flag")?,
                fingerprint: r.opt_str("fingerprint", MAX_FINGERPRINT)?,
            })
        }
        kind::WELCOME => {
            let version = r.u16("version")?;
            let node = r.str("node name", MAX_STRING)?;
            let fingerprint = r.str("fingerprint", MAX_FINGERPRINT)?;
            // id 4 + name 2 + len 8 + addr 8 + rkey 4
            let n = r.count("region count", u32::MAX as usize, 26)?;
            let mut regions = Vec::with_capacity(n);
            for _ in 0..n {
                regions.push(RegionInfo {
                    id: RegionId(r.u32("region id")?),
                    name: r.str("region name", MAX_STRING)?,
                    len: r.u64("region length")?,
                    addr: r.u64("region address")?,
                    rkey: r.u32("region rkey")?,
                });
            }
            let proof = match r.flag("node proof tag")? {
                false => None,
                true => Some(r.array("node proof")?),
            };
            Frame::Welcome(Welcome {
                version,
                node,
                fingerprint,
                regions,
                proof,
            })
        }
        kind::REFUSED => Frame::Refused {
            reason: r.str("reason", MAX_STRING)?,
        },
        kind::CHALLENGE => Frame::Challenge {
            nonce: r.array("node nonce")?,
        },
        kind::PROOF => Frame::Proof {
            proof: r.array("client proof")?,
        },
        kind::READ_BATCH => {
            let id = r.u64("request id")?;
            let n = r.count("read count", limits.max_reads as usize, 16)?;
            let mut reads = Vec::with_capacity(n);
            let mut total = 0u64;
            for _ in 0..n {
                let read = WireRead {
                    region: RegionId(r.u32("read region")?),
                    offset: r.u64("read offset")?,
                    len: r.u32("read length")?,
                };
                total += u64::from(read.len); // <= 2^16 * 2^32: no overflow
                if total > limits.max_batch_bytes {
                    return Err(WireError::TooLarge {
                        what: "batch bytes",
                        value: total,
                        max: limits.max_batch_bytes,
                    });
                }
                reads.push(read);
            }
            Frame::ReadBatch(ReadBatch { id, reads })
        }
        kind::READ_DATA => {
            let id = r.u64("request id")?;
            let total = r.u64("data length")?;
            if total > limits.max_batch_bytes {
                return Err(WireError::TooLarge {
                    what: "data length",
                    value: total,
                    max: limits.max_batch_bytes,
                });
            }
            Frame::ReadData { id, total }
        }
        kind::HEALTH => Frame::Health,
        kind::MANIFESTS => Frame::Manifests,
        kind::MANIFESTS_OK => {
            let n = r.count("manifest count", MAX_MANIFESTS, 4)?;
            let mut manifests = Vec::with_capacity(n);
            for _ in 0..n {
                manifests.push(r.blob("manifest", limits.max_frame as usize)?);
            }
            Frame::ManifestsOk { manifests }
        }
        kind::STATS => Frame::Stats,
        kind::HEALTH_OK => Frame::HealthOk(HealthOk {
            node: r.node_counters()?,
            you: r.client_counters()?,
        }),
        kind::STATS_OK => {
            let node = r.node_counters()?;
            let n = r.count("client count", MAX_CLIENTS, 28)?;
            let mut clients = Vec::with_capacity(n);
            for _ in 0..n {
                clients.push(r.client_counters()?);
            }
            Frame::StatsOk(StatsOk { node, clients })
        }
        kind::ERROR => Frame::Error {
            code: ErrorCode(r.u16("error code")?),
            message: r.str("error message", MAX_STRING)?,
        },
        kind::VERBS_CONNECT => {
            let n = r.count("queue pair count", MAX_QPS, QpEndpoint::ENCODED_LEN)?;
            let mut qps = Vec::with_capacity(n);
            for _ in 0..n {
                qps.push(r.qp()?);
            }
            let device = r.str("device name", MAX_STRING)?;
            let rail = r.u32("rail")?;
            let n = r.count("replaced QP count", MAX_QPS, 4)?;
            let mut replaces = Vec::with_capacity(n);
            for _ in 0..n {
                replaces.push(r.u32("replaced QP number")?);
            }
            Frame::VerbsConnect(VerbsConnect {
                qps,
                device,
                rail,
                replaces,
            })
        }
        kind::VERBS_ACCEPT => {
            let n = r.count("queue pair count", MAX_QPS, QpEndpoint::ENCODED_LEN)?;
            let mut qps = Vec::with_capacity(n);
            for _ in 0..n {
                qps.push(r.qp()?);
            }
            let n = r.count("region key count", u32::MAX as usize, 16)?;
            let mut regions = Vec::with_capacity(n);
            for _ in 0..n {
                regions.push(RegionKey {
                    id: RegionId(r.u32("region id")?),
                    addr: r.u64("region address")?,
                    rkey: r.u32("region rkey")?,
                });
            }
            Frame::VerbsAccept(VerbsAccept { qps, regions })
        }
        other => return Err(WireError::UnknownKind(other)),
    };
    if r.pos != body.len() {
        return Err(WireError::Trailing {
            frame: frame.name(),
            extra: body.len() - r.pos,
        });
    }
    Ok(frame)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < n {
            return Err(WireError::Truncated { what, at: self.pos });
        }
        self.pos += n;
        Ok(&rest[..n])
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let b = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn flag(&mut self, what: &'static str) -> Result<bool, WireError> {
        let at = self.pos;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::BadValue {
                what,
                at,
                why: "flag is neither 0 nor 1",
            }),
        }
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A string with a u32 length (manifests): bounded by `max`.
    fn blob(&mut self, what: &'static str, max: usize) -> Result<String, WireError> {
        let at = self.pos;
        let n = self.u32(what)? as usize;
        self.utf8(what, at, n, max)
    }
    fn str(&mut self, what: &'static str, max: usize) -> Result<String, WireError> {
        let at = self.pos;
        let n = self.u16(what)? as usize;
        self.utf8(what, at, n, max)
    }
    /// `n` bytes of UTF-8 after a length field read at `at`, at most `max`.
    fn utf8(
        &mut self,
        what: &'static str,
        at: usize,
        n: usize,
        max: usize,
    ) -> Result<String, WireError> {
        if n > max {
            return Err(WireError::TooLarge {
                what,
                value: n as u64,
                max: max as u64,
            });
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::BadUtf8 { what, at })
    }
    fn opt_str(&mut self, what: &'static str, max: usize) -> Result<Option<String>, WireError> {
        let at = self.pos;
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(self.str(what, max)?)),
            _ => Err(WireError::BadValue {
                what,
                at,
                why: "option tag is neither 0 nor 1",
            }),
        }
    }
    /// Reads a count, checked against `max` and against the bytes left
    /// (each item takes at least `min_item` bytes), so a hostile count
    /// cannot trigger a large allocation.
    fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_item: usize,
    ) -> Result<usize, WireError> {
        let at = self.pos;
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(WireError::TooLarge {
                what,
                value: n as u64,
                max: max as u64,
            });
        }
        let left = self.buf.len() - self.pos;
        if n.saturating_mul(min_item) > left {
            return Err(WireError::Truncated { what, at });
        }
        Ok(n)
    }
    fn node_counters(&mut self) -> Result<NodeCounters, WireError> {
        Ok(NodeCounters {
            uptime_ms: self.u64("uptime")?,
            connections_total: self.u64("connections total")?,
            connections_open: self.u64("connections open")?,
            refused: self.u64("refused")?,
            batches: self.u64("batches")?,
            reads: self.u64("reads")?,
            bytes: self.u64("bytes")?,
            errors: self.u64("errors")?,
        })
    }
    fn client_counters(&mut self) -> Result<ClientCounters, WireError> {
        Ok(ClientCounters {
            client: self.str("client name", MAX_STRING)?,
            peer: self.str("peer address", MAX_STRING)?,
            batches: self.u64("batches")?,
            reads: self.u64("reads")?,
            bytes: self.u64("bytes")?,
        })
    }
    fn qp(&mut self) -> Result<QpEndpoint, WireError> {
        Ok(QpEndpoint {
            qp_num: self.u32("qp number")?,
            psn: self.u32("psn")?,
            gid: self.array("gid")?,
            lid: self.u16("lid")?,
            mtu: self.u8("mtu")?,
            rd_atomic: self.u8("rd atomic depth")?,
        })
    }
}
