//! The bridge plugin's configuration: the reference plugin's options, parsed
//! and checked before anything touches the kernel.

use cni_types::{CniError, NetConf, Request, validate};
use serde::Deserialize;

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
        Ok(c)
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
