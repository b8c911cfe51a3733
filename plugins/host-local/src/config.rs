//! The host-local IPAM configuration (the `ipam` object of the network config).

use std::net::IpAddr;
use std::path::PathBuf;

use cni_types::{CniError, IpRange, NetConf, Request};
use ipnetwork::IpNetwork;
use serde::Deserialize;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    #[serde(default)]
    pub ranges: Vec<Vec<IpRange>>,
    /// The legacy single range; becomes range set 0.
    #[serde(default)]
    pub subnet: Option<IpNetwork>,
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub routes: Vec<RouteConf>,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub resolv_conf: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RouteConf {
    pub dst: IpNetwork,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct HostLocalConf {
    pub net: NetConf,
    pub ipam: IpamConf,
}

impl HostLocalConf {
    pub fn load(req: &Request) -> Result<HostLocalConf, CniError> {
        let net = req.conf.clone();
        let Some(raw) = &net.ipam else {
            return Err(CniError::invalid_config(
                "host-local needs an \"ipam\" object",
            ));
        };
        let ipam = IpamConf::deserialize(serde_json::Value::Object(raw.other.clone()))
            .map_err(|e| CniError::invalid_config(format!("invalid ipam config: {e}")))?;
        let has_runtime_ranges = !net.runtime().ip_ranges.is_empty();
        if ipam.ranges.is_empty() && ipam.subnet.is_none() && !has_runtime_ranges {
            return Err(CniError::invalid_config("no IP ranges specified"));
        }
        if ipam.ranges.iter().any(Vec::is_empty) {
            return Err(CniError::invalid_config(
                "a range set in ipam.ranges is empty",
            ));
        }
        Ok(HostLocalConf { net, ipam })
    }
}
