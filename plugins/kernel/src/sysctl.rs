//! sysctls under /proc/sys. Network sysctls belong to the namespace of the
//! thread that opens them: call these inside [`crate::Netns::run`].

use std::path::PathBuf;

use crate::error::{KernelError, Result};

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
    std::fs::write(path(key), value).map_err(|source| KernelError::Sysctl {
        key: key.to_owned(),
        source,
    })
}

/// A container interface's IPv6 settings, before its addresses: IPv6 on,
/// addresses kept while down, and unless `dad`, no duplicate address
/// detection (the address is usable at once instead of after about a
/// second). The kernel has no netlink setter for these; its IPv4 settings
/// go through [`crate::Netlink::set_inet_conf`].
pub fn prepare_container_iface_v6(ifname: &str, dad: bool) -> Result<()> {
    write(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0")?;
    write(&format!("net/ipv6/conf/{ifname}/keep_addr_on_down"), "1")?;
    if !dad {
        write(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
    }
    Ok(())
}

/// Forwarding on for the families a gateway serves (the calling thread's
/// namespace).
pub fn enable_forwarding(v4: bool, v6: bool) -> Result<()> {
    if v4 {
        write("net/ipv4/ip_forward", "1")?;
    }
    if v6 {
        write("net/ipv6/conf/all/forwarding", "1")?;
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
