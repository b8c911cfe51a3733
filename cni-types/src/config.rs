//! Network configuration as a plugin receives it on stdin, and conflists as a
//! runtime reads them from disk. Fields this crate does not know are kept in
//! `other` and written back unchanged.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, Code};
use crate::result::{CniResult, Dns};
use crate::validate;
use crate::version::Version;

/// The fields every plugin config has (spec section "Plugin configuration
/// objects"), plus the runtime-injected `runtimeConfig`, `args`, `prevResult`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamConf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<RuntimeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<ConfArgs>,
    /// Kept raw: its shape depends on its own `cniVersion`. See [`NetConf::prev_result`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl NetConf {
    pub fn version(&self) -> Result<Version, CniError> {
        Version::of_config(Some(&self.cni_version))
    }

    /// The previous plugin's result, in the current shape.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        match &self.prev_result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_value(v, self.version()?)
                .map(Some)
                .map_err(|e| CniError::new(e.code, format!("prevResult: {}", e.msg))),
        }
    }

    /// `runtimeConfig`, or an empty one.
    pub fn runtime(&self) -> RuntimeConfig {
        self.runtime_config.clone().unwrap_or_default()
    }
}

/// `ipam`: the delegated plugin's `type` plus its own fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Capabilities the runtime passes in `runtimeConfig` (CONVENTIONS.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// Requested addresses, with or without a prefix length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_ranges: Vec<Vec<IpRange>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Go's encoding/json, which decodes configs in the reference plugins,
/// matches object keys to struct fields regardless of case, and runtimes
/// rely on it: containerd's CRI plugin (go-cni, whose capability structs
/// have no JSON tags) sends `runtimeConfig.portMappings` as
/// `{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}`, and
/// `ipRanges` and `bandwidth` the same way. This renames the keys of the
/// capability objects in `runtimeConfig` that match one of our field names
/// but for case to that name (an exact key is left as it is).
pub fn go_case_runtime_config(conf: &mut Value) {
    let Some(rc) = conf.get_mut("runtimeConfig").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(Value::Array(list)) = rc.get_mut("portMappings") {
        for m in list {
            go_case_keys(m, &["hostPort", "containerPort", "protocol", "hostIP"]);
        }
    }
    if let Some(Value::Array(sets)) = rc.get_mut("ipRanges") {
        for range in sets.iter_mut().filter_map(Value::as_array_mut).flatten() {
            go_case_keys(range, &["subnet", "rangeStart", "rangeEnd", "gateway"]);
        }
    }
    if let Some(b) = rc.get_mut("bandwidth") {
        let fields = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];
        go_case_keys(b, &fields);
    }
    if let Some(d) = rc.get_mut("dns") {
        go_case_keys(d, &["nameservers", "domain", "search", "options"]);
    }
}

fn go_case_keys(obj: &mut Value, fields: &[&str]) {
    let Value::Object(map) = obj else {
        return;
    };
    for field in fields {
        if map.contains_key(*field) {
            continue;
        }
        let other = map.keys().find(|k| k.eq_ignore_ascii_case(field)).cloned();
        if let Some(v) = other.and_then(|k| map.remove(&k)) {
            map.insert((*field).to_owned(), v);
        }
    }
}

/// One entry of the `portMappings` capability. Ports are kept wide so that an
/// out-of-range port is a config error (code 7) from the plugin, not a decode error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i64,
    pub container_port: i64,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

fn default_protocol() -> String {
    "tcp".into()
}

/// One range of a range set (`ipam.ranges`, `runtimeConfig.ipRanges`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRange {
    pub subnet: IpNetwork,
    #[serde(
        default,
        deserialize_with = "optional_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub range_start: Option<IpAddr>,
    #[serde(
        default,
        deserialize_with = "optional_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub range_end: Option<IpAddr>,
    #[serde(
        default,
        deserialize_with = "optional_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway: Option<IpAddr>,
}

/// An optional address where, as with Go's `net.IP`, an empty string (or
/// null) means none: go-cni sends `"RangeEnd": ""` for an unset field.
pub fn optional_ip<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("invalid IP address {s:?}"))),
    }
}

/// The `bandwidth` capability (bits per second and bits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst: Option<u64>,
}

/// `args` in the config; `args.cni` is the CNI namespace of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniConfArgs>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniConfArgs {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A network configuration list as stored in `/etc/cni/net.d/*.conflist`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConfList {
    #[serde(default)]
    pub cni_version: String,
    /// 1.1.0: the versions this list can be run with; the newest supported wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_versions: Vec<String>,
    pub name: String,
    #[serde(
        default,
        deserialize_with = "lenient_bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_check: bool,
    #[serde(
        default,
        rename = "disableGC",
        deserialize_with = "lenient_bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_gc: bool,
    #[serde(default)]
    pub plugins: Vec<Map<String, Value>>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// libcni reads `disableCheck`/`disableGC` as a boolean or as the strings
