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

use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ProtoTuple, Protocol, Tuple};

use crate::error::{KernelError, Result};
use crate::nfnetlink::NfSocket;

/// CTA_ZONE (enum ctattr_type), which the message crate does not type.
const CTA_ZONE: u16 = 18;
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
        let (entries, interrupted) = socket.conntrack_dump(af)?.map_err(|e| refused("list", e))?;
        let stale = entries.iter().filter_map(|attrs| Entry::parse(attrs));
        for entry in stale.filter(|e| e.is_udp_to(port)).collect::<Vec<_>>() {
            match socket.conntrack_delete(af, entry.delete_request())? {
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

/// What one dumped entry says that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry<'a> {
    /// CTA_TUPLE_ORIG, as the kernel wrote it.
    tuple: &'a [Tuple],
    /// CTA_ZONE, when the entry is in a non-default zone.
    zone: Option<&'a ConntrackAttribute>,
    /// The protocol of the original tuple.
    proto: Option<u8>,
    /// The destination port of the original tuple.
    dport: Option<u16>,
}

impl<'a> Entry<'a> {
    /// None for an entry without an original tuple (nothing to delete it by).
    fn parse(attrs: &'a [ConntrackAttribute]) -> Option<Entry<'a>> {
        let tuple = attrs.iter().find_map(|a| match a {
            ConntrackAttribute::CtaTupleOrig(t) => Some(t.as_slice()),
            _ => None,
        })?;
        let l4 = tuple.iter().find_map(|t| match t {
            Tuple::Proto(p) => Some(p),
            _ => None,
        });
        let l4 = l4.map(Vec::as_slice).unwrap_or_default();
        Some(Entry {
            tuple,
            zone: attrs.iter().find(|a| {
                matches!(a, ConntrackAttribute::Other(n)
                    if netlink_packet_core::Nla::kind(n) & 0x3fff == CTA_ZONE)
            }),
            proto: l4.iter().find_map(|p| match p {
                ProtoTuple::Protocol(p) => Some(u8::from(*p)),
                _ => None,
            }),
            dport: l4.iter().find_map(|p| match p {
                ProtoTuple::DestinationPort(p) => Some(*p),
                _ => None,
            }),
        })
    }

    fn is_udp_to(&self, port: u16) -> bool {
        self.proto == Some(u8::from(Protocol::Udp)) && self.dport == Some(port)
    }

    /// The attributes of the IPCTNL_MSG_CT_DELETE for this entry. The tuple
    /// must be there: a delete without one flushes the whole table.
    fn delete_request(&self) -> Vec<ConntrackAttribute> {
        let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(self.tuple.to_vec())];
        attrs.extend(self.zone.cloned());
        attrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DefaultNla, Emitable, NlaBuffer, NlasIterator, Parseable};
    use netlink_packet_netfilter::conntrack::IPTuple;

    fn tuple(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(src.into()),
                IPTuple::DestinationAddress(dst.into()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::from(proto)),
                ProtoTuple::SourcePort(sport),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    }

    fn zone(z: u16) -> ConntrackAttribute {
        ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, z.to_be_bytes().to_vec()))
    }

    /// An entry's attributes as the kernel sends them (written, then read
    /// back by the message crate), with an optional zone.
    fn entry(proto: u8, dport: u16, z: Option<u16>) -> Vec<ConntrackAttribute> {
        let mut attrs = vec![
            ConntrackAttribute::CtaTupleOrig(tuple(
                [10, 0, 0, 1],
                [10, 0, 0, 2],
                proto,
                1000,
                dport,
            )),
            ConntrackAttribute::CtaTupleReply(tuple(
                [10, 0, 0, 2],
                [10, 0, 0, 1],
                proto,
                dport,
                1000,
            )),
            ConntrackAttribute::CtaTimeout(30),
        ];
        attrs.extend(z.map(zone));
        let mut buf = vec![0u8; attrs.as_slice().buffer_len()];
        attrs.as_slice().emit(&mut buf);
        NlasIterator::new(&buf[..])
            .map(|nla| ConntrackAttribute::parse(&nla.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn the_original_direction_is_matched_not_the_reply() {
        let udp = entry(17, 5353, None);
        let e = Entry::parse(&udp).unwrap();
        assert_eq!(e.proto, Some(17));
        assert_eq!(e.dport, Some(5353));
        assert_eq!(e.zone, None);
        assert!(e.is_udp_to(5353));
        // The reply tuple's destination port is 1000: not a match.
        assert!(!e.is_udp_to(1000));

        let tcp = entry(6, 5353, None);
        assert!(!Entry::parse(&tcp).unwrap().is_udp_to(5353));
        let other = entry(17, 0xe914, None);
        assert!(!Entry::parse(&other).unwrap().is_udp_to(5353));
    }

    #[test]
    fn the_delete_request_carries_the_tuple_and_zone_as_received() {
        let attrs = entry(17, 5353, Some(7));
        let e = Entry::parse(&attrs).unwrap();
        let req = e.delete_request();
        assert_eq!(req.len(), 2);
        assert_eq!(req[0], attrs[0], "the original tuple, as received");
        assert_eq!(req[1], zone(7));
        // Written, the tuple's ports are in network order.
        let mut buf = vec![0u8; req.as_slice().buffer_len()];
        req.as_slice().emit(&mut buf);
        let dport = 5353u16.to_be_bytes();
        assert!(buf.windows(2).any(|w| w == dport));
        let first = NlaBuffer::new_checked(&buf[..]).unwrap();
        assert_eq!(first.kind() & 0x3fff, 1, "CTA_TUPLE_ORIG first");

        // Without a zone, only the tuple.
        let attrs = entry(17, 5353, None);
        assert_eq!(Entry::parse(&attrs).unwrap().delete_request().len(), 1);
    }

    #[test]
    fn incomplete_entries_never_match() {
        // No original tuple: nothing to delete by.
        let reply_only = vec![ConntrackAttribute::CtaTupleReply(tuple(
            [10, 0, 0, 2],
            [10, 0, 0, 1],
            17,
            5353,
            1000,
        ))];
        assert_eq!(Entry::parse(&reply_only), None);
        assert_eq!(Entry::parse(&[]), None);
        // A tuple without its protocol part.
        let ip_only = vec![ConntrackAttribute::CtaTupleOrig(vec![Tuple::Ip(vec![
            IPTuple::SourceAddress([10, 0, 0, 1].into()),
        ])])];
        let e = Entry::parse(&ip_only).unwrap();
        assert_eq!((e.proto, e.dport), (None, None));
        assert!(!e.is_udp_to(5353));
    }
}
