//! One blocking netlink socket type for every family we speak (rtnetlink
//! for links, addresses and routes; nfnetlink for nf_tables and conntrack),
//! generic over the message type of the family: one request, then its
//! acknowledgement or its dump; or a batch of requests in one datagram. A
//! plugin makes a handful of requests per run, so a synchronous exchange is
//! all it needs, and it keeps plugin code top to bottom.

use std::io;
use std::marker::PhantomData;
use std::os::fd::AsFd;

use netlink_packet_core::{DecodeError, DefaultNla, Emitable, NlasIterator, Parseable};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_ECHO, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_sys::{SocketAddr, protocols::NETLINK_ROUTE};
use nix::sys::socket::{setsockopt, sockopt};

use crate::error::{KernelError, Result};
use crate::link::Link;

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

    /// Strict checking of requests (NETLINK_GET_STRICT_CHK), which also
    /// makes the kernel filter dumps by the request's fields.
    pub fn set_strict(&self, on: bool) -> io::Result<()> {
        self.socket.set_netlink_get_strict_chk(on)
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
/// routes, and a family's settings (netconf). Its codec handles those kinds
/// only, so a plugin links their parsers and emitters and not those of
/// every rtnetlink family (traffic control, neighbour tables, ...): about
/// 100 KiB less code to map at every start. A reply of another kind is a
/// decode error.
#[derive(Debug)]
pub enum Rt {
    /// A request, or an address or route reply.
    Route(RouteNetlinkMessage),
    /// A link reply (RTM_NEWLINK), read by [`Link::parse`].
    Link(Link),
    NetConf(NetConf),
}

/// RTM_GETNETCONF / RTM_NEWNETCONF, which netlink-packet-route lacks: a
/// family's settings for one interface or for all (`net.ipv4.conf.all.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub message_type: u16,
    pub family: u8,
    pub attributes: Vec<DefaultNla>,
}

impl NetConf {
    /// NETCONFA_FORWARDING.
    pub const FORWARDING: u16 = 2;

    /// The value of a 32-bit attribute (they all are).
    pub fn value(&self, kind: u16) -> Option<i32> {
        use netlink_packet_core::Nla;
        let nla = self.attributes.iter().find(|a| a.kind() == kind)?;
        if nla.value_len() != 4 {
            return None;
        }
        let mut bytes = [0u8; 4];
        nla.emit_value(&mut bytes);
        Some(i32::from_ne_bytes(bytes))
    }
}

pub const RTM_NEWNETCONF: u16 = 80;
pub const RTM_GETNETCONF: u16 = 82;
/// struct netconfmsg is one byte (the family), padded to four.
const NETCONF_HEADER_LEN: usize = 4;

impl Rt {
    fn new(op: &'static str, msg: RouteNetlinkMessage) -> Result<Rt> {
        use RouteNetlinkMessage as M;
        match msg {
            M::NewLink(_) | M::DelLink(_) | M::GetLink(_) | M::SetLink(_) => Ok(Rt::Route(msg)),
            M::NewAddress(_) | M::DelAddress(_) | M::GetAddress(_) => Ok(Rt::Route(msg)),
            M::NewRoute(_) | M::DelRoute(_) | M::GetRoute(_) => Ok(Rt::Route(msg)),
            other => Err(KernelError::Decode {
                op,
                detail: format!("unsupported rtnetlink request {:?}", other.message_type()),
            }),
        }
    }
}

impl NetlinkSerializable for Rt {
    fn message_type(&self) -> u16 {
        match self {
            Rt::Route(m) => m.message_type(),
            Rt::Link(_) => 16,
            Rt::NetConf(c) => c.message_type,
        }
    }

    fn buffer_len(&self) -> usize {
        use RouteNetlinkMessage as M;
        match self {
            Rt::Route(M::NewLink(m) | M::DelLink(m) | M::GetLink(m) | M::SetLink(m)) => {
                m.buffer_len()
            }
            Rt::Route(M::NewAddress(m) | M::DelAddress(m) | M::GetAddress(m)) => m.buffer_len(),
            Rt::Route(M::NewRoute(m) | M::DelRoute(m) | M::GetRoute(m)) => m.buffer_len(),
            // Not constructible (`Rt::new`), or replies only.
            Rt::Route(_) | Rt::Link(_) => 0,
            Rt::NetConf(c) => NETCONF_HEADER_LEN + c.attributes.as_slice().buffer_len(),
        }
    }

    fn serialize(&self, buffer: &mut [u8]) {
        use RouteNetlinkMessage as M;
        match self {
            Rt::Route(M::NewLink(m) | M::DelLink(m) | M::GetLink(m) | M::SetLink(m)) => {
                m.emit(buffer)
            }
            Rt::Route(M::NewAddress(m) | M::DelAddress(m) | M::GetAddress(m)) => m.emit(buffer),
            Rt::Route(M::NewRoute(m) | M::DelRoute(m) | M::GetRoute(m)) => m.emit(buffer),
            Rt::Route(_) | Rt::Link(_) => {}
            Rt::NetConf(c) => {
                buffer[..NETCONF_HEADER_LEN].copy_from_slice(&[c.family, 0, 0, 0]);
                c.attributes
                    .as_slice()
                    .emit(&mut buffer[NETCONF_HEADER_LEN..]);
            }
        }
    }
}

