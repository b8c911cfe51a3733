//! Interface addresses.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::AddressMessageBuilder;

use crate::error::Result;
use crate::netlink::{Netlink, Rt, RtRequest};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The link the address is on.
    pub index: u32,
    /// The address with its prefix length (host bits kept).
    pub addr: IpNetwork,
}

impl Address {
    fn from_message(m: AddressMessage) -> Option<Address> {
        // IPv4 point-to-point links carry the peer in IFA_ADDRESS and our own
        // address in IFA_LOCAL; prefer the latter.
        let mut addr = None;
        for attr in &m.attributes {
            match attr {
                AddressAttribute::Local(a) => addr = Some(*a),
                AddressAttribute::Address(a) if addr.is_none() => addr = Some(*a),
                _ => {}
            }
        }
        let addr = IpNetwork::new(addr?, m.header.prefix_len).ok()?;
        Some(Address {
            index: m.header.index,
            addr,
        })
    }
}

fn message(index: u32, addr: IpNetwork) -> AddressMessage {
    let builder = match addr.ip() {
        IpAddr::V4(a) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .address(a, addr.prefix())
            .build(),
        IpAddr::V6(a) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .address(a, addr.prefix())
            .build(),
    };
    let mut msg = builder;
    msg.header.index = index;
    msg
}

impl RtRequest {
    /// Add an address, with `flags` (`Nodad`, `Noprefixroute`) if not
    /// empty; EEXIST if the link already has it.
    pub fn add_address(index: u32, addr: IpNetwork, flags: AddressFlags) -> RtRequest {
        let mut msg = message(index, addr);
        if !flags.is_empty() {
            msg.attributes.push(AddressAttribute::Flags(flags));
        }
        RtRequest {
            op: "add address",
            msg: RouteNetlinkMessage::NewAddress(msg),
            flags: NLM_F_CREATE | NLM_F_EXCL,
        }
    }
}

impl Netlink {
    /// Addresses of one link (`Some(index)`) or of all links.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>> {
        let mut req = AddressMessage::default();
        req.header.index = index.unwrap_or(0);
        let req = RouteNetlinkMessage::GetAddress(req);
        Ok(self
            .dump_filtered("list addresses", req)?
            .into_iter()
            .filter_map(|m| match m {
                Rt::Route(RouteNetlinkMessage::NewAddress(m)) => Address::from_message(m),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }

    /// Add an address; EEXIST if the link already has it.
    pub fn add_address(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        self.send(RtRequest::add_address(index, addr, AddressFlags::empty()))
    }

    /// Add an address that skips duplicate address detection (IPv6), so it
    /// is usable at once instead of after a second of "tentative".
    pub fn add_address_nodad(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        self.add_address_with(index, addr, AddressFlags::Nodad)
    }

    /// Add an address with flags: `Nodad`, or `Noprefixroute` (the kernel
    /// adds no route to the address's subnet through the link).
    pub fn add_address_with(
        &mut self,
        index: u32,
        addr: IpNetwork,
        flags: AddressFlags,
    ) -> Result<()> {
        self.send(RtRequest::add_address(index, addr, flags))
    }

    pub fn del_address(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        let msg = RouteNetlinkMessage::DelAddress(message(index, addr));
        self.execute("delete address", msg, 0)
    }
}
