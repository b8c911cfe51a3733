//! From the runtime's `portMappings` and the previous result to the concrete
//! mappings to install. Pure logic.

use std::net::IpAddr;

use crate::rules::{Mapping, Proto};
use cni_types::{CniError, CniResult, PortMapping};
use ipnetwork::IpNetwork;

/// The container's addresses the mappings point at: the first IPv4 and the
/// first IPv6 of the previous result on the `ifname` interface that lives in
/// a sandbox. A result without interfaces (IPAM-only, or a legacy version)
/// has no interface to check, so its first addresses are taken.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub v4: Option<IpNetwork>,
    pub v6: Option<IpNetwork>,
}

impl Targets {
    pub fn from_result(prev: &CniResult, ifname: &str) -> Targets {
        let ours = |i: Option<usize>| {
            prev.interfaces.is_empty()
                || i.and_then(|i| prev.interfaces.get(i))
                    .is_some_and(|iface| iface.name == ifname && !iface.sandbox.is_empty())
        };
        let first = |v4: bool| {
            prev.ips
                .iter()
                .find(|ip| ip.address.is_ipv4() == v4 && ours(ip.interface))
                .map(|ip| ip.address)
        };
        Targets {
            v4: first(true),
            v6: first(false),
        }
    }

    /// The container subnets: traffic from them to a mapping is hairpin.
    pub fn subnets(&self) -> Vec<IpNetwork> {
        [self.v4, self.v6]
            .into_iter()
            .flatten()
            .map(|a| IpNetwork::new(a.network(), a.prefix()).expect("prefix of a valid network"))
            .collect()
    }
}

fn proto(p: &str) -> Option<Proto> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        "sctp" => Some(Proto::Sctp),
        _ => None,
    }
}

/// Expand each mapping to the families it applies to. A `hostIP` of one
/// family only maps to the container address of that family; none (or
/// 0.0.0.0 / ::) means every local address of both.
pub fn expand(list: &[PortMapping], t: &Targets) -> Result<Vec<Mapping>, CniError> {
    let mut out = Vec::new();
    for m in list {
        let proto = proto(&m.protocol).ok_or_else(|| {
            CniError::invalid_config(format!("unknown protocol {:?}", m.protocol))
        })?;
        let host_ip = match m
            .host_ip
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => None,
            Some(s) => {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| CniError::invalid_config(format!("invalid hostIP {s:?}")))?;
                Some(ip)
            }
        };
        for target in [t.v4, t.v6].into_iter().flatten() {
            let family_ok = host_ip.is_none_or(|h| h.is_ipv4() == target.is_ipv4());
            if !family_ok {
                continue;
            }
            let new = Mapping {
                proto,
                host_port: m.host_port as u16,
                host_ip: host_ip.filter(|h| !h.is_unspecified()),
                container_ip: target.ip(),
                container_port: m.container_port as u16,
            };
            // One host port (and address) leads to one place: the same one
            // twice with different targets is a config error, not a clash
            // for the kernel to refuse.
            match out.iter().find(|o: &&Mapping| {
                (o.proto, o.host_port, o.host_ip, o.container_ip.is_ipv4())
                    == (
                        new.proto,
                        new.host_port,
                        new.host_ip,
                        new.container_ip.is_ipv4(),
                    )
            }) {
                Some(o) if *o == new => {}
                Some(o) => {
                    return Err(CniError::invalid_config(format!(
                        "host port {} ({:?}) is mapped twice: to container port {} and {}",
                        new.host_port, m.protocol, o.container_port, new.container_port
                    )));
                }
                None => out.push(new),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_types::Version;
    use serde_json::json;

    fn prev() -> CniResult {
        CniResult::from_value(
            &json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "cni0"}, {"name": "veth1"},
                    {"name": "eth0", "sandbox": "/run/netns/x"},
                    {"name": "net1", "sandbox": "/run/netns/x"}
                ],
                "ips": [
                    {"address": "10.9.0.9/24", "interface": 3},
                    {"address": "10.88.0.5/16", "interface": 2},
                    {"address": "fd00::5/64", "interface": 2},
                    {"address": "10.88.0.6/16", "interface": 2}
                ]
            }),
            Version::V1_0_0,
        )
        .unwrap()
    }

    fn pm(host_port: i64, host_ip: Option<&str>, proto: &str) -> PortMapping {
        PortMapping {
            host_port,
            container_port: 80,
            protocol: proto.into(),
            host_ip: host_ip.map(String::from),
        }
    }

    #[test]
    fn picks_the_first_address_of_each_family_on_our_interface() {
        let t = Targets::from_result(&prev(), "eth0");
        assert_eq!(t.v4.unwrap().to_string(), "10.88.0.5/16");
        assert_eq!(t.v6.unwrap().to_string(), "fd00::5/64");
        assert_eq!(
            Targets::from_result(&prev(), "net1")
                .v4
                .unwrap()
                .to_string(),
            "10.9.0.9/24"
        );
        assert_eq!(Targets::from_result(&prev(), "eth9"), Targets::default());
        let subnets: Vec<String> = t.subnets().iter().map(ToString::to_string).collect();
        assert_eq!(subnets, ["10.88.0.0/16", "fd00::/64"]);
        // An IPAM-only result has no interfaces to check.
        let ipam = CniResult::from_value(
            &json!({"ips": [{"address": "10.1.0.2/24"}]}),
            Version::V1_0_0,
        )
        .unwrap();
        assert_eq!(
            Targets::from_result(&ipam, "eth0").v4.unwrap().to_string(),
            "10.1.0.2/24"
        );
    }

    #[test]
    fn one_host_port_twice_with_different_targets_is_a_config_error() {
        let t = Targets::from_result(&prev(), "eth0");
        let mut a = pm(8080, None, "tcp");
        let mut b = pm(8080, None, "tcp");
        b.container_port = 81;
        let e = expand(&[a.clone(), b.clone()], &t).unwrap_err();
        assert_eq!(e.code.0, 7, "{e}");
        // The same mapping twice is just one; another protocol is another port.
        assert_eq!(expand(&[a.clone(), a.clone()], &t).unwrap().len(), 2);
        a.protocol = "udp".into();
        assert_eq!(expand(&[a, b], &t).unwrap().len(), 4);
    }

    #[test]
    fn host_ip_selects_families() {
        let t = Targets::from_result(&prev(), "eth0");
        let m = expand(&[pm(8080, None, "tcp")], &t).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].container_ip.to_string(), "fd00::5");
        let m = expand(&[pm(8080, Some("0.0.0.0"), "TCP")], &t).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].host_ip, None);
        let m = expand(&[pm(53, Some("fd00::1"), "udp")], &t).unwrap();
        assert_eq!(
            (m.len(), m[0].proto, m[0].container_ip.to_string()),
            (1, Proto::Udp, "fd00::5".into())
        );
        assert_eq!(
            expand(&[pm(1, Some("x"), "tcp")], &t).unwrap_err().code.0,
            7
        );
    }
}
