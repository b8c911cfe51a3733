//! ADD results in every spec version.
//!
//! [`CniResult`] holds the newest (1.1.0) shape; [`CniResult::to_version`]
//! writes it in any version and [`CniResult::from_value`] reads any version.
//! What a version cannot express is dropped on the way down, as the spec's
//! conversion rules (and libcni) do, except that a pre-0.3.0 result without
//! any address cannot be written at all.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CniError, Code};
use crate::version::Version;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Always written, even empty, as the reference plugins do.
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    /// 1.1.0 only.
    #[serde(default, rename = "pciID", skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with its prefix length, host bits kept (`10.1.0.5/16`).
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// The rest are 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, rename = "advmss", skip_serializing_if = "Option::is_none")]
    pub adv_mss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            adv_mss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }

    fn strip_1_1_fields(&mut self) {
        self.mtu = None;
        self.adv_mss = None;
        self.priority = None;
        self.table = None;
        self.scope = None;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The 0.1.0/0.2.0 shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LegacyResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip4: Option<LegacyIp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<LegacyIp>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LegacyIp {
    ip: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<LegacyRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LegacyRoute {
    dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gw: Option<IpAddr>,
}

/// `ips[]` as written by 0.3.0 to 0.4.0, which also carry `"version"`.
#[derive(Serialize)]
struct VersionedIp<'a> {
    version: &'static str,
    #[serde(flatten)]
    ip: &'a IpConfig,
}

impl CniResult {
    /// Write the result as the given version asks, with `cniVersion` first.
    pub fn to_version(&self, version: Version) -> Result<Value, CniError> {
        let body = if version.is_legacy_result() {
            serde_json::to_value(self.to_legacy(version)?)
        } else {
            serde_json::to_value(self.to_modern(version))
        }
        .expect("result serialises");
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), Value::from(version.as_str()));
        if let Value::Object(fields) = body {
            out.extend(fields);
        }
        Ok(Value::Object(out))
    }

    /// 0.3.0 and later: drop what the version lacks, add `ips[].version` before 1.0.0.
    fn to_modern(&self, version: Version) -> Value {
        let mut r = self.clone();
        if version < Version::V1_1_0 {
            for i in &mut r.interfaces {
                i.mtu = None;
                i.socket_path.clear();
                i.pci_id.clear();
            }
            r.routes.iter_mut().for_each(Route::strip_1_1_fields);
        }
        let mut v = serde_json::to_value(&r).expect("result serialises");
        if version < Version::V1_0_0 && !r.ips.is_empty() {
            let ips = r.ips.iter().map(|ip| {
                let family = if ip.address.is_ipv4() { "4" } else { "6" };
                serde_json::to_value(VersionedIp {
                    version: family,
                    ip,
                })
                .expect("ip serialises")
            });
            v["ips"] = Value::Array(ips.collect());
        }
        v
    }

    fn to_legacy(&self, version: Version) -> Result<LegacyResult, CniError> {
        let pick = |v4: bool| {
            self.ips
                .iter()
                .find(|ip| ip.address.is_ipv4() == v4)
                .map(|ip| LegacyIp {
                    ip: ip.address,
                    gateway: ip.gateway,
                    routes: self
                        .routes
                        .iter()
                        .filter(|r| r.dst.is_ipv4() == v4)
                        .map(|r| LegacyRoute {
                            dst: r.dst,
                            gw: r.gw,
                        })
                        .collect(),
                })
        };
        let legacy = LegacyResult {
            ip4: pick(true),
            ip6: pick(false),
            dns: self.dns.clone(),
        };
        if legacy.ip4.is_none() && legacy.ip6.is_none() {
            return Err(CniError::new(
                Code::INCOMPATIBLE_VERSION,
                format!("cannot express a result without IP addresses in CNI version {version}"),
            ));
        }
        Ok(legacy)
    }

    /// Read a result written in any version. The version comes from the
    /// document's own `cniVersion`, else from `fallback`.
    pub fn from_value(value: &Value, fallback: Version) -> Result<CniResult, CniError> {
        let version = match value.get("cniVersion").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => s.parse()?,
            _ => fallback,
        };
        let bad = |e: serde_json::Error| {
            CniError::new(Code::DECODE, format!("invalid {version} result: {e}"))
        };
        if version.is_legacy_result() {
            let legacy: LegacyResult = serde_json::from_value(value.clone()).map_err(bad)?;
            let mut r = CniResult {
                dns: legacy.dns,
                ..Default::default()
            };
            for ip in [legacy.ip4, legacy.ip6].into_iter().flatten() {
                r.ips.push(IpConfig {
                    address: ip.ip,
                    gateway: ip.gateway,
                    interface: None,
                });
                r.routes
                    .extend(ip.routes.into_iter().map(|rt| Route::new(rt.dst, rt.gw)));
            }
            Ok(r)
        } else {
            // 0.3.x/0.4.0 `ips[].version` is redundant with the address; serde
            // ignores it. Interface indexes must point into `interfaces`.
            let r: CniResult = serde_json::from_value(value.clone()).map_err(bad)?;
            for ip in &r.ips {
                if let Some(i) = ip.interface
                    && i >= r.interfaces.len()
                {
                    return Err(CniError::new(
                        Code::DECODE,
                        format!(
                            "result ip {} names interface {i}, which does not exist",
                            ip.address
                        ),
                    ));
                }
            }
            Ok(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The ADD result example of SPEC.md (1.1.0).
    fn spec_example() -> Value {
        json!({
          "cniVersion": "1.1.0",
          "interfaces": [
              {"name": "cni0", "mac": "00:11:22:33:44:55"},
              {"name": "veth3243", "mac": "55:44:33:22:11:11"},
              {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
          ],
          "ips": [
              {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}
          ],
          "routes": [{"dst": "0.0.0.0/0"}],
          "dns": {"nameservers": ["10.1.0.1"]}
        })
    }

    #[test]
    fn spec_example_round_trips_in_1_1_0() {
        let r = CniResult::from_value(&spec_example(), Version::V1_1_0).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/16");
        assert_eq!(r.to_version(Version::V1_1_0).unwrap(), spec_example());
    }

    #[test]
    fn writes_0_4_0_with_ip_versions() {
        let r = CniResult::from_value(&spec_example(), Version::V1_1_0).unwrap();
        let v = r.to_version(Version::V0_4_0).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][0]["interface"], 2);
        // and reads it back unchanged
        assert_eq!(CniResult::from_value(&v, Version::V1_1_0).unwrap(), r);
    }

    #[test]
    fn drops_1_1_fields_below_1_1() {
        let mut r = CniResult::from_value(&spec_example(), Version::V1_1_0).unwrap();
        r.routes[0].mtu = Some(1400);
        r.routes[0].table = Some(100);
        r.interfaces[0].mtu = Some(9000);
        let v11 = r.to_version(Version::V1_1_0).unwrap();
        assert_eq!(v11["routes"][0]["mtu"], 1400);
        assert_eq!(v11["interfaces"][0]["mtu"], 9000);
        let v10 = r.to_version(Version::V1_0_0).unwrap();
        assert!(v10["routes"][0].get("mtu").is_none());
        assert!(v10["routes"][0].get("table").is_none());
        assert!(v10["interfaces"][0].get("mtu").is_none());
        assert!(v10["ips"][0].get("version").is_none());
    }

    /// The 0.2.0 example of the old spec.
    #[test]
    fn legacy_0_2_0_both_ways() {
        let legacy = json!({
            "cniVersion": "0.2.0",
            "ip4": {
                "ip": "10.1.0.5/16",
                "gateway": "10.1.0.1",
                "routes": [{"dst": "0.0.0.0/0"}]
            },
            "ip6": {
                "ip": "2001:db8::5/64",
                "gateway": "2001:db8::1",
                "routes": [{"dst": "::/0", "gw": "2001:db8::1"}]
            },
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        let r = CniResult::from_value(&legacy, Version::V1_1_0).unwrap();
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.ips[1].gateway.unwrap().to_string(), "2001:db8::1");
        assert_eq!(r.to_version(Version::V0_2_0).unwrap(), legacy);

        let up = r.to_version(Version::V0_3_1).unwrap();
        assert_eq!(up["ips"][1]["version"], "6");
        assert!(up["ips"][1].get("interface").is_none());
    }

    #[test]
    fn legacy_takes_first_address_of_each_family() {
        let mut r = CniResult::from_value(&spec_example(), Version::V1_1_0).unwrap();
        r.ips.push(IpConfig {
            address: "10.2.0.5/16".parse().unwrap(),
            gateway: None,
            interface: Some(2),
        });
        let v = r.to_version(Version::V0_1_0).unwrap();
        assert_eq!(v["ip4"]["ip"], "10.1.0.5/16");
        assert!(v.get("ip6").is_none());
        assert!(v.get("interfaces").is_none());
    }

    #[test]
    fn legacy_without_addresses_is_an_error() {
        let r = CniResult::default();
        assert_eq!(
            r.to_version(Version::V0_2_0).unwrap_err().code,
            Code::INCOMPATIBLE_VERSION
        );
        // newer versions can express an L2-only result
        assert_eq!(
            r.to_version(Version::V1_0_0).unwrap(),
            json!({"cniVersion": "1.0.0", "dns": {}})
        );
    }

    #[test]
    fn rejects_dangling_interface_index_and_bad_addresses() {
        let mut v = spec_example();
        v["ips"][0]["interface"] = json!(7);
        assert_eq!(
            CniResult::from_value(&v, Version::V1_1_0).unwrap_err().code,
            Code::DECODE
        );
        let mut v = spec_example();
        v["ips"][0]["address"] = json!("10.1.0.500/16");
        assert!(CniResult::from_value(&v, Version::V1_1_0).is_err());
    }

    #[test]
    fn unknown_result_version_is_code_1() {
        let mut v = spec_example();
        v["cniVersion"] = json!("9.9.9");
        assert_eq!(
            CniResult::from_value(&v, Version::V1_1_0).unwrap_err().code,
            Code::INCOMPATIBLE_VERSION
        );
    }
}
