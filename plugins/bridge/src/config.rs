//! The bridge plugin's configuration: the reference plugin's options, parsed
//! and checked before anything touches the kernel.

use cni_types::{CniError, NetConf, Request, validate};

use serde::Deserialize;

/// CNI_ARGS keys the bridge (and the IPAM plugin it runs) read; others,
/// besides the runtimes' own, need IgnoreUnknown=1.
const KNOWN_ARGS: &[&str] = &["MAC", "IP"];

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    #[serde(flatten)]
    pub net: NetConf,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub force_address: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub vlan: Option<i64>,
    #[serde(default)]
    pub vlan_trunk: Vec<VlanTrunk>,
    #[serde(default = "yes")]
    pub preserve_default_vlan: bool,
    #[serde(default)]
    pub enabledad: bool,
    #[serde(default)]
    pub macspoofchk: bool,
    #[serde(default)]
    pub disable_container_interface: bool,
    #[serde(default)]
    pub port_isolation: bool,
    /// The container interface's MAC, from runtimeConfig.mac, args.cni.mac
    /// or CNI_ARGS MAC=, in that order of precedence.
    #[serde(skip)]
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VlanTrunk {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default, rename = "minID")]
    pub min_id: Option<i64>,
    #[serde(default, rename = "maxID")]
    pub max_id: Option<i64>,
}

/// `aa:bb:cc:dd:ee:ff`, a unicast address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("invalid MAC address {s:?}"));
    }
    for (b, p) in mac.iter_mut().zip(&parts) {
        *b = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .ok_or_else(|| format!("invalid MAC address {s:?}"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!("MAC address {s:?} is multicast"));
    }
    if mac == [0; 6] {
        return Err(format!("MAC address {s:?} is all zeros"));
    }
    Ok(mac)
}

fn default_bridge() -> String {
    "cni0".into()
}

fn yes() -> bool {
    true
}

const VLAN_IDS: std::ops::RangeInclusive<i64> = 1..=4094;

impl BridgeConf {
    pub fn load(req: &Request) -> Result<BridgeConf, CniError> {
        let mut c: BridgeConf = req.config()?;
        c.validate()?;
        // The reference treats a default gateway as a gateway.
        c.is_gateway |= c.is_default_gateway;
        req.env.args.check_known(KNOWN_ARGS)?;
        let from_conf = c
            .net
            .runtime()
            .mac
            .or_else(|| c.net.args.as_ref()?.cni.as_ref()?.mac.clone());
        c.mac = match (from_conf, req.env.args.get("MAC")) {
            (Some(m), _) => Some(parse_mac(&m).map_err(CniError::invalid_config)?),
            (None, Some(m)) => Some(parse_mac(m).map_err(CniError::invalid_env)?),
            (None, None) => None,
        };
        if c.disable_container_interface && c.is_layer3() {
            return Err(CniError::invalid_config(
                "cannot use IPAM when disableContainerInterface is set",
            ));
        }
        Ok(c)
    }

    /// `ipam: {}` (or no ipam) means the bridge only does layer 2.
    pub fn is_layer3(&self) -> bool {
        self.net
            .ipam
            .as_ref()
            .is_some_and(|i| !i.plugin_type.is_empty())
    }

    pub fn vlans_in_use(&self) -> bool {
        self.vlan.is_some_and(|v| v != 0) || !self.vlan_trunk.is_empty()
    }

    /// Every trunk VLAN id, ranges expanded.
    pub fn trunk_ids(&self) -> Vec<u16> {
        let mut ids = Vec::new();
        for t in &self.vlan_trunk {
            match (t.id, t.min_id, t.max_id) {
                (Some(id), _, _) => ids.push(id as u16),
                (None, Some(lo), Some(hi)) => ids.extend((lo as u16)..=(hi as u16)),
                _ => {}
            }
        }
        ids
    }

    fn validate(&self) -> Result<(), CniError> {
        let invalid = |m: String| CniError::invalid_config(m);
        validate::interface_name(&self.bridge).map_err(|e| {
            invalid(format!("invalid bridge name: {}", e.msg)).with_details(&self.bridge)
        })?;
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(invalid(format!("mtu {mtu} is outside 68..65535")));
        }
        if self.hairpin_mode && self.promisc_mode {
            return Err(invalid(
                "cannot set hairpinMode and promiscMode at the same time".into(),
            ));
        }
        if let Some(v) = self.vlan
            && !(0..=4094).contains(&v)
        {
            return Err(invalid(format!("vlan {v} is outside 0..4094")));
        }
        for t in &self.vlan_trunk {
            match (t.id, t.min_id, t.max_id) {
                (Some(id), None, None) if VLAN_IDS.contains(&id) => {}
                (None, Some(lo), Some(hi))
                    if VLAN_IDS.contains(&lo) && VLAN_IDS.contains(&hi) && lo <= hi => {}
                _ => {
                    return Err(invalid(
                        "each vlanTrunk entry needs an id, or minID <= maxID, within 1..4094"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("0a:58:0A:00:00:05").unwrap(),
            [0x0a, 0x58, 0x0a, 0, 0, 5]
        );
        for bad in [
            "0a:58:0a:00:00",
            "0a:58:0a:00:00:5",
            "zz:58:0a:00:00:05",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
