//! Which addresses and routes each end of the pair gets, from the IPAM
//! result alone (pure: the plugin installs them, CHECK compares them).
//!
//! A veth cannot be point-to-point, so the container's address keeps its
//! prefix (`10.244.0.5/24`) but the kernel's on-link route to that subnet is
//! never made (`noprefixroute`). Instead the gateway is on-link and the
//! subnet is reached through it: every packet leaves for the host end, which
//! holds the gateway address, and the host routes each container address to
//! its own veth. This is the reference plugin's layout.

use std::net::IpAddr;

use cni_kernel::RouteSpec;
use cni_types::{IpConfig, Route};
use ipnetwork::IpNetwork;

use crate::error::{PtpError, Result};

/// RT_SCOPE_HOST, RT_SCOPE_LINK and RT_SCOPE_UNIVERSE.
pub const SCOPE_HOST: u8 = 254;
pub const SCOPE_LINK: u8 = 253;
pub const SCOPE_UNIVERSE: u8 = 0;

fn host_prefix(a: IpAddr) -> IpNetwork {
    let bits = if a.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(a, bits).expect("a full-length prefix")
}

/// Each address with its gateway; an address without one cannot be routed.
pub fn gateways(ips: &[IpConfig]) -> Result<Vec<(IpNetwork, IpAddr)>> {
    ips.iter()
        .map(|i| {
            i.gateway
                .map(|g| (i.address, g))
                .ok_or(PtpError::NoGateway(i.address.ip()))
        })
        .collect()
}

/// The container's routes through interface `oif`: for each address, its
/// gateway on-link and its subnet via the gateway (both from that address),
/// then the result's routes, via the gateway of their family unless they
/// name one.
pub fn container_routes(ips: &[IpConfig], routes: &[Route], oif: u32) -> Result<Vec<RouteSpec>> {
    let mut out = Vec::new();
    for (addr, gw) in gateways(ips)? {
        out.push(RouteSpec {
            scope: Some(SCOPE_LINK),
            src: Some(addr.ip()),
            ..RouteSpec::new(host_prefix(gw), None, Some(oif))
        });
        let subnet = IpNetwork::new(addr.network(), addr.prefix()).expect("a valid prefix");
        out.push(RouteSpec {
            scope: Some(SCOPE_UNIVERSE),
            src: Some(addr.ip()),
            ..RouteSpec::new(subnet, Some(gw), Some(oif))
        });
    }
    for r in routes {
        let gw = r.gw.or_else(|| {
            ips.iter()
                .find(|i| i.address.is_ipv4() == r.dst.is_ipv4())
                .and_then(|i| i.gateway)
        });
        out.push(RouteSpec {
            mtu: r.mtu,
            adv_mss: r.adv_mss,
            priority: r.priority,
            table: r.table,
            scope: r.scope,
            ..RouteSpec::new(r.dst, gw, Some(oif))
        });
    }
    Ok(out)
}

/// The host end's addresses: each gateway, alone (/32 or /128).
pub fn host_addresses(ips: &[IpConfig]) -> Result<Vec<IpNetwork>> {
    Ok(gateways(ips)?
        .into_iter()
        .map(|(_, gw)| host_prefix(gw))
        .collect())
}

/// The host's routes: each container address, alone, through the host end
/// (scope host, as the reference makes them).
pub fn host_routes(ips: &[IpConfig], oif: u32) -> Vec<RouteSpec> {
    ips.iter()
        .map(|i| RouteSpec {
            scope: Some(SCOPE_HOST),
            ..RouteSpec::new(host_prefix(i.address.ip()), None, Some(oif))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: &str, gw: Option<&str>) -> IpConfig {
        IpConfig {
            address: a.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            interface: Some(1),
        }
    }

    #[test]
    fn the_reference_layout_for_each_family() {
        let ips = [
            ip("10.244.0.5/24", Some("10.244.0.1")),
            ip("fd00:10:244::5/64", Some("fd00:10:244::1")),
        ];
        let routes = [Route::new("0.0.0.0/0".parse().unwrap(), None)];
        let c = container_routes(&ips, &routes, 2).unwrap();
        let show: Vec<String> = c
            .iter()
            .map(|r| format!("{} {:?} {:?} {:?}", r.dst, r.gw, r.scope, r.src))
            .collect();
        assert_eq!(
            show,
            [
                "10.244.0.1/32 None Some(253) Some(10.244.0.5)",
                "10.244.0.0/24 Some(10.244.0.1) Some(0) Some(10.244.0.5)",
                "fd00:10:244::1/128 None Some(253) Some(fd00:10:244::5)",
                "fd00:10:244::/64 Some(fd00:10:244::1) Some(0) Some(fd00:10:244::5)",
                "0.0.0.0/0 Some(10.244.0.1) None None",
            ]
        );
        assert!(c.iter().all(|r| r.oif == Some(2)));
        let h: Vec<String> = host_addresses(&ips)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(h, ["10.244.0.1/32", "fd00:10:244::1/128"]);
        let hr: Vec<String> = host_routes(&ips, 9)
            .iter()
            .map(|r| r.dst.to_string())
            .collect();
        assert_eq!(hr, ["10.244.0.5/32", "fd00:10:244::5/128"]);
    }

    #[test]
    fn an_address_without_a_gateway_is_refused() {
        let e = container_routes(&[ip("10.0.0.5/24", None)], &[], 2).unwrap_err();
        assert!(matches!(e, PtpError::NoGateway(_)), "{e}");
    }
}