impl NetlinkDeserializable for Rt {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Rt, DecodeError> {
        use RouteNetlinkMessage as M;
        // RTM_* message types (linux/rtnetlink.h).
        let msg = match header.message_type {
            16 => return Ok(Rt::Link(Link::parse(payload)?)),
            20 => M::NewAddress(AddressMessage::parse(payload)?),
            21 => M::DelAddress(AddressMessage::parse(payload)?),
            24 => M::NewRoute(RouteMessage::parse(payload)?),
            25 => M::DelRoute(RouteMessage::parse(payload)?),
            RTM_NEWNETCONF => {
                let (Some(&family), Some(rest)) =
                    (payload.first(), payload.get(NETCONF_HEADER_LEN..))
                else {
                    return Err(DecodeError::from("netconf message too short"));
                };
                let mut attributes = Vec::new();
                for nla in NlasIterator::new(rest) {
                    attributes.push(DefaultNla::parse(&nla?)?);
                }
                return Ok(Rt::NetConf(NetConf {
                    message_type: RTM_NEWNETCONF,
                    family,
                    attributes,
                }));
            }
            other => {
                return Err(DecodeError::from(format!(
                    "unexpected rtnetlink message type {other}"
                )));
            }
        };
        Ok(Rt::Route(msg))
    }
}

/// One state-changing rtnetlink request: what it is called in errors, the
/// message, and its extra flags (NLM_F_CREATE, NLM_F_EXCL, ...). Built by
/// the constructors beside each kind of object (link, addr, route).
#[derive(Debug)]
pub struct RtRequest {
    pub op: &'static str,
    pub msg: RouteNetlinkMessage,
    pub flags: u16,
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

    /// Like [`Netlink::execute`], asking the kernel to echo the object it
    /// made (NLM_F_ECHO): what it sends back, if anything (kernels before
    /// 6.3 do not echo a new link).
    pub fn execute_echo(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<Rt>> {
        self.socket
            .request(
                Rt::new(op, msg)?,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO | flags,
            )
            .map(|r| r.messages)
            .map_err(|f| f.into_kernel(op))
    }

    /// Send a dump request that the kernel filters by the fields it sets
    /// (NETLINK_GET_STRICT_CHK: e.g. one link's addresses instead of every
    /// address on the machine). Older kernels ignore the filter and answer
    /// everything, so callers filter too.
    pub fn dump_filtered(&mut self, op: &'static str, msg: RouteNetlinkMessage) -> Result<Vec<Rt>> {
        let strict = self.socket.set_strict(true).is_ok();
        let out = self.dump(op, msg);
        if strict {
            // Later requests are not written for strict checking.
            self.socket
                .set_strict(false)
                .map_err(|source| KernelError::Netlink { op, source })?;
        }
        out
    }

    /// Send `requests` together in one datagram: the kernel carries them
    /// out in order within the one `send`, and its acknowledgement of the
    /// last (or the first refusal) is read back. A refusal does not stop
    /// the requests after it, so this is for steps whose failure is undone
    /// as a whole (an interface that is deleted on failure).
    pub fn execute_all(&mut self, requests: Vec<RtRequest>) -> Result<()> {
        let Some(n) = u32::try_from(requests.len()).ok().filter(|n| *n > 0) else {
            return Ok(());
        };
        let first = self.socket.reserve_seq(n);
        let last = first.wrapping_add(n - 1);
        let mut datagram = Vec::new();
        let mut ops = Vec::with_capacity(requests.len());
        for (seq, r) in (first..).zip(requests) {
            // Refusals are always answered; only the last asks for an ack.
            let ack = if seq == last { NLM_F_ACK } else { 0 };
            let msg = Rt::new(r.op, r.msg)?;
            Socket::encode(&mut datagram, msg, NLM_F_REQUEST | ack | r.flags, seq);
            ops.push(r.op);
        }
        self.socket
            .send_batch(&datagram, first, last)
            .map_err(|f| match f {
                Failure::Refused { seq, .. } => {
                    let op = ops[seq.wrapping_sub(first) as usize];
                    f.into_kernel(op)
                }
                f => f.into_kernel(ops[0]),
            })
    }

    /// Send one request and wait for its acknowledgement.
    pub fn send(&mut self, r: RtRequest) -> Result<()> {
        self.execute(r.op, r.msg, r.flags)
    }

    /// Send a dump request and collect every reply.
    pub fn dump(&mut self, op: &'static str, msg: RouteNetlinkMessage) -> Result<Vec<Rt>> {
        self.socket
            .request(Rt::new(op, msg)?, NLM_F_REQUEST | NLM_F_DUMP)
            .map(|r| r.messages)
            .map_err(|f| f.into_kernel(op))
    }

    /// A family's settings for all interfaces (`net.ipv4.conf.all.*`, which
    /// is also `net.ipv4.ip_forward`), or `None` where the kernel does not
    /// answer RTM_GETNETCONF.
    pub fn netconf_all(&mut self, family: u8) -> Result<Option<NetConf>> {
        // NETCONFA_IFINDEX = NETCONFA_IFINDEX_ALL (-1).
        let req = NetConf {
            message_type: RTM_GETNETCONF,
            family,
            attributes: vec![DefaultNla::new(1, (-1i32).to_ne_bytes().to_vec())],
        };
        match self.socket.request(Rt::NetConf(req), NLM_F_REQUEST) {
            Ok(r) => Ok(r.messages.into_iter().find_map(|m| match m {
                Rt::NetConf(c) => Some(c),
                _ => None,
            })),
            Err(Failure::Refused { errno, .. })
                if errno.raw_os_error() == Some(nix::libc::EOPNOTSUPP) =>
            {
                Ok(None)
            }
            Err(f) => Err(f.into_kernel("get netconf")),
        }
    }

    /// Send a request that answers with one object (a GET by name or index).
    pub fn get(&mut self, op: &'static str, msg: RouteNetlinkMessage) -> Result<Option<Rt>> {
        self.socket
            .request(Rt::new(op, msg)?, NLM_F_REQUEST)
            .map(|r| r.messages.into_iter().next())
            .map_err(|f| f.into_kernel(op))
    }
}
