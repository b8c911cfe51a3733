//! A small nfnetlink (NETLINK_NETFILTER) transport for nf_tables: send a batch
//! built by nftnl and collect its acknowledgements, and run GET requests and
//! dumps whose replies are parsed here (nftnl 0.9 cannot parse kernel
//! replies). Constants are from include/uapi/linux/netlink.h and
//! include/uapi/linux/netfilter/nf_tables.h.

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::error::{KernelError, Result};

pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_NEWSETELEM: u16 = 12;
pub const NFT_MSG_GETSETELEM: u16 = 13;

// Set element lists (NEWSETELEM/GETSETELEM) and the data they carry.
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
pub const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// NFT_JUMP: a verdict that continues in the named chain and comes back.
pub const NFT_JUMP: i32 = -3;
/// Marks an attribute whose payload is more attributes.
const NLA_F_NESTED: u16 = 0x8000;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
/// The type bits of `nla_type`, without NLA_F_NESTED and NLA_F_NET_BYTEORDER.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// A dump interrupted by concurrent changes is retried this many times.
const DUMP_ATTEMPTS: usize = 5;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message: its header fields and the payload after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Split a datagram into its netlink messages.
pub fn messages(mut buf: &[u8]) -> std::result::Result<Vec<Message<'_>>, String> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(format!(
                "netlink message length {len} out of bounds ({} bytes left)",
                buf.len()
            ));
        }
        out.push(Message {
            msg_type: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// The errno of an NLMSG_ERROR payload (0 for an acknowledgement).
fn error_code(payload: &[u8]) -> std::result::Result<i32, String> {
    payload
        .get(0..4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
        .ok_or_else(|| "short NLMSG_ERROR".to_owned())
}

/// The attributes of an nf_tables message: its payload after `nfgenmsg`
/// (the tests read raw messages with it; replies come through the sockets).
#[cfg(test)]
pub fn nft_attrs(payload: &[u8]) -> Attrs<'_> {
    Attrs(payload.get(4..).unwrap_or_default())
}

/// An iterator over netlink attributes as `(type, payload)`, type without the
/// nested/byte-order flags. Stops at the first malformed attribute.
#[derive(Debug, Clone)]
pub struct Attrs<'a>(pub &'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.0;
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            self.0 = &[];
            return None;
        }
        self.0 = &buf[align4(len).min(buf.len())..];
        Some((kind, &buf[4..len]))
    }
}

impl<'a> Attrs<'a> {
    /// The payload of the first attribute of type `kind`.
    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        Attrs(self.0).find(|(k, _)| *k == kind).map(|(_, v)| v)
    }

    /// A NUL-terminated string attribute.
    pub fn get_str(&self, kind: u16) -> Option<&'a str> {
        let v = self.get(kind)?;
        let v = v.split(|b| *b == 0).next().unwrap_or_default();
        std::str::from_utf8(v).ok()
    }

    /// A big-endian u32 attribute (nf_tables sends integers in network order).
    pub fn get_be32(&self, kind: u16) -> Option<u32> {
        self.get(kind)
            .and_then(|v| v.get(0..4))
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    }
}

/// Append one attribute (header, payload, padding) to `buf`.
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// A NUL-terminated string as an attribute payload.
pub fn strz(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The attributes of a GETSETELEM of set `set` in table `table`: with a
/// key, a request for that one element (the kernel answers with the
/// element, or ENOENT); without, the request of a dump of every element.
pub fn set_elem_request(table: &str, set: &str, key: Option<&[u8]>) -> Vec<u8> {
    let mut attrs = Vec::new();
    put_attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &strz(table));
    put_attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &strz(set));
    if let Some(key) = key {
        let mut value = Vec::new();
        put_attr(&mut value, NFTA_DATA_VALUE, key);
        let mut elem = Vec::new();
        put_attr(&mut elem, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &value);
        let mut list = Vec::new();
        put_attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
        put_attr(
            &mut attrs,
            NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
            &list,
        );
    }
    attrs
}

