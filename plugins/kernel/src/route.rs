//! Routes.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteScope,
};
use rtnetlink::RouteMessageBuilder;

use crate::error::{KernelError, Result};
use crate::netlink::{Netlink, Rt, RtRequest};

/// A route as the plugins install and check it (the CNI 1.1 route fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    pub mtu: Option<u32>,
    pub adv_mss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
    /// The preferred source address (`src` to `ip route`).
    pub src: Option<IpAddr>,
}

impl RouteSpec {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>, oif: Option<u32>) -> Self {
        RouteSpec {
            dst,
            gw,
            oif,
            mtu: None,
            adv_mss: None,
            priority: None,
            table: None,
            scope: None,
            src: None,
        }
    }

    fn to_message(&self) -> Result<RouteMessage> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.network(), self.dst.prefix())
            .map_err(invalid)?;
        if let Some(gw) = self.gw {
            b = b.gateway(gw).map_err(invalid)?;
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if let Some(p) = self.priority {
            b = b.priority(p);
        }
        if let Some(t) = self.table {
            b = b.table_id(t);
        }
        if let Some(s) = self.scope {
            b = b.scope(RouteScope::from(s));
        } else if self.gw.is_none() {
            // A route without a gateway is on-link, as `ip route add` assumes.
            b = b.scope(RouteScope::Link);
        }
        let mut msg = b.build();
        if let Some(src) = self.src {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        let mut metrics = Vec::new();
        if let Some(mtu) = self.mtu {
            metrics.push(RouteMetric::Mtu(mtu));
        }
        if let Some(mss) = self.adv_mss {
            metrics.push(RouteMetric::Advmss(mss));
        }
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        Ok(msg)
    }

    fn from_message(m: &RouteMessage) -> Option<RouteSpec> {
        let mut dst = None;
        let mut r = RouteSpec::new(
            IpNetwork::new(unspecified(m.header.address_family)?, 0).ok()?,
            None,
            None,
        );
        r.table = Some(u32::from(m.header.table));
        r.scope = Some(u8::from(m.header.scope));
        for attr in &m.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = route_ip(a),
                RouteAttribute::Gateway(a) => r.gw = route_ip(a),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::PrefSource(a) => r.src = route_ip(a),
                RouteAttribute::Priority(p) => r.priority = Some(*p),
                RouteAttribute::Table(t) => r.table = Some(*t),
                RouteAttribute::Metrics(ms) => {
                    for metric in ms {
                        match metric {
                            RouteMetric::Mtu(v) => r.mtu = Some(*v),
                            RouteMetric::Advmss(v) => r.adv_mss = Some(*v),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(d) = dst {
            r.dst = IpNetwork::new(d, m.header.destination_prefix_length).ok()?;
        }
        Some(r)
    }
}

/// The builder's error type is not exported; its message is what we keep.
fn invalid(e: impl std::fmt::Display) -> KernelError {
    KernelError::Decode {
        op: "build route",
        detail: e.to_string(),
    }
}

fn unspecified(family: AddressFamily) -> Option<IpAddr> {
    match family {
        AddressFamily::Inet => Some(IpAddr::from([0u8; 4])),
        AddressFamily::Inet6 => Some(IpAddr::from([0u8; 16])),
        _ => None,
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl RtRequest {
    /// Add a route; EEXIST if there is one to the same destination.
    pub fn add_route(route: &RouteSpec) -> Result<RtRequest> {
        Ok(RtRequest {
            op: "add route",
            msg: RouteNetlinkMessage::NewRoute(route.to_message()?),
            flags: NLM_F_CREATE | NLM_F_EXCL,
        })
    }
}

impl Netlink {
    pub fn add_route(&mut self, route: &RouteSpec) -> Result<()> {
        self.send(RtRequest::add_route(route)?)
    }

    pub fn del_route(&mut self, route: &RouteSpec) -> Result<()> {
        let msg = RouteNetlinkMessage::DelRoute(route.to_message()?);
        self.execute("delete route", msg, 0)
    }

    /// The interface the kernel would send a packet to `dst` out of; `None`
    /// when it has no route there.
    pub fn route_oif(&mut self, dst: IpAddr) -> Result<Option<u32>> {
        let mut req = RouteMessage::default();
        req.header.address_family = if dst.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        req.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        req.attributes.push(RouteAttribute::Destination(match dst {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
        let reply = match self.get("get route", RouteNetlinkMessage::GetRoute(req)) {
            // No route at all is an answer, not a failure.
            Err(e)
                if matches!(
                    e.errno(),
                    Some(nix::errno::Errno::ENETUNREACH | nix::errno::Errno::EHOSTUNREACH)
                ) =>
            {
                return Ok(None);
            }
            r => r?,
        };
        Ok(match reply {
            Some(Rt::Route(RouteNetlinkMessage::NewRoute(m))) => {
                m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                })
            }
            _ => None,
        })
    }

    /// Every route of both families in every table.
    pub fn routes(&mut self) -> Result<Vec<RouteSpec>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            for m in self.dump("list routes", RouteNetlinkMessage::GetRoute(req))? {
                if let Rt::Route(RouteNetlinkMessage::NewRoute(m)) = m {
                    out.extend(RouteSpec::from_message(&m));
                }
            }
        }
        Ok(out)
    }
}
