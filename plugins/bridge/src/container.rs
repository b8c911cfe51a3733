//! The container side: the interface's sysctls, addresses, state and routes.

use cni_kernel::packet_route::address::AddressFlags;
use cni_kernel::{Link, Netlink, Netns, RouteSpec, RtRequest, sysctl};
use cni_types::{IpConfig, Route};

use crate::error::Result;
use crate::host::gateway_for;

pub struct Setup<'a> {
    pub ifname: &'a str,
    pub ips: &'a [IpConfig],
    pub routes: &'a [Route],
    pub enable_dad: bool,
    pub up: bool,
}

/// Configure the container interface through `nl`, a socket already open in
/// `netns`, and return it (its MAC and MTU were fixed when it was created).
pub fn configure(netns: &Netns, nl: &mut Netlink, s: &Setup) -> Result<Link> {
    let if_ = s.ifname;
    let has_v6 = s.ips.iter().any(|i| i.address.is_ipv6());
    let link = nl.require_link(if_)?;
    if has_v6 {
        let now = link.ipv6;
        netns.run(|| sysctl::prepare_container_iface_v6(if_, s.enable_dad, now))??;
    }
    // One datagram, carried out in order; on failure the caller deletes
    // the interface, and whatever was applied goes with it.
    // Neighbours learn the new MAC at once (gratuitous ARP on up).
    let mut requests = vec![RtRequest::set_inet_conf(link.index, |c| c.arp_notify = 1)];
    for ip in s.ips {
        requests.push(RtRequest::add_address(
            link.index,
            ip.address,
            AddressFlags::empty(),
        ));
    }
    if s.up {
        requests.push(RtRequest::set_link_up(link.index, true));
    }
    for r in s.routes {
        requests.push(RtRequest::add_route(&route_spec(r, s.ips, link.index))?);
    }
    nl.execute_all(requests)?;
    Ok(link)
}

/// A result route as installed: without a gateway it goes via the gateway of
/// its family, as the reference does, or is on-link when there is none.
pub fn route_spec(r: &Route, ips: &[IpConfig], oif: u32) -> RouteSpec {
    RouteSpec {
        dst: r.dst,
        gw: r.gw.or_else(|| gateway_for(ips, r.dst.ip())),
        oif: Some(oif),
        mtu: r.mtu,
        adv_mss: r.adv_mss,
        priority: r.priority,
        table: r.table,
        scope: r.scope,
        src: None,
    }
}
