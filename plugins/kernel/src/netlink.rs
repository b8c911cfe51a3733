//! One blocking netlink socket type for every family we speak (rtnetlink
//! for links, addresses and routes; nfnetlink for nf_tables and conntrack),
//! generic over the message type of the family: one request, then its
//! acknowledgement or its dump; or a batch of requests in one datagram. A
//! plugin makes a handful of requests per run, so a synchronous exchange is
//! all it needs, and it keeps plugin code top to bottom.

use std::io;
use std::marker::PhantomData;
use std::os::fd::AsFd;

use netlink_packet_core::{DecodeError, Emitable, Parseable};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_sys::{SocketAddr, protocols::NETLINK_ROUTE};
use nix::sys::socket::{setsockopt, sockopt};

use crate::error::{KernelError, Result};

/// NLM_F_DUMP_INTR: the dump was interrupted by a concurrent change.
const NLM_F_DUMP_INTR: u16 = 0x10;

/// A failure of one exchange: the kernel refused (its errno, and the
/// sequence number of the message it refused), or the transport failed.
#[derive(Debug)]
pub enum Failure {
    Refused { errno: io::Error, seq: u32 },
    Io(io::Error),
    Decode(String),
}

impl Failure {
    /// As a kernel error of operation `op` (for callers with nothing
    /// better to name).
    pub fn into_kernel(self, op: &'static str) -> KernelError {
        match self {
            Failure::Refused { errno, .. } | Failure::Io(errno) => {
                KernelError::Netlink { op, source: errno }
            }
            Failure::Decode(detail) => KernelError::Decode { op, detail },
        }
    }
}

/// What a request gathered: the replies, and whether a dump was
/// interrupted by a concurrent change.
pub struct Replies<M> {
    pub messages: Vec<M>,
    pub interrupted: bool,
}

/// A netlink socket of one protocol in the namespace it was opened in,
/// exchanging messages of type `M`.
pub struct Socket<M> {
    socket: netlink_sys::Socket,
    seq: u32,
    _messages: PhantomData<M>,
}