/// A verdict as the kernel reports it: the code (NF_ACCEPT, NF_DROP,
/// NFT_JUMP, ...) and, for a jump or goto, the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<'a> {
    pub code: i32,
    pub chain: Option<&'a str>,
}

impl Verdict<'_> {
    /// The chain a `jump` verdict continues in.
    pub fn jump(&self) -> Option<&str> {
        self.chain.filter(|_| self.code == NFT_JUMP)
    }
}

/// One element of a set or map as the kernel reports it: its key and, in a
/// verdict map, its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElem<'a> {
    pub key: &'a [u8],
    pub verdict: Option<Verdict<'a>>,
    /// In a data map, its data.
    pub data: Option<&'a [u8]>,
    /// Its userdata (nft's element comment).
    pub udata: Option<&'a [u8]>,
}

/// The elements of a NEWSETELEM message (the reply to a GETSETELEM, or one
/// message of a dump), given its attributes. Elements without a key are
/// skipped.
pub fn set_elements(attrs: Attrs<'_>) -> impl Iterator<Item = SetElem<'_>> {
    Attrs(attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS).unwrap_or_default())
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .filter_map(|(_, elem)| {
            let elem = Attrs(elem);
            let key = Attrs(elem.get(NFTA_SET_ELEM_KEY)?).get(NFTA_DATA_VALUE)?;
            let verdict = elem
                .get(NFTA_SET_ELEM_DATA)
                .and_then(|d| Attrs(d).get(NFTA_DATA_VERDICT))
                .and_then(|v| {
                    let v = Attrs(v);
                    Some(Verdict {
                        code: v.get_be32(NFTA_VERDICT_CODE)? as i32,
                        chain: v.get_str(NFTA_VERDICT_CHAIN),
                    })
                });
            let data = elem
                .get(NFTA_SET_ELEM_DATA)
                .and_then(|d| Attrs(d).get(NFTA_DATA_VALUE));
            let udata = elem.get(NFTA_SET_ELEM_USERDATA);
            Some(SetElem {
                key,
                verdict,
                data,
                udata,
            })
        })
}

/// The table and set a NEWSETELEM message is about.
pub fn set_elem_owner(attrs: Attrs<'_>) -> (Option<&str>, Option<&str>) {
    (
        attrs.get_str(NFTA_SET_ELEM_LIST_TABLE),
        attrs.get_str(NFTA_SET_ELEM_LIST_SET),
    )
}

/// A reply to a GET: its nf_tables message type and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub msg_type: u16,
    pub attrs: Vec<u8>,
}

impl Reply {
    pub fn attrs(&self) -> Attrs<'_> {
        Attrs(&self.attrs)
    }
}

/// The outcome of one request: the replies, the kernel's errno if it
/// refused, and whether a dump was interrupted by a concurrent change.
struct Exchange {
    replies: Vec<Reply>,
    error: Option<io::Error>,
    interrupted: bool,
}

/// A NETLINK_NETFILTER socket in the calling thread's network namespace.
pub struct NfSocket {
    socket: Socket,
    seq: u32,
    op: &'static str,
}

