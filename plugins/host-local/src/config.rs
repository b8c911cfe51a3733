//! The host-local configuration: parsed, canonicalised and checked the way
//! the reference does, before any file is touched.

use std::net::IpAddr;
use std::path::PathBuf;

use cni_types::{CniError, IpRange, Request, Route, Version};
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::ip;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// CNI_ARGS keys host-local reads (IP) or is handed by the bridge (MAC);
/// others, besides the runtimes' own, need IgnoreUnknown=1, as in the reference.
const KNOWN_ARGS: &[&str] = &["IP", "MAC"];

/// The `ipam` object as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(default)]
    ranges: Vec<Vec<IpRange>>,
    /// The legacy single range; becomes range set 0.
    #[serde(default)]
    subnet: Option<IpNetwork>,
    #[serde(default, deserialize_with = "cni_types::config::optional_ip")]
    range_start: Option<IpAddr>,
    #[serde(default, deserialize_with = "cni_types::config::optional_ip")]
    range_end: Option<IpAddr>,
    #[serde(default, deserialize_with = "cni_types::config::optional_ip")]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    resolv_conf: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawRoute {
    dst: IpNetwork,
    #[serde(default)]
    gw: Option<IpAddr>,
}

/// One canonical range: every field known, start..=end inside the subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    fn canonical(r: &IpRange) -> Result<Range, String> {
        let subnet = r.subnet;
        // As the reference: an IPv4-mapped IPv6 subnet is neither family's.
        if let IpNetwork::V6(n) = subnet
            && n.ip().to_ipv4_mapped().is_some()
        {
            return Err(format!("subnet {subnet} is an IPv4-mapped IPv6 network"));
        }
        let host_bits = if subnet.is_ipv4() { 32 } else { 128 } - u32::from(subnet.prefix());
        if host_bits < 2 {
            return Err(format!("network {subnet} is too small to allocate from"));
        }
        if subnet.ip() != subnet.network() {
            return Err(format!(
                "subnet {subnet} has host bits set; the network address is {}/{}",
                subnet.network(),
                subnet.prefix()
            ));
        }
        let first = ip::next(subnet.network());
        let gateway = r.gateway.unwrap_or(first);
        let start = r.range_start.unwrap_or(first);
        let end = r.range_end.unwrap_or_else(|| ip::last_usable(subnet));
        for (what, a) in [
            ("gateway", gateway),
            ("rangeStart", start),
            ("rangeEnd", end),
        ] {
            if a.is_ipv4() != subnet.is_ipv4() {
                return Err(format!("{what} {a} is not of the family of {subnet}"));
            }
        }
        for (what, a) in [("rangeStart", start), ("rangeEnd", end)] {
            if !subnet.contains(a) {
                return Err(format!("{what} {a} is not in network {subnet}"));
            }
        }
        if ip::to_u128(start) > ip::to_u128(end) {
            return Err(format!("rangeStart {start} is after rangeEnd {end}"));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.subnet.is_ipv4()
            && (ip::to_u128(self.start)..=ip::to_u128(self.end)).contains(&ip::to_u128(a))
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.contains(o.start)
            || self.contains(o.end)
            || o.contains(self.start)
            || o.contains(self.end)
    }

    /// How many addresses the range can hand out (its gateway excluded).
    pub fn capacity(&self) -> u128 {
        let n = ip::to_u128(self.end) - ip::to_u128(self.start) + 1;
        n - u128::from(self.contains(self.gateway))
    }
}

/// One address is handed out per range set; its ranges are of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn range_for(&self, a: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(a))
    }

    pub fn is_ipv4(&self) -> bool {
        self.0[0].subnet.is_ipv4()
    }

    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Everything ADD/DEL/CHECK/GC/STATUS need, checked.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub network: String,
    pub sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    /// Requested addresses, from CNI_ARGS IP=, args.cni.ips, runtimeConfig.ips.
    pub requested: Vec<IpAddr>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::invalid_config(msg)
}

/// An address with or without a prefix length ("10.0.0.5" or "10.0.0.5/24").
fn parse_requested(s: &str) -> Result<IpAddr, CniError> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<IpNetwork>().map(|n| n.ip()))
        .map_err(|_| invalid(format!("cannot understand requested ip {s:?}")))
}