impl<M> Socket<M>
where
    M: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
{
    /// Open a socket of `protocol` in the calling thread's network namespace.
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut socket = netlink_sys::Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Extended acks make the kernel say what it disliked, and capped
        // acks carry only the header of what they answer (a refused batch
        // of thousands of messages must not overflow the receive buffer
        // with copies of them); both best effort.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Socket {
            socket,
            seq: 0,
            _messages: PhantomData,
        })
    }

    /// The next `n` sequence numbers; returns the first.
    pub fn reserve_seq(&mut self, n: u32) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(n);
        first
    }

    /// Let one datagram of `len` bytes through, and `replies` error replies
    /// back: the defaults (~208 KiB each way) hold a few hundred messages.
    /// As root the limits are forced past the system maximum, as nft does.
    pub fn size_for(&self, len: usize, replies: usize) {
        let fd = self.socket.as_fd();
        let send = len + 4096;
        if send > 200 * 1024 && setsockopt(&fd, sockopt::SndBufForce, &send).is_err() {
            let _ = setsockopt(&fd, sockopt::SndBuf, &send);
        }
        // A capped ack costs about 1 KiB of receive buffer (its skb).
        let recv = replies * 1024;
        if recv > 200 * 1024 && setsockopt(&fd, sockopt::RcvBufForce, &recv).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &recv);
        }
    }

    /// Serialize `msg` with `flags` and sequence number `seq` onto `buf`.
    pub fn encode(buf: &mut Vec<u8>, msg: M, flags: u16, seq: u32) {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let start = buf.len();
        buf.resize(start + packet.buffer_len(), 0);
        packet.serialize(&mut buf[start..]);
        buf.resize(buf.len().next_multiple_of(4), 0);
    }

    /// The netlink messages of one datagram.
    pub fn decode(data: &[u8]) -> Result<Vec<NetlinkMessage<M>>, Failure> {
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < data.len() {
            // The parsers index attributes by the lengths they carry and
            // some (netlink-packet-netfilter 0.4's data attributes) panic on
            // a length past the buffer: a malformed reply is an error here,
            // never a panic.
            let rest = &data[offset..];
            let reply = std::panic::catch_unwind(|| NetlinkMessage::<M>::deserialize(rest))
                .map_err(|_| Failure::Decode("malformed reply (its parser panicked)".into()))?
                .map_err(|e| Failure::Decode(e.to_string()))?;
            let len = reply.header.length as usize;
            if len == 0 {
                break;
            }
            offset += len.next_multiple_of(4);
            out.push(reply);
        }
        Ok(out)
    }

    /// One request; its replies until the acknowledgement, the end of the
    /// dump, or (a GET without ack) the first reply.
    pub fn request(&mut self, msg: M, flags: u16) -> Result<Replies<M>, Failure> {
        let seq = self.reserve_seq(1);
        let mut buf = Vec::new();
        Self::encode(&mut buf, msg, flags, seq);
        self.socket.send(&buf, 0).map_err(Failure::Io)?;
        let single = flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0;
        let mut replies = Replies {
            messages: Vec::new(),
            interrupted: false,
        };
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(Failure::Io)?;
            if data.is_empty() {
                return Err(Failure::Decode("empty datagram".to_owned()));
            }
            for reply in Self::decode(&data)? {
                if reply.header.sequence_number != seq {
                    continue; // a late reply to an earlier request
                }
                if reply.header.flags & NLM_F_DUMP_INTR != 0 {
                    replies.interrupted = true;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(Failure::Refused {
                            errno: e.to_io(),
                            seq,
                        });
                    }
                    // A dump that failed part way ends with its errno.
                    NetlinkPayload::Done(d) if d.code < 0 => {
                        return Err(Failure::Refused {
                            errno: io::Error::from_raw_os_error(-d.code),
                            seq,
                        });
                    }
                    // An ack (error code 0) or the end of a dump.
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.messages.push(m);
                        if single {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Send a datagram of messages whose sequence numbers run from `first`
    /// to `last` and read every reply the kernel queued for them: the
    /// kernel handles a datagram inside `send`, so by the time it returns
    /// every acknowledgement and error is queued. Returns the first error,
    /// else Ok once message `last` (the only one asking for an ack) is
    /// acknowledged.
    pub fn send_batch(&mut self, datagram: &[u8], first: u32, last: u32) -> Result<(), Failure> {
        self.socket.send(datagram, 0).map_err(Failure::Io)?;
        self.socket.set_non_blocking(true).map_err(Failure::Io)?;
        let outcome = self.batch_replies(first, last);
        self.socket.set_non_blocking(false).map_err(Failure::Io)?;
        outcome
    }

    fn batch_replies(&mut self, first: u32, last: u32) -> Result<(), Failure> {
        let ours = |seq: u32| seq.wrapping_sub(first) <= last.wrapping_sub(first);
        let mut refused = None;
        let mut acked = false;
        loop {
            let data = match self.socket.recv_from_full() {
                Ok((data, _)) => data,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // More errors than the buffer held: the first one is kept.
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) && refused.is_some() => {
                    continue;
                }
                Err(e) => return Err(Failure::Io(e)),
            };
            for reply in Self::decode(&data)? {
                let seq = reply.header.sequence_number;
                if !ours(seq) {
                    continue;
                }
                if let NetlinkPayload::Error(e) = reply.payload {
                    match e.code {
                        Some(_) if refused.is_none() => {
                            refused = Some(Failure::Refused {
                                errno: e.to_io(),
                                seq,
                            })
                        }
                        Some(_) => {}
                        None => acked |= seq == last,
                    }
                }
            }
        }
        match refused {
            Some(f) => Err(f),
            None if acked => Ok(()),
            None => Err(Failure::Decode(format!(
                "no acknowledgement for batch message {last}"
            ))),
        }
    }
}

/// An rtnetlink message of the kinds we exchange: links, addresses and
/// routes. Its codec handles those kinds only, so a plugin links their
/// parsers and emitters and not those of every rtnetlink family (traffic
/// control, neighbour tables, ...): about 100 KiB less code to map at
/// every start. A reply of another kind is a decode error.
#[derive(Debug)]
pub struct Rt(pub RouteNetlinkMessage);

impl Rt {
    fn new(op: &'static str, msg: RouteNetlinkMessage) -> Result<Rt> {
        use RouteNetlinkMessage as M;
        match msg {
            M::NewLink(_) | M::DelLink(_) | M::GetLink(_) | M::SetLink(_) => Ok(Rt(msg)),
            M::NewAddress(_) | M::DelAddress(_) | M::GetAddress(_) => Ok(Rt(msg)),
            M::NewRoute(_) | M::DelRoute(_) | M::GetRoute(_) => Ok(Rt(msg)),
            other => Err(KernelError::Decode {
                op,
                detail: format!("unsupported rtnetlink request {:?}", other.message_type()),
            }),
        }
    }
}

impl NetlinkSerializable for Rt {
    fn message_type(&self) -> u16 {
        self.0.message_type()
    }

    fn buffer_len(&self) -> usize {
        use RouteNetlinkMessage as M;
        match &self.0 {
            M::NewLink(m) | M::DelLink(m) | M::GetLink(m) | M::SetLink(m) => m.buffer_len(),
            M::NewAddress(m) | M::DelAddress(m) | M::GetAddress(m) => m.buffer_len(),
            M::NewRoute(m) | M::DelRoute(m) | M::GetRoute(m) => m.buffer_len(),
            // Not constructible (`Rt::new`).
            _ => 0,
        }
    }

    fn serialize(&self, buffer: &mut [u8]) {
        use RouteNetlinkMessage as M;
        match &self.0 {
            M::NewLink(m) | M::DelLink(m) | M::GetLink(m) | M::SetLink(m) => m.emit(buffer),
            M::NewAddress(m) | M::DelAddress(m) | M::GetAddress(m) => m.emit(buffer),
            M::NewRoute(m) | M::DelRoute(m) | M::GetRoute(m) => m.emit(buffer),
            _ => {}
        }
    }
}

impl NetlinkDeserializable for Rt {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Rt, DecodeError> {
        use RouteNetlinkMessage as M;
        // RTM_* message types (linux/rtnetlink.h).
        let msg = match header.message_type {
            16 => M::NewLink(LinkMessage::parse(payload)?),
            17 => M::DelLink(LinkMessage::parse(payload)?),
            20 => M::NewAddress(AddressMessage::parse(payload)?),
            21 => M::DelAddress(AddressMessage::parse(payload)?),
            24 => M::NewRoute(RouteMessage::parse(payload)?),
            25 => M::DelRoute(RouteMessage::parse(payload)?),
            other => {
                return Err(DecodeError::from(format!(
                    "unexpected rtnetlink message type {other}"
                )));
            }
        };
        Ok(Rt(msg))
    }
}

/// The rtnetlink socket: requests built with `rtnetlink`'s message types.
pub struct Netlink {
    socket: Socket<Rt>,
}

impl Netlink {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink> {
        let socket = Socket::open(NETLINK_ROUTE)
            .map_err(|source| KernelError::Netlink { op: "open", source })?;
        Ok(Netlink { socket })
    }

    /// Send a request that changes state and wait for its acknowledgement.
    pub fn execute(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<()> {
        self.socket
            .request(Rt::new(op, msg)?, NLM_F_REQUEST | NLM_F_ACK | flags)
            .map(|_| ())
            .map_err(|f| f.into_kernel(op))
    }

    /// Send a dump request and collect every reply.
    pub fn dump(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.socket
            .request(Rt::new(op, msg)?, NLM_F_REQUEST | NLM_F_DUMP)
            .map(|r| r.messages.into_iter().map(|m| m.0).collect())
            .map_err(|f| f.into_kernel(op))
    }

    /// Send a request that answers with one object (a GET by name or index).
    pub fn get(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Option<RouteNetlinkMessage>> {
        self.socket
            .request(Rt::new(op, msg)?, NLM_F_REQUEST)
            .map(|r| r.messages.into_iter().next().map(|m| m.0))
            .map_err(|f| f.into_kernel(op))
    }
}