impl NfSocket {
    pub fn open(op: &'static str) -> Result<NfSocket> {
        let io = |source| KernelError::Netlink { op, source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        // Acks then carry only the header of the message they answer.
        let _ = socket.set_cap_ack(true);
        Ok(NfSocket { socket, seq: 0, op })
    }

    fn io(&self, source: io::Error) -> KernelError {
        KernelError::Netlink {
            op: self.op,
            source,
        }
    }

    fn decode(&self, detail: String) -> KernelError {
        KernelError::Decode {
            op: self.op,
            detail,
        }
    }

    /// Send a finalized batch in one datagram and read every reply. The kernel
    /// handles the batch inside `send`, so by the time it returns every
    /// acknowledgement is queued (nft reads them the same way). Returns the
    /// first error the kernel reported (the whole batch was then aborted), or
    /// Ok when every message that asked for an ack (`acked`) was acked.
    pub fn send_batch(
        &mut self,
        batch: &[u8],
        acked: std::ops::Range<u32>,
    ) -> Result<std::result::Result<(), io::Error>> {
        self.socket.send(batch, 0).map_err(|e| self.io(e))?;
        self.socket.set_non_blocking(true).map_err(|e| self.io(e))?;
        let mut seen = vec![false; acked.len()];
        let mut first_error = None;
        loop {
            let data = match self.socket.recv_from_full() {
                Ok((data, _)) => data,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(self.io(e)),
            };
            for m in messages(&data).map_err(|d| self.decode(d))? {
                if m.msg_type != NLMSG_ERROR {
                    continue;
                }
                let code = error_code(m.payload).map_err(|d| self.decode(d))?;
                if code != 0 {
                    first_error.get_or_insert(io::Error::from_raw_os_error(-code));
                } else if acked.contains(&m.seq) {
                    seen[(m.seq - acked.start) as usize] = true;
                }
            }
        }
        self.socket
            .set_non_blocking(false)
            .map_err(|e| self.io(e))?;
        if let Some(e) = first_error {
            return Ok(Err(e));
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(self.decode(format!(
                "no acknowledgement for batch message {}",
                acked.start + i as u32
            )));
        }
        Ok(Ok(()))
    }

    /// A GET for one object of `family` (REQUEST|ACK): its reply, or the
    /// kernel's errno (ENOENT when the object does not exist).
    pub fn get(
        &mut self,
        family: u8,
        msg_type: u16,
        attrs: &[u8],
    ) -> Result<std::result::Result<Option<Reply>, io::Error>> {
        let exchange = self.exchange(family, msg_type, NLM_F_REQUEST | NLM_F_ACK, attrs)?;
        Ok(match exchange.error {
            Some(e) => Err(e),
            None => Ok(exchange.replies.into_iter().next()),
        })
    }

    /// A dump (REQUEST|DUMP) of the objects of `family` (NFPROTO_UNSPEC: of
    /// every family): every reply, or the kernel's errno. A dump the kernel
    /// marks as interrupted by a concurrent change is retried.
    pub fn dump(
        &mut self,
        family: u8,
        msg_type: u16,
        attrs: &[u8],
    ) -> Result<std::result::Result<Vec<Reply>, io::Error>> {
        for _ in 0..DUMP_ATTEMPTS {
            let exchange = self.exchange(family, msg_type, NLM_F_REQUEST | NLM_F_DUMP, attrs)?;
            if let Some(e) = exchange.error {
                return Ok(Err(e));
            }
            if !exchange.interrupted {
                return Ok(Ok(exchange.replies));
            }
        }
        Ok(Err(io::Error::from_raw_os_error(nix::libc::EINTR)))
    }

    /// One nf_tables request, its replies kept.
    fn exchange(
        &mut self,
        family: u8,
        msg_type: u16,
        flags: u16,
        attrs: &[u8],
    ) -> Result<Exchange> {
        let mut replies = Vec::new();
        let (error, interrupted) = self.subsys_exchange(
            NFNL_SUBSYS_NFTABLES as u8,
            family,
            msg_type as u8,
            flags,
            attrs,
            |m| {
                replies.push(Reply {
                    msg_type: u16::from(m.msg_type),
                    attrs: m.attrs.to_vec(),
                })
            },
        )?;
        Ok(Exchange {
            replies,
            error,
            interrupted,
        })
    }
}

// Requests to any nfnetlink subsystem (ctnetlink and others), for callers
// that do not speak nf_tables: the subsystem is a parameter, a dump hands
// each message to a callback as it arrives instead of keeping them.

/// One message of an nfnetlink subsystem: its type within the subsystem, the
/// family of its `nfgenmsg` and its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubsysMessage<'a> {
    pub msg_type: u8,
    pub family: u8,
    pub attrs: &'a [u8],
}