impl IpamConfig {
    pub fn load(req: &Request) -> Result<IpamConfig, CniError> {
        let conf = &req.conf;
        let Some(ipam) = &conf.ipam else {
            return Err(invalid("host-local needs an \"ipam\" object"));
        };
        let raw = RawIpam::deserialize(serde_json::Value::Object(ipam.other.clone()))
            .map_err(|e| invalid(format!("invalid ipam config: {e}")))?;
        let runtime = conf.runtime();

        req.env.args.check_known(KNOWN_ARGS)?;
        let mut requested = Vec::new();
        if let Some(list) = req.env.args.get("IP") {
            for s in list.split(',').filter(|s| !s.trim().is_empty()) {
                requested.push(parse_requested(s)?);
            }
        }
        let conf_args = conf.args.as_ref().and_then(|a| a.cni.as_ref());
        for s in conf_args.map(|a| a.ips.as_slice()).unwrap_or_default() {
            requested.push(parse_requested(s)?);
        }
        for s in &runtime.ips {
            requested.push(parse_requested(s)?);
        }

        // runtimeConfig.ipRanges, then the legacy single range, then `ranges`.
        let mut raw_sets: Vec<Vec<IpRange>> = runtime.ip_ranges.clone();
        if let Some(subnet) = raw.subnet {
            raw_sets.push(vec![IpRange {
                subnet,
                range_start: raw.range_start,
                range_end: raw.range_end,
                gateway: raw.gateway,
            }]);
        }
        raw_sets.extend(raw.ranges.iter().cloned());
        if raw_sets.is_empty() {
            return Err(invalid("no IP ranges specified"));
        }

        let mut sets = Vec::with_capacity(raw_sets.len());
        for (i, raw_set) in raw_sets.iter().enumerate() {
            if raw_set.is_empty() {
                return Err(invalid(format!("range set {i} is empty")));
            }
            let ranges = raw_set
                .iter()
                .map(Range::canonical)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(format!("invalid range set {i}: {e}")))?;
            if ranges
                .iter()
                .any(|r| r.subnet.is_ipv4() != ranges[0].subnet.is_ipv4())
            {
                return Err(invalid(format!("range set {i} mixes address families")));
            }
            for (a, r1) in ranges.iter().enumerate() {
                for r2 in &ranges[a + 1..] {
                    if r1.overlaps(r2) {
                        return Err(invalid(format!(
                            "range set {i}: ranges {}-{} and {}-{} overlap",
                            r1.start, r1.end, r2.start, r2.end
                        )));
                    }
                }
            }
            sets.push(RangeSet(ranges));
        }
        for (i, s1) in sets.iter().enumerate() {
            for (j, s2) in sets.iter().enumerate().skip(i + 1) {
                if s1.0.iter().any(|r1| s2.0.iter().any(|r2| r1.overlaps(r2))) {
                    return Err(invalid(format!(
                        "range set {i} overlaps with range set {j}"
                    )));
                }
            }
        }
        // Before 0.3.0 a result holds one address per family.
        let v4 = sets.iter().filter(|s| s.is_ipv4()).count();
        if (v4 > 1 || sets.len() - v4 > 1) && req.version < Version::V0_3_0 {
            return Err(invalid(format!(
                "CNI version {} does not support more than one address per family",
                req.version
            )));
        }

        Ok(IpamConfig {
            network: conf.name.clone(),
            sets,
            routes: raw.routes.iter().map(|r| Route::new(r.dst, r.gw)).collect(),
            // "" is the default too, as in the reference.
            data_dir: raw
                .data_dir
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            resolv_conf: raw.resolv_conf,
            requested,
        })
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use cni_types::Env;
    use serde_json::{Value, json};