/// "true"/"false" in any case; so do we, so that its configs load unchanged.
fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "expected true or false, got {other}"
        ))),
    }
}

impl NetConfList {
    /// Parse a `.conflist` document and check what the spec requires of it.
    pub fn parse(bytes: &[u8]) -> Result<NetConfList, CniError> {
        let mut list: NetConfList = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                Code::DECODE,
                format!("invalid network configuration list: {e}"),
            )
        })?;
        validate::network_name(&list.name)?;
        if list.plugins.is_empty() {
            return Err(CniError::invalid_config(format!(
                "network {:?} has no plugins",
                list.name
            )));
        }
        for p in &list.plugins {
            if p.get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                return Err(CniError::invalid_config(format!(
                    "network {:?}: a plugin has no type",
                    list.name
                )));
            }
        }
        if !list.cni_versions.is_empty() {
            // The newest version we speak among cniVersions and cniVersion, as libcni picks.
            let best = list
                .cni_versions
                .iter()
                .chain(std::iter::once(&list.cni_version))
                .filter_map(|v| v.parse::<Version>().ok())
                .max()
                .ok_or_else(|| {
                    CniError::new(
                        Code::INCOMPATIBLE_VERSION,
                        format!("none of cniVersions {:?} is supported", list.cni_versions),
                    )
                })?;
            list.cni_version = best.to_string();
        }
        Version::of_config(Some(&list.cni_version))?;
        Ok(list)
    }

    /// Parse a single-plugin `.conf` and wrap it in a list, as libcni does.
    pub fn from_single(bytes: &[u8]) -> Result<NetConfList, CniError> {
        let conf: Map<String, Value> = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(Code::DECODE, format!("invalid network configuration: {e}"))
        })?;
        let field = |k: &str| conf.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let list = serde_json::json!({
            "cniVersion": field("cniVersion"),
            "name": field("name"),
            "plugins": [conf],
        });
        NetConfList::parse(list.to_string().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The bridge + host-local example of SPEC.md, as a plugin receives it.
    fn bridge_conf() -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "dbnet",
            "type": "bridge",
            "bridge": "cni0",
            "keyA": ["some more", "plugin specific", "configuration"],
            "ipam": {
                "type": "host-local",
                "subnet": "10.1.0.0/16",
                "gateway": "10.1.0.1",
                "routes": [{"dst": "0.0.0.0/0"}]
            },
            "dns": {"nameservers": ["10.1.0.1"]},
            "runtimeConfig": {
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                "ips": ["10.1.0.9/16"],
                "mac": "c2:11:22:33:44:55",
                "ipRanges": [[{"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.10"}]],
                "bandwidth": {"ingressRate": 1000, "egressBurst": 10},
                "somethingNew": 1
            },
            "args": {"cni": {"ips": ["10.1.0.7"], "mac": "c2:00:00:00:00:01", "x": 1}, "k8s": true}
        })
    }

    #[test]
    fn known_fields_typed_unknown_passed_through() {
        let c: NetConf = serde_json::from_value(bridge_conf()).unwrap();
        assert_eq!(c.name, "dbnet");
        assert_eq!(c.plugin_type, "bridge");
        assert_eq!(c.ipam.as_ref().unwrap().plugin_type, "host-local");
        assert_eq!(c.ipam.as_ref().unwrap().other["subnet"], "10.1.0.0/16");
        let rc = c.runtime();
        assert_eq!(rc.port_mappings[0].host_port, 8080);
        assert_eq!(
            rc.ip_ranges[0][0].range_start.unwrap().to_string(),
            "10.2.0.10"
        );
        assert_eq!(rc.bandwidth.as_ref().unwrap().ingress_rate, Some(1000));
        assert_eq!(rc.other["somethingNew"], 1);
        assert_eq!(
            c.args.as_ref().unwrap().cni.as_ref().unwrap().ips,
            ["10.1.0.7"]
        );
        assert_eq!(c.other["bridge"], "cni0");
        // Writing it back loses nothing.
        assert_eq!(serde_json::to_value(&c).unwrap(), bridge_conf());
    }

    #[test]
    fn runtime_config_keys_match_regardless_of_case_as_in_go() {
        // What containerd's CRI plugin sends (go-cni structs without tags).
        let mut v = json!({
            "cniVersion": "1.0.0", "name": "n", "type": "portmap",
            "runtimeConfig": {
                "portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "udp", "HostIP": ""}],
                "ipRanges": [[{"Subnet": "10.9.0.0/24", "RangeStart": "10.9.0.5", "RangeEnd": "", "Gateway": ""}]],
                "bandwidth": {"IngressRate": 1000, "EgressBurst": 5},
                "dns": {"Servers": ["10.0.0.10"], "Options": ["ndots:5"]}
            }
        });
        go_case_runtime_config(&mut v);
        let rc = serde_json::from_value::<NetConf>(v.clone())
            .unwrap()
            .runtime();
        let m = &rc.port_mappings[0];
        assert_eq!((m.host_port, m.container_port), (8080, 80));
        assert_eq!(
            (m.protocol.as_str(), m.host_ip.as_deref()),
            ("udp", Some(""))
        );
        assert_eq!(
            v["runtimeConfig"]["ipRanges"][0][0]["subnet"],
            "10.9.0.0/24"
        );
        assert_eq!(
            v["runtimeConfig"]["ipRanges"][0][0]["rangeStart"],
            "10.9.0.5"
        );
        let b = rc.bandwidth.unwrap();
        assert_eq!((b.ingress_rate, b.egress_burst), (Some(1000), Some(5)));
        // Keys that are not a field but for case stay as they are.
        assert_eq!(v["runtimeConfig"]["dns"]["Servers"][0], "10.0.0.10");
        assert_eq!(v["runtimeConfig"]["dns"]["options"][0], "ndots:5");
        // An exact key is kept.
        let mut exact =
            json!({"runtimeConfig": {"portMappings": [{"hostPort": 1, "HOSTPORT": 2}]}});
        go_case_runtime_config(&mut exact);
        assert_eq!(exact["runtimeConfig"]["portMappings"][0]["hostPort"], 1);
    }

    #[test]
    fn port_mapping_protocol_defaults_to_tcp() {
        let m: PortMapping =
            serde_json::from_value(json!({"hostPort": 80, "containerPort": 8080})).unwrap();
        assert_eq!(m.protocol, "tcp");
    }

    #[test]
    fn prev_result_is_read_in_its_own_version() {
        let mut v = bridge_conf();
        v["cniVersion"] = json!("0.4.0");
        v["prevResult"] = json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "10.1.0.5/16"}
        });
        let c: NetConf = serde_json::from_value(v).unwrap();
        let prev = c.prev_result().unwrap().unwrap();
        assert_eq!(prev.ips[0].address.to_string(), "10.1.0.5/16");
    }

    #[test]
    fn conflist_spec_example() {
        let list = json!({
          "cniVersion": "1.1.0",
          "cniVersions": ["0.3.1", "1.0.0", "1.1.0"],
          "name": "dbnet",
          "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}},
            {"type": "tuning", "capabilities": {"mac": true}, "sysctl": {"net.core.somaxconn": "500"}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
          ]
        });
        let l = NetConfList::parse(list.to_string().as_bytes()).unwrap();
        assert_eq!(l.cni_version, "1.1.0");
        assert_eq!(l.plugins.len(), 3);
    }

    #[test]
    fn conflist_errors() {
        let parse = |v: Value| {
            NetConfList::parse(v.to_string().as_bytes())
                .unwrap_err()
                .code
        };
        assert_eq!(
            parse(json!({"cniVersion": "1.0.0", "name": "n", "plugins": []})),
            Code::INVALID_CONFIG
        );
        assert_eq!(
            parse(json!({"cniVersion": "1.0.0", "name": "bad name", "plugins": [{"type": "x"}]})),
            Code::INVALID_CONFIG
        );
        assert_eq!(
            parse(json!({"cniVersion": "7.0.0", "name": "n", "plugins": [{"type": "x"}]})),
            Code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            parse(json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"bridge": "x"}]})),
            Code::INVALID_CONFIG
        );
        assert_eq!(NetConfList::parse(b"{").unwrap_err().code, Code::DECODE);
    }

    #[test]
    fn reads_conflists_as_leniently_as_libcni() {
        let l = NetConfList::parse(
            json!({
                "cniVersion": "1.1.0", "cniVersions": ["0.4.0"], "name": "n",
                "disableCheck": "TRUE", "disableGC": "false", "plugins": [{"type": "x"}]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(l.cni_version, "1.1.0");
        assert!(l.disable_check && !l.disable_gc);
        let bad = json!({"cniVersion": "1.0.0", "name": "n", "disableCheck": "yes", "plugins": [{"type": "x"}]});
        assert_eq!(
            NetConfList::parse(bad.to_string().as_bytes())
                .unwrap_err()
                .code,
            Code::DECODE
        );
    }

    #[test]
    fn single_conf_becomes_a_list() {
        let l = NetConfList::from_single(bridge_conf().to_string().as_bytes()).unwrap();
        assert_eq!(l.name, "dbnet");
        assert_eq!(l.cni_version, "1.1.0");
        assert_eq!(l.plugins[0]["type"], "bridge");
    }
}
