//! The ptp plugin's configuration: the reference plugin's options, parsed
//! and checked before anything touches the kernel.

use cni_types::{CniError, NetConf, Request};
use serde::Deserialize;

/// CNI_ARGS keys ptp (and the IPAM plugin it runs) read; others, besides the
/// runtimes' own, need IgnoreUnknown=1.
const KNOWN_ARGS: &[&str] = &["IP"];

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PtpConf {
    #[serde(flatten)]
    pub net: NetConf,
    #[serde(default)]
    pub ip_masq: bool,
    /// Both ends of the veth; 0 (as kindnet may write) means the default.
    #[serde(default)]
    pub mtu: Option<u32>,
}

impl PtpConf {
    pub fn load(req: &Request) -> Result<PtpConf, CniError> {
        let mut c: PtpConf = req.config()?;
        if c.mtu == Some(0) {
            c.mtu = None;
        }
        if let Some(mtu) = c.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(CniError::invalid_config(format!(
                "mtu {mtu} is outside 68..65535"
            )));
        }
        if c.ipam_type().is_none() {
            return Err(CniError::invalid_config(
                "ptp needs an IPAM plugin (ipam.type)",
            ));
        }
        req.env.args.check_known(KNOWN_ARGS)?;
        Ok(c)
    }

    pub fn ipam_type(&self) -> Option<&str> {
        self.net
            .ipam
            .as_ref()
            .map(|i| i.plugin_type.as_str())
            .filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_types::Env;
    use serde_json::{Value, json};

    fn load(conf: Value, args: &str) -> Result<PtpConf, CniError> {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_ARGS", args),
        ];
        let env = Env::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        PtpConf::load(&Request::parse(env, conf.to_string().into_bytes())?)
    }

    fn base() -> Value {
        json!({"cniVersion": "0.3.1", "name": "kindnet", "type": "ptp",
               "ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}})
    }

    #[test]
    fn options_and_defaults() {
        let c = load(base(), "").unwrap();
        assert!(!c.ip_masq);
        assert_eq!(c.mtu, None);
        let mut with = base();
        with["ipMasq"] = json!(true);
        with["mtu"] = json!(1450);
        let c = load(with, "IP=10.244.0.9").unwrap();
        assert!(c.ip_masq);
        assert_eq!(c.mtu, Some(1450));
        let mut zero = base();
        zero["mtu"] = json!(0);
        assert_eq!(load(zero, "").unwrap().mtu, None);
    }

    #[test]
    fn bad_configs_are_code_7() {
        for (k, v) in [
            ("mtu", json!(20)),
            ("mtu", json!("big")),
            ("ipMasq", json!("yes")),
            ("ipam", json!({})),
        ] {
            let mut c = base();
            c[k] = v;
            assert_eq!(load(c, "").unwrap_err().code.0, 7, "{k}");
        }
        let mut no_ipam = base();
        no_ipam.as_object_mut().unwrap().remove("ipam");
        assert_eq!(load(no_ipam, "").unwrap_err().code.0, 7);
        assert_eq!(load(base(), "FOO=1").unwrap_err().code.0, 4);
    }
}