    pub fn request(conf: Value, cni_args: &str) -> Request {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
            ("CNI_ARGS", cni_args),
        ];
        let env = Env::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        Request::parse(env, conf.to_string().into_bytes()).unwrap()
    }

    fn with_ipam(mut ipam: Value) -> Value {
        ipam["type"] = json!("host-local");
        json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge", "ipam": ipam})
    }

    pub fn load(ipam: Value, cni_args: &str) -> IpamConfig {
        IpamConfig::load(&request(with_ipam(ipam), cni_args)).unwrap()
    }

    fn error(conf: Value) -> String {
        let e = IpamConfig::load(&request(conf, "")).unwrap_err();
        assert_eq!(e.code.0, 7, "{e}");
        e.msg
    }

    #[test]
    fn defaults() {
        let c = load(json!({"subnet": "10.1.0.0/16"}), "");
        let r = &c.sets[0].0[0];
        assert_eq!(r.start.to_string(), "10.1.0.1");
        assert_eq!(r.end.to_string(), "10.1.255.254");
        assert_eq!(r.gateway.to_string(), "10.1.0.1");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        // "" is the default too (not the runtime's working directory).
        let c = load(json!({"subnet": "10.1.0.0/16", "dataDir": ""}), "");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let c = load(json!({"ranges": [[{"subnet": "fd00::/120"}]]}), "");
        assert_eq!(c.sets[0].0[0].end.to_string(), "fd00::ff");
    }

    #[test]
    fn set_order_is_runtime_then_legacy_then_ranges() {
        let mut conf =
            with_ipam(json!({"subnet": "10.2.0.0/24", "ranges": [[{"subnet": "10.3.0.0/24"}]]}));
        conf["runtimeConfig"] = json!({"ipRanges": [[{"subnet": "10.1.0.0/24"}]]});
        let c = IpamConfig::load(&request(conf, "")).unwrap();
        let subnets: Vec<String> = c.sets.iter().map(|s| s.0[0].subnet.to_string()).collect();
        assert_eq!(subnets, ["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"]);
    }

    #[test]
    fn requested_from_all_three_places() {
        let mut conf = with_ipam(json!({"subnet": "10.1.0.0/16"}));
        conf["args"] = json!({"cni": {"ips": ["10.1.0.7/16"]}});
        conf["runtimeConfig"] = json!({"ips": ["10.1.0.8"]});
        let c = IpamConfig::load(&request(conf, "IP=10.1.0.5,10.1.0.6/16")).unwrap();
        let got: Vec<String> = c.requested.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["10.1.0.5", "10.1.0.6", "10.1.0.7", "10.1.0.8"]);
    }

    #[test]
    fn unknown_cni_args_need_ignore_unknown() {
        let conf = with_ipam(json!({"subnet": "10.1.0.0/16"}));
        assert_eq!(
            IpamConfig::load(&request(conf.clone(), "FOO=1"))
                .unwrap_err()
                .code
                .0,
            4
        );
        IpamConfig::load(&request(conf.clone(), "IgnoreUnknown=1;FOO=1")).unwrap();
        IpamConfig::load(&request(conf, "K8S_POD_NAME=x;MAC=0a:00:00:00:00:01")).unwrap();
    }

    #[test]
    fn invalid_configs_are_code_7() {
        let r = |ranges: Value| with_ipam(json!({"ranges": ranges}));
        assert!(error(json!({"cniVersion": "1.0.0", "name": "n", "type": "x"})).contains("ipam"));
        assert!(error(with_ipam(json!({}))).contains("no IP ranges"));
        assert!(error(with_ipam(json!({"subnet": "10.0.0.1/24"}))).contains("host bits"));
        assert!(error(with_ipam(json!({"subnet": "::ffff:10.0.0.0/120"}))).contains("IPv4-mapped"));
        for small in ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"] {
            assert!(
                error(with_ipam(json!({"subnet": small}))).contains("too small"),
                "{small}"
            );
        }
        assert!(
            error(r(
                json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]])
            ))
            .contains("not in network")
        );
        assert!(error(r(json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.5"}]]))).contains("after"));
        assert!(
            error(r(
                json!([[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]])
            ))
            .contains("families")
        );
        assert!(
            error(r(
                json!([[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]])
            ))
            .contains("overlap")
        );
        assert!(
            error(r(
                json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.128/25"}]])
            ))
            .contains("overlaps")
        );
        assert!(error(r(json!([[]]))).contains("empty"));
        assert!(
            error(r(
                json!([[{"subnet": "10.0.0.0/24", "gateway": "fd00::1"}]])
            ))
            .contains("family")
        );
        assert!(
            error(with_ipam(
                json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "nope"}]})
            ))
            .contains("ipam")
        );
        let mut old = r(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]]));
        old["cniVersion"] = json!("0.2.0");
        assert!(error(old).contains("more than one address per family"));
        let mut bad_ip = with_ipam(json!({"subnet": "10.1.0.0/16"}));
        bad_ip["runtimeConfig"] = json!({"ips": ["10.1.0.x"]});
        assert!(error(bad_ip).contains("10.1.0.x"));
    }

    #[test]
    fn capacity() {
        let c = load(json!({"subnet": "10.0.0.0/29"}), "");
        assert_eq!(c.sets[0].0[0].capacity(), 5); // .1-.6 minus gateway .1
    }
}
