//! The portmap plugin's configuration.

use crate::rules::{Cond, MASQ_MARK};
use cni_types::{CniError, Code, NetConf, Request};
use serde::Deserialize;

use crate::conditions;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapConf {
    #[serde(flatten)]
    pub net: NetConf,
    /// Masquerade hairpin and localhost traffic; the reference defaults to true.
    #[serde(default)]
    pub snat: Option<bool>,
    #[serde(default)]
    pub masq_all: bool,
    #[serde(default)]
    pub conditions_v4: Option<Vec<String>>,
    #[serde(default)]
    pub conditions_v6: Option<Vec<String>>,
    /// iptables-backend options of the reference, accepted for compatibility.
    #[serde(default)]
    pub mark_masq_bit: Option<i64>,
    #[serde(default)]
    pub external_set_mark_chain: Option<String>,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(skip)]
    pub v4: Vec<Cond>,
    #[serde(skip)]
    pub v6: Vec<Cond>,
}

impl PortMapConf {
    pub fn load(req: &Request) -> Result<PortMapConf, CniError> {
        let mut c: PortMapConf = req.config()?;
        if let Some(bit) = c.mark_masq_bit
            && !(0..=31).contains(&bit)
        {
            return Err(CniError::invalid_config(format!(
                "markMasqBit {bit} is outside 0..31"
            )));
        }
        if c.mark_masq_bit.is_some() && c.external_set_mark_chain.is_some() {
            return Err(CniError::invalid_config(
                "markMasqBit and externalSetMarkChain cannot be used together",
            ));
        }
        // Our masquerade mark is the reference's default bit; another bit, or
        // an iptables chain that sets the mark, has no nftables meaning here.
        if let Some(bit) = c.mark_masq_bit
            && 1u32 << (bit as u32) != MASQ_MARK
        {
            return Err(CniError::new(
                Code::UNSUPPORTED_FIELD,
                format!("markMasqBit {bit} is not supported; the mark bit is 13"),
            ));
        }
        if c.external_set_mark_chain.is_some() {
            return Err(CniError::new(
                Code::UNSUPPORTED_FIELD,
                "externalSetMarkChain is an iptables option",
            ));
        }
        c.v4 = conditions::parse(c.conditions_v4.as_deref().unwrap_or_default(), false)?;
        c.v6 = conditions::parse(c.conditions_v6.as_deref().unwrap_or_default(), true)?;
        if let Some(b) = &c.backend
            && b != "nftables"
            && b != "iptables"
        {
            return Err(CniError::invalid_config(format!("unknown backend {b:?}")));
        }
        for m in &c.net.runtime().port_mappings {
            for (what, port) in [
                ("hostPort", m.host_port),
                ("containerPort", m.container_port),
            ] {
                if !(1..=65535).contains(&port) {
                    return Err(CniError::invalid_config(format!(
                        "{what} {port} is outside 1..65535"
                    )));
                }
            }
            if !matches!(
                m.protocol.to_ascii_lowercase().as_str(),
                "tcp" | "udp" | "sctp"
            ) {
                return Err(CniError::invalid_config(format!(
                    "unknown protocol {:?}",
                    m.protocol
                )));
            }
        }
        Ok(c)
    }
}

impl PortMapConf {
    pub fn snat(&self) -> bool {
        self.snat.unwrap_or(true)
    }
}
