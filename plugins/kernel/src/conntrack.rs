//! Conntrack entries removed through ctnetlink (NETLINK_NETFILTER, subsystem
//! NFNL_SUBSYS_CTNETLINK), never by running `conntrack`: portmap deletes the
//! stale UDP entries of a mapped host port, which would otherwise keep
//! sending that port's traffic where it went before.
//!
//! The entries of one family are dumped, matched here on their original
//! direction (protocol and destination port), and each match is deleted by
//! sending its original tuple back as the kernel wrote it. Constants are from
//! include/uapi/linux/netfilter/nfnetlink_conntrack.h and nfnetlink.h.

use std::io;

use crate::error::{KernelError, Result};
use crate::nfnetlink::{self, Attrs, NfSocket};

const NFNL_SUBSYS_CTNETLINK: u8 = 1;
// enum cntl_msg_types
const IPCTNL_MSG_CT_GET: u8 = 1;
const IPCTNL_MSG_CT_DELETE: u8 = 2;
// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
// enum ctattr_tuple
const CTA_TUPLE_PROTO: u16 = 2;
// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;

const IPPROTO_UDP: u8 = 17;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// A dump the kernel marks as interrupted is done again this many times.
const DUMP_ATTEMPTS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn af(self) -> u8 {
        match self {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Delete every UDP conntrack entry of `family` in the calling thread's
/// network namespace whose ORIGINAL-direction destination port is `port`.
/// Returns how many were deleted. Entries that vanish meanwhile (ENOENT on
/// delete) are not errors.
pub fn flush_udp_dport(family: Family, port: u16) -> Result<usize, KernelError> {
    let mut socket = NfSocket::open("conntrack")?;
    let af = family.af();
    let refused = |op: &str, source: io::Error| KernelError::Conntrack {
        op: format!("{op} {} UDP entries to port {port}", family.name()),
        source,
    };
    let mut deleted = 0;
    for _ in 0..DUMP_ATTEMPTS {
        // Collect first, delete after: the socket answers one request at a
        // time, and the dump must be read to its end before the next.
        let mut stale = Vec::new();
        let interrupted = socket
            .subsys_dump(NFNL_SUBSYS_CTNETLINK, af, IPCTNL_MSG_CT_GET, &[], |m| {
                if m.family == af
                    && let Some(entry) = Entry::parse(m.attrs)
                    && entry.is_udp_to(port)
                {
                    stale.push(entry.delete_request());
                }
            })?
            .map_err(|e| refused("list", e))?;
        for attrs in stale {
            match socket.subsys_ack(NFNL_SUBSYS_CTNETLINK, af, IPCTNL_MSG_CT_DELETE, &attrs)? {
                Ok(()) => deleted += 1,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
                Err(e) => return Err(refused("delete", e)),
            }
        }
        if !interrupted {
            return Ok(deleted);
        }
    }
    Err(refused(
        "list",
        io::Error::from_raw_os_error(nix::libc::EINTR),
    ))
}

/// What one dumped entry (an IPCTNL_MSG_CT_NEW/GET message's attributes)
/// says that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry<'a> {
    /// CTA_TUPLE_ORIG, whole (header and payload) as the kernel wrote it.
    tuple: &'a [u8],
    /// CTA_ZONE, whole, when the entry is in a non-default zone.
    zone: Option<&'a [u8]>,
    /// CTA_PROTO_NUM of the original tuple.
    proto: Option<u8>,
    /// CTA_PROTO_DST_PORT of the original tuple (sent in network order).
    dport: Option<u16>,
}

impl<'a> Entry<'a> {
    /// None for an entry without an original tuple (nothing to delete it by).
    fn parse(attrs: &'a [u8]) -> Option<Entry<'a>> {
        let tuple = nfnetlink::raw_attr(attrs, CTA_TUPLE_ORIG)?;
        let l4 = Attrs(&tuple[4..]).get(CTA_TUPLE_PROTO).map(Attrs);
        let proto = l4
            .as_ref()
            .and_then(|a| a.get(CTA_PROTO_NUM))
            .and_then(|v| v.first().copied());
        let dport = l4
            .as_ref()
            .and_then(|a| a.get(CTA_PROTO_DST_PORT))
            .and_then(|v| v.get(0..2))
            .map(|b| u16::from_be_bytes([b[0], b[1]]));
        Some(Entry {
            tuple,
            zone: nfnetlink::raw_attr(attrs, CTA_ZONE),
            proto,
            dport,
        })
    }

    fn is_udp_to(&self, port: u16) -> bool {
        self.proto == Some(IPPROTO_UDP) && self.dport == Some(port)
    }

    /// The attributes of the IPCTNL_MSG_CT_DELETE for this entry. The tuple
    /// must be there: a delete without one flushes the whole table.
    fn delete_request(&self) -> Vec<u8> {
        let mut attrs = Vec::new();
        nfnetlink::put_raw_attr(&mut attrs, self.tuple);
        if let Some(zone) = self.zone {
            nfnetlink::put_raw_attr(&mut attrs, zone);
        }
        attrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnetlink::{messages, put_attr, subsys_message, subsys_request};

    const NESTED: u16 = 0x8000;
    const CTA_TUPLE_IP: u16 = 1;
    const CTA_IP_V4_SRC: u16 = 1;
    const CTA_IP_V4_DST: u16 = 2;
    const CTA_PROTO_SRC_PORT: u16 = 2;
    const CTA_TUPLE_REPLY: u16 = 2;
    const CTA_STATUS: u16 = 3;
    const CTA_TIMEOUT: u16 = 7;
    const CTA_ID: u16 = 12;

    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_attr(&mut v, kind, payload);
        v
    }

    /// A tuple as the kernel writes it: addresses, then protocol and ports.
    fn tuple(kind: u16, src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let ip = [nla(CTA_IP_V4_SRC, &src), nla(CTA_IP_V4_DST, &dst)].concat();
        let l4 = [
            nla(CTA_PROTO_NUM, &[proto]),
            nla(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
            nla(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        nla(
            kind | NESTED,
            &[
                nla(CTA_TUPLE_IP | NESTED, &ip),
                nla(CTA_TUPLE_PROTO | NESTED, &l4),
            ]
            .concat(),
        )
    }

    /// An entry's attributes, in the kernel's order, with an optional zone.
    fn entry(proto: u8, dport: u16, zone: Option<u16>) -> Vec<u8> {
        let mut v = tuple(
            CTA_TUPLE_ORIG,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            proto,
            1000,
            dport,
        );
        v.extend(tuple(
            CTA_TUPLE_REPLY,
            [10, 0, 0, 2],
            [10, 0, 0, 1],
            proto,
            dport,
            1000,
        ));
        if let Some(z) = zone {
            v.extend(nla(CTA_ZONE, &z.to_be_bytes()));
        }
        v.extend(nla(CTA_STATUS, &8u32.to_be_bytes()));
        v.extend(nla(CTA_TIMEOUT, &30u32.to_be_bytes()));
        v.extend(nla(CTA_ID, &0xdead_beefu32.to_be_bytes()));
        v
    }

    #[test]
    fn the_original_direction_is_matched_not_the_reply() {
        let udp = entry(IPPROTO_UDP, 5353, None);
        let e = Entry::parse(&udp).unwrap();
        assert_eq!(e.proto, Some(17));
        assert_eq!(e.dport, Some(5353));
        assert_eq!(e.zone, None);
        assert!(e.is_udp_to(5353));
        // The reply tuple's destination port is 1000: not a match.
        assert!(!e.is_udp_to(1000));

        let tcp = entry(6, 5353, None);
        assert!(!Entry::parse(&tcp).unwrap().is_udp_to(5353));
        // Port bytes are read in network order: 5353 = 0x14e9, not 0xe914.
        let other = entry(IPPROTO_UDP, 0xe914, None);
        assert!(!Entry::parse(&other).unwrap().is_udp_to(5353));
    }

    #[test]
    fn the_delete_request_carries_the_tuple_and_zone_as_received() {
        let attrs = entry(IPPROTO_UDP, 5353, Some(7));
        let e = Entry::parse(&attrs).unwrap();
        let orig = tuple(CTA_TUPLE_ORIG, [10, 0, 0, 1], [10, 0, 0, 2], 17, 1000, 5353);
        // Byte for byte, the nested flag included.
        assert_eq!(e.tuple, &orig[..]);
        assert_eq!(e.zone, Some(&nla(CTA_ZONE, &7u16.to_be_bytes())[..6]));

        let req = e.delete_request();
        assert_eq!(req.len() % 4, 0);
        let kinds: Vec<u16> = Attrs(&req).map(|(k, _)| k).collect();
        assert_eq!(kinds, [CTA_TUPLE_ORIG, CTA_ZONE]);
        assert_eq!(&req[..orig.len()], &orig[..]);
        assert_eq!(Attrs(&req).get(CTA_ZONE), Some(&7u16.to_be_bytes()[..]));

        // Without a zone, only the tuple.
        let attrs = entry(IPPROTO_UDP, 5353, None);
        assert_eq!(Entry::parse(&attrs).unwrap().delete_request(), orig);
    }

    #[test]
    fn incomplete_entries_never_match() {
        // No original tuple: nothing to delete by.
        let reply_only = tuple(
            CTA_TUPLE_REPLY,
            [10, 0, 0, 2],
            [10, 0, 0, 1],
            17,
            5353,
            1000,
        );
        assert_eq!(Entry::parse(&reply_only), None);
        assert_eq!(Entry::parse(&[]), None);
        // A tuple without its protocol part.
        let ip_only = nla(
            CTA_TUPLE_ORIG | NESTED,
            &nla(CTA_TUPLE_IP | NESTED, &nla(CTA_IP_V4_SRC, &[10, 0, 0, 1])),
        );
        let e = Entry::parse(&ip_only).unwrap();
        assert_eq!((e.proto, e.dport), (None, None));
        assert!(!e.is_udp_to(5353));
        // A truncated port.
        let l4 = [nla(CTA_PROTO_NUM, &[17]), nla(CTA_PROTO_DST_PORT, &[0x14])].concat();
        let short = nla(CTA_TUPLE_ORIG | NESTED, &nla(CTA_TUPLE_PROTO | NESTED, &l4));
        assert!(!Entry::parse(&short).unwrap().is_udp_to(5353));
        // An attribute running past the end of the message.
        let mut cut = entry(IPPROTO_UDP, 5353, None);
        cut[0] = 0xff;
        assert_eq!(Entry::parse(&cut), None);
    }

    #[test]
    fn requests_and_replies_are_ctnetlink_messages() {
        let attrs = entry(IPPROTO_UDP, 5353, None);
        let req = subsys_request(
            NFNL_SUBSYS_CTNETLINK,
            IPCTNL_MSG_CT_DELETE,
            0x5,
            9,
            AF_INET6,
            &attrs,
        );
        let msgs = messages(&req).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].msg_type, 0x0102);
        assert_eq!(msgs[0].flags, 0x5);
        assert_eq!(msgs[0].seq, 9);
        assert_eq!(&msgs[0].payload[..4], &[10, 0, 0, 0]);
        let dump = subsys_request(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET, 0x301, 1, 2, &[]);
        assert_eq!(messages(&dump).unwrap()[0].msg_type, 0x0101);
        assert_eq!(dump.len(), 20);

        // A reply read back: its family, type and attributes.
        let m = subsys_message(NFNL_SUBSYS_CTNETLINK, &msgs[0]).unwrap();
        assert_eq!((m.msg_type, m.family), (IPCTNL_MSG_CT_DELETE, AF_INET6));
        assert!(Entry::parse(m.attrs).unwrap().is_udp_to(5353));
        // Not ours: another subsystem (nf_tables), or too short.
        let nft = subsys_request(10, 1, 0, 1, 2, &[]);
        assert_eq!(subsys_message(1, &messages(&nft).unwrap()[0]), None);
        let mut short = messages(&dump).unwrap()[0].clone();
        short.payload = &[2, 0];
        assert_eq!(subsys_message(1, &short), None);
    }

    #[test]
    fn raw_attributes_are_found_whole() {
        let mut buf = nla(1, &[1, 2, 3]); // 7 bytes, padded to 8
        buf.extend(nla(5 | NESTED, &[9; 6]));
        assert_eq!(nfnetlink::raw_attr(&buf, 1), Some(&buf[..7]));
        assert_eq!(nfnetlink::raw_attr(&buf, 5), Some(&buf[8..18]));
        assert_eq!(nfnetlink::raw_attr(&buf, 2), None);
        let mut out = Vec::new();
        nfnetlink::put_raw_attr(&mut out, &buf[..7]);
        assert_eq!(out, &buf[..8]);
        // Malformed lengths end the search.
        assert_eq!(nfnetlink::raw_attr(&[2, 0, 1, 0], 1), None);
        assert_eq!(nfnetlink::raw_attr(&[40, 0, 1, 0, 0, 0], 1), None);
    }
}
