//! sysctls under /proc/sys. Network sysctls belong to the namespace of the
//! thread that opens them: call these inside [`crate::Netns::run`].

use std::path::PathBuf;

use crate::error::{KernelError, Result};
use crate::link::Ipv6Conf;
use crate::netlink::{NetConf, Netlink};

/// `net.ipv4.ip_forward` or `net/ipv4/ip_forward`. Interface names may hold
/// dots, so a key with slashes is taken as it is.
fn path(key: &str) -> PathBuf {
    let rel = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    PathBuf::from("/proc/sys").join(rel)
}

pub fn read(key: &str) -> Result<String> {
    std::fs::read_to_string(path(key))
        .map(|s| s.trim().to_owned())
        .map_err(|source| KernelError::Sysctl {
            key: key.to_owned(),
            source,
        })
}

/// Write `value` unless it is already set (saves a write on every ADD).
pub fn write(key: &str, value: &str) -> Result<()> {
    if read(key).is_ok_and(|v| v == value) {
        return Ok(());
    }
    put(key, value)
}

/// Write `value` where the kernel already said what is set (`now`), with
/// no read first; where it did not, as [`write`] does.
fn set(key: &str, value: i32, now: Option<i32>) -> Result<()> {
    match now {
        Some(v) if v == value => Ok(()),
        Some(_) => put(key, &value.to_string()),
        None => write(key, &value.to_string()),
    }
}

fn put(key: &str, value: &str) -> Result<()> {
    std::fs::write(path(key), value).map_err(|source| KernelError::Sysctl {
        key: key.to_owned(),
        source,
    })
}

/// A container interface's IPv6 settings, before its addresses: IPv6 on,
/// addresses kept while down, and unless `dad`, no duplicate address
/// detection (the address is usable at once instead of after about a
/// second). `now` is what the link's RTM_NEWLINK said is set, which saves
/// reading each one first. The kernel has no netlink setter for these; its
/// IPv4 settings go through [`crate::Netlink::set_inet_conf`].
pub fn prepare_container_iface_v6(ifname: &str, dad: bool, now: Option<Ipv6Conf>) -> Result<()> {
    let key = |k: &str| format!("net/ipv6/conf/{ifname}/{k}");
    set(&key("disable_ipv6"), 0, now.map(|c| c.disable_ipv6))?;
    set(
        &key("keep_addr_on_down"),
        1,
        now.map(|c| c.keep_addr_on_down),
    )?;
    if !dad {
        set(&key("accept_dad"), 0, now.map(|c| c.accept_dad))?;
    }
    Ok(())
}

/// Duplicate address detection off for a link's IPv6 addresses (its
/// link-local one too), before it is up.
pub fn no_dad(ifname: &str, now: Option<Ipv6Conf>) -> Result<()> {
    set(
        &format!("net/ipv6/conf/{ifname}/accept_dad"),
        0,
        now.map(|c| c.accept_dad),
    )
}

/// Forwarding on for the families a gateway serves, in the namespace of
/// `nl`, which is the calling thread's. Whether it is on already comes
/// from RTM_GETNETCONF: reading /proc/sys costs a look-up that slows down
/// with every namespace on the machine.
pub fn enable_forwarding(nl: &mut Netlink, v4: bool, v6: bool) -> Result<()> {
    let families = [
        (v4, nix::libc::AF_INET, "net/ipv4/ip_forward"),
        (v6, nix::libc::AF_INET6, "net/ipv6/conf/all/forwarding"),
    ];
    for (_, family, key) in families.into_iter().filter(|f| f.0) {
        let now = nl
            .netconf_all(family as u8)
            .ok()
            .flatten()
            .and_then(|c| c.value(NetConf::FORWARDING));
        set(key, 1, now)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_forms() {
        assert_eq!(
            super::path("net.ipv4.ip_forward").to_str(),
            Some("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            super::path("net/ipv4/conf/eth0.100/arp_notify").to_str(),
            Some("/proc/sys/net/ipv4/conf/eth0.100/arp_notify")
        );
    }
}