/// A request to nfnetlink subsystem `subsys`: header, `nfgenmsg` (family,
/// NFNETLINK_V0, res_id 0) and attributes.
pub fn subsys_request(
    subsys: u8,
    msg_type: u8,
    flags: u16,
    seq: u32,
    family: u8,
    attrs: &[u8],
) -> Vec<u8> {
    let len = NLMSG_HDRLEN + 4 + attrs.len();
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&((u16::from(subsys) << 8) | u16::from(msg_type)).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    buf.extend_from_slice(&[family, 0, 0, 0]);
    buf.extend_from_slice(attrs);
    buf
}

/// The message `m` as one of subsystem `subsys`; None for another
/// subsystem, a control message, or a payload too short for `nfgenmsg`.
pub fn subsys_message<'a>(subsys: u8, m: &Message<'a>) -> Option<SubsysMessage<'a>> {
    if m.msg_type >> 8 != u16::from(subsys) || m.payload.len() < 4 {
        return None;
    }
    Some(SubsysMessage {
        msg_type: (m.msg_type & 0xff) as u8,
        family: m.payload[0],
        attrs: &m.payload[4..],
    })
}

/// The first attribute of type `kind` (flags masked) in `buf`, whole: its
/// header and payload without the trailing padding, as the kernel wrote it,
/// so it can be sent back unchanged. Same bounds rules as [`Attrs`].
pub fn raw_attr(mut buf: &[u8], kind: u16) -> Option<&[u8]> {
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        if len < 4 || len > buf.len() {
            return None;
        }
        if u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK == kind {
            return Some(&buf[..len]);
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
    None
}

/// Append whole attributes (from [`raw_attr`]) to `buf`, each padded.
pub fn put_raw_attr(buf: &mut Vec<u8>, raw: &[u8]) {
    buf.extend_from_slice(raw);
    buf.resize(align4(buf.len()), 0);
}

impl NfSocket {
    /// A dump (REQUEST|DUMP) of subsystem `subsys`: `each` sees every
    /// message of that subsystem as it arrives. Returns the kernel's errno
    /// if it refused, else whether the kernel marked the dump as interrupted
    /// by a concurrent change (the caller may then dump again).
    pub fn subsys_dump(
        &mut self,
        subsys: u8,
        family: u8,
        msg_type: u8,
        attrs: &[u8],
        each: impl FnMut(SubsysMessage<'_>),
    ) -> Result<std::result::Result<bool, io::Error>> {
        let flags = NLM_F_REQUEST | NLM_F_DUMP;
        let (error, interrupted) =
            self.subsys_exchange(subsys, family, msg_type, flags, attrs, each)?;
        Ok(match error {
            Some(e) => Err(e),
            None => Ok(interrupted),
        })
    }

    /// A request (REQUEST|ACK) to subsystem `subsys` that changes state:
    /// Ok once acknowledged, or the kernel's errno.
    pub fn subsys_ack(
        &mut self,
        subsys: u8,
        family: u8,
        msg_type: u8,
        attrs: &[u8],
    ) -> Result<std::result::Result<(), io::Error>> {
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        let (error, _) = self.subsys_exchange(subsys, family, msg_type, flags, attrs, |_| {})?;
        Ok(error.map_or(Ok(()), Err))
    }

    fn subsys_exchange(
        &mut self,
        subsys: u8,
        family: u8,
        msg_type: u8,
        flags: u16,
        attrs: &[u8],
        mut each: impl FnMut(SubsysMessage<'_>),
    ) -> Result<(Option<io::Error>, bool)> {
        self.seq = self.seq.wrapping_add(1);
        let buf = subsys_request(subsys, msg_type, flags, self.seq, family, attrs);
        self.socket.send(&buf, 0).map_err(|e| self.io(e))?;
        let mut interrupted = false;
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(|e| self.io(e))?;
            let msgs = messages(&data).map_err(|d| self.decode(d))?;
            if msgs.is_empty() {
                return Err(self.decode("empty datagram".to_owned()));
            }
            for m in msgs {
                if m.seq != self.seq {
                    continue; // a late reply to an earlier request
                }
                if m.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.msg_type {
                    NLMSG_ERROR => {
                        let code = error_code(m.payload).map_err(|d| self.decode(d))?;
                        let error = (code != 0).then(|| io::Error::from_raw_os_error(-code));
                        return Ok((error, interrupted));
                    }
                    NLMSG_DONE => {
                        // A dump that failed part way ends with its errno here.
                        let code = error_code(m.payload).unwrap_or(0);
                        let error = (code < 0).then(|| io::Error::from_raw_os_error(-code));
                        return Ok((error, interrupted));
                    }
                    _ => {
                        if let Some(sm) = subsys_message(subsys, &m) {
                            each(sm);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: usize, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u32).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v
    }

    #[test]
    fn attributes_round_trip_with_padding_and_flags() {
        let mut buf = Vec::new();
        put_attr(&mut buf, 1, &strz("cni-rs")); // 4 + 7 -> padded to 12
        put_attr(&mut buf, 3 | 0x8000, &[1, 2, 3, 4]); // nested flag is masked
        put_attr(&mut buf, 5, &7u32.to_be_bytes());
        assert_eq!(buf.len(), 12 + 8 + 8);
        let all: Vec<_> = Attrs(&buf).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1], (3, &[1u8, 2, 3, 4][..]));
        assert_eq!(Attrs(&buf).get_str(1), Some("cni-rs"));
        assert_eq!(Attrs(&buf).get_be32(5), Some(7));
        assert_eq!(Attrs(&buf).get(9), None);
    }

    #[test]
    fn malformed_attributes_end_the_iteration() {
        // A length past the end of the buffer.
        let buf = [40u8, 0, 1, 0, 0, 0, 0, 0];
        assert_eq!(Attrs(&buf).count(), 0);
        // A length shorter than the header.
        let buf = [2u8, 0, 1, 0];
        assert_eq!(Attrs(&buf).count(), 0);
        // Trailing bytes too short for a header.
        let mut buf = Vec::new();
        put_attr(&mut buf, 2, &[9, 9, 9, 9]);
        buf.extend_from_slice(&[1, 2]);
        assert_eq!(Attrs(&buf).count(), 1);
    }

    #[test]
    fn messages_are_split_and_bounds_checked() {
        let mut data = header(16 + 4 + 6, (10 << 8) | 3, 0x2, 7);
        data.extend_from_slice(&[1, 0, 0, 0]); // nfgenmsg
        data.extend_from_slice(&[6, 0, 3, 0, b'x', 0]); // attr "x"
        data.extend_from_slice(&[0, 0]); // padding
        let mut err = header(16 + 4, NLMSG_ERROR, 0, 8);
        err.extend_from_slice(&(-2i32).to_ne_bytes());
        data.extend_from_slice(&err);
        let msgs = messages(&data).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].msg_type, (10 << 8) | 3);
        assert_eq!(msgs[0].seq, 7);
        assert_eq!(nft_attrs(msgs[0].payload).get_str(3), Some("x"));
        assert_eq!(msgs[1].msg_type, NLMSG_ERROR);
        assert_eq!(error_code(msgs[1].payload), Ok(-2));

        let bad = header(64, NLMSG_DONE, 0, 1);
        assert!(messages(&bad).is_err());
    }

    #[test]
    fn requests_carry_the_nftables_subsystem_and_family() {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, 1, &strz("cni-rs"));
        let buf = subsys_request(
            NFNL_SUBSYS_NFTABLES as u8,
            NFT_MSG_GETCHAIN as u8,
            NLM_F_REQUEST | NLM_F_ACK,
            3,
            nix::libc::NFPROTO_INET as u8,
            &attrs,
        );
        let msgs = messages(&buf).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].msg_type, 0x0a04);
        assert_eq!(msgs[0].flags, 0x5);
        assert_eq!(&msgs[0].payload[..4], &[1, 0, 0, 0]);
        assert_eq!(nft_attrs(msgs[0].payload).get_str(1), Some("cni-rs"));
        assert_eq!(buf.len() % 4, 0);
    }

    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_attr(&mut v, kind, payload);
        v
    }

    /// One element as the kernel reports it: key, and optionally a verdict.
    fn element(key: &[u8], verdict: Option<(i32, Option<&str>)>) -> Vec<u8> {
        let mut e = nla(NFTA_SET_ELEM_KEY | NLA_F_NESTED, &nla(NFTA_DATA_VALUE, key));
        if let Some((code, chain)) = verdict {
            let mut v = nla(NFTA_VERDICT_CODE, &code.to_be_bytes());
            if let Some(chain) = chain {
                v.extend(nla(NFTA_VERDICT_CHAIN, &strz(chain)));
            }
            let data = nla(NFTA_DATA_VERDICT | NLA_F_NESTED, &v);
            e.extend(nla(NFTA_SET_ELEM_DATA | NLA_F_NESTED, &data));
        }
        e.extend(nla(3, &0u32.to_be_bytes())); // NFTA_SET_ELEM_FLAGS
        nla(NFTA_LIST_ELEM | NLA_F_NESTED, &e)
    }

    fn reply(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut r = nla(NFTA_SET_ELEM_LIST_TABLE, &strz("cni-rs"));
        r.extend(nla(NFTA_SET_ELEM_LIST_SET, &strz("masq4")));
        r.extend(nla(
            NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
            &elements.concat(),
        ));
        r
    }

    #[test]
    fn a_set_element_request_names_the_key() {
        let one = set_elem_request("cni-rs", "spoof", Some(b"veth0\0\0\0"));
        let attrs = Attrs(&one);
        assert_eq!(
            set_elem_owner(attrs.clone()),
            (Some("cni-rs"), Some("spoof"))
        );
        let elems: Vec<_> = set_elements(attrs).collect();
        assert_eq!(
            elems,
            [SetElem {
                key: b"veth0\0\0\0",
                verdict: None,
                data: None,
                udata: None,
            }]
        );
        // The element list is nested (NLA_F_NESTED), as libmnl writes it.
        let (_, list) = Attrs(&one).nth(2).unwrap();
        let header = &one[one.len() - list.len() - 4..][..4];
        assert_eq!(
            u16::from_ne_bytes([header[2], header[3]]),
            NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED
        );

        let dump = set_elem_request("cni-rs", "masq4", None);
        assert_eq!(Attrs(&dump).count(), 2);
        assert_eq!(set_elements(Attrs(&dump)).count(), 0);
    }

    #[test]
    fn set_elements_are_read_from_kernel_shaped_replies() {
        let r = reply(&[
            element(&[10, 1, 0, 5], Some((NFT_JUMP, Some("masq/n/a/eth0")))),
            element(&[10, 1, 0, 6], Some((1, None))), // accept
            element(&[10, 1, 0, 7], Some((-4, Some("masq/n/b/eth0")))), // goto
            element(&[10, 1, 0, 8], None),
            // No key: skipped.
            nla(NFTA_LIST_ELEM | NLA_F_NESTED, &nla(3, &0u32.to_be_bytes())),
        ]);
        let elems: Vec<_> = set_elements(Attrs(&r)).collect();
        assert_eq!(elems.len(), 4);
        assert_eq!(elems[0].key, [10, 1, 0, 5]);
        let jumps: Vec<Option<&str>> = elems
            .iter()
            .map(|e| e.verdict.as_ref().and_then(|v| v.jump()))
            .collect();
        assert_eq!(jumps, [Some("masq/n/a/eth0"), None, None, None]);
        assert_eq!(
            elems[1].verdict,
            Some(Verdict {
                code: 1,
                chain: None
            })
        );
        assert_eq!(elems[3].verdict, None);
        assert_eq!(set_elem_owner(Attrs(&r)), (Some("cni-rs"), Some("masq4")));

        // Nothing to read: no list, an empty list, a truncated element.
        assert_eq!(set_elements(Attrs(&[])).count(), 0);
        assert_eq!(set_elements(Attrs(&reply(&[]))).count(), 0);
        let mut cut = element(&[10, 1, 0, 5], Some((NFT_JUMP, Some("x"))));
        cut.truncate(cut.len() - 8);
        let cut = reply(&[cut]);
        assert!(set_elements(Attrs(&cut)).count() <= 1);
    }
}
