//! Address arithmetic on both families, as integers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address `n` of the same family as `like`.
pub fn from_u128(n: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

pub fn next(ip: IpAddr) -> IpAddr {
    from_u128(to_u128(ip).wrapping_add(1), ip)
}

/// The last address the reference hands out in a subnet: broadcast - 1 for
/// IPv4, the very last address for IPv6.
pub fn last_usable(subnet: IpNetwork) -> IpAddr {
    match subnet {
        IpNetwork::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.broadcast()) - 1)),
        IpNetwork::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix());
            let mask = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_and_last() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(next(ip("10.0.0.255")), ip("10.0.1.0"));
        assert_eq!(next(ip("fd00::ffff")), ip("fd00::1:0"));
        assert_eq!(
            last_usable("10.0.0.0/24".parse().unwrap()),
            ip("10.0.0.254")
        );
        assert_eq!(last_usable("fd00::/120".parse().unwrap()), ip("fd00::ff"));
    }
}
