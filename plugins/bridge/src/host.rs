//! The host side: the bridge, the host end of the veth and its port
//! settings, gateway addresses and forwarding.

use std::net::IpAddr;

use cni_kernel::packet_route::link::{InfoKind, LinkFlags};
use cni_kernel::{Link, Netlink, Netns, NftOwner, sysctl};
use cni_types::IpConfig;
use ipnetwork::IpNetwork;
use nix::errno::Errno;

use crate::config::BridgeConf;
use crate::error::{BridgeError, Result};

/// A random locally administered unicast MAC.
fn random_mac() -> [u8; 6] {
    let mut m = cni_kernel::link::random_bytes::<6>();
    m[0] = (m[0] & 0xfe) | 0x02;
    m
}

/// No duplicate address detection on a bridge we create, set before it
/// first gets carrier. Otherwise its link-local address is still tentative
/// when the first container's port comes up, and while a device's only
/// link-local is tentative the kernel sends no neighbour solicitation for
/// forwarded or DNATed traffic: the first IPv6 connection to a container
/// waits a second for the retry. Without IPv6 there is nothing to set.
fn no_dad(bridge: &str) -> Result<()> {
    match sysctl::no_dad(bridge, None) {
        Err(e) if !e.is_not_found() => Err(e.into()),
        _ => Ok(()),
    }
}

/// Find or create the bridge, up, with the settings the config asks for.
/// Many ADDs may race to create it: losing the race is fine.
pub fn ensure_bridge(nl: &mut Netlink, conf: &BridgeConf) -> Result<Link> {
    let no_vlans = |e: cni_kernel::KernelError| match e.errno() {
        Some(Errno::EOPNOTSUPP) if conf.vlans_in_use() => BridgeError::NoVlanFiltering,
        _ => e.into(),
    };
    let br = match nl.link_by_name(&conf.bridge)? {
        Some(l) => l,
        None => {
            match nl.create_bridge(&conf.bridge, random_mac(), conf.mtu, conf.vlans_in_use()) {
                Ok(()) => no_dad(&conf.bridge)?,
                Err(e) if e.errno() == Some(Errno::EEXIST) => {}
                Err(e) => return Err(no_vlans(e)),
            }
            nl.require_link(&conf.bridge)?
        }
    };
    if br.kind != Some(InfoKind::Bridge) {
        return Err(BridgeError::NotABridge(conf.bridge.clone()));
    }
    if conf.vlans_in_use() {
        nl.set_vlan_filtering(br.index).map_err(no_vlans)?;
    }
    if !br.is_up() {
        nl.set_link_up(br.index, true)?;
    }
    if conf.promisc_mode && !br.flags.contains(LinkFlags::Promisc) {
        nl.set_promiscuous(br.index, true)?;
    }
    Ok(br)
}

/// Create the veth pair, its container end named `ifname` and born in the
/// container's namespace. Returns the host end.
pub fn create_veth(
    nl: &mut Netlink,
    netns: &Netns,
    conf: &BridgeConf,
    ifname: &str,
) -> Result<Link> {
    Ok(nl.create_host_veth(ifname, netns.fd(), conf.mtu, conf.mac)?)
}

/// Attach the host end to the bridge with its port flags, its owner alias
/// and VLANs, then bring it up.
pub fn attach(
    nl: &mut Netlink,
    conf: &BridgeConf,
    br: &Link,
    veth: &Link,
    owner: &NftOwner,
) -> Result<()> {
    // A port needs no IPv6 address of its own: each link-local would add
    // routes to the host's table and a DAD run per container.
    let alias = cni_kernel::link::owner_alias(owner);
    nl.set_controller(veth.index, br.index, &alias, false)?;
    if conf.hairpin_mode || conf.port_isolation {
        nl.set_bridge_port(veth.index, conf.hairpin_mode, conf.port_isolation)?;
    }
    if conf.vlans_in_use() {
        if !conf.preserve_default_vlan {
            nl.bridge_vlan_del(veth.index, 1)?;
        }
        if let Some(vid) = conf.vlan.filter(|v| *v != 0) {
            nl.bridge_vlan_add(veth.index, vid as u16, true)?;
        }
        for vid in conf.trunk_ids() {
            nl.bridge_vlan_add(veth.index, vid, false)?;
        }
    }
    nl.set_link_up(veth.index, true)?;
    Ok(())
}

/// Put each gateway on the bridge. Like the reference: another IPv4 address,
/// or an overlapping IPv6 one, is an error unless `forceAddress` replaces it.
pub fn ensure_gateways(
    nl: &mut Netlink,
    conf: &BridgeConf,
    br: &Link,
    ips: &[IpConfig],
) -> Result<()> {
    let mut have: Vec<IpNetwork> = nl
        .addresses(Some(br.index))?
        .into_iter()
        .map(|a| a.addr)
        .collect();
    for ip in ips {
        let Some(gw) = ip.gateway else { continue };
        let want = IpNetwork::new(gw, ip.address.prefix()).expect("prefix of a valid address");
        if have.contains(&want) {
            continue;
        }
        for old in have.clone() {
            let conflicts = match (old, want) {
                (IpNetwork::V4(_), IpNetwork::V4(_)) => true,
                (IpNetwork::V6(o), IpNetwork::V6(w)) => o.contains(w.ip()) || w.contains(o.ip()),
                _ => false,
            };
            if !conflicts {
                continue;
            }
            if !conf.force_address {
                return Err(BridgeError::BridgeAddress {
                    bridge: conf.bridge.clone(),
                    want: want.to_string(),
                });
            }
            nl.del_address(br.index, old)?;
            have.retain(|a| *a != old);
        }
        let added = if want.is_ipv6() {
            sysctl::write(&format!("net/ipv6/conf/{}/disable_ipv6", conf.bridge), "0")?;
            // No duplicate address detection: containers reach the gateway at once.
            nl.add_address_nodad(br.index, want)
        } else {
            nl.add_address(br.index, want)
        };
        match added {
            // A concurrent ADD put the same address there first.
            Err(e) if e.errno() == Some(Errno::EEXIST) => {}
            other => other?,
        }
        have.push(want);
    }
    Ok(())
}

/// A gateway forwards: ip_forward for each family it serves.
pub fn enable_forwarding(nl: &mut Netlink, ips: &[IpConfig]) -> Result<()> {
    let v4 = ips.iter().any(|i| i.address.is_ipv4());
    let v6 = ips.iter().any(|i| i.address.is_ipv6());
    Ok(sysctl::enable_forwarding(nl, v4, v6)?)
}

/// The gateway of the family of `a` among `ips`.
pub fn gateway_for(ips: &[IpConfig], a: IpAddr) -> Option<IpAddr> {
    ips.iter()
        .filter(|i| i.address.is_ipv4() == a.is_ipv4())
        .find_map(|i| i.gateway)
}
