//! `CNI_ARGS`: `KEY=VALUE;KEY2=VALUE2`, with `IgnoreUnknown=1` allowing keys
//! a plugin does not know.

use crate::error::CniError;

/// Keys runtimes send to every plugin (kubelet, CRI-O, podman): accepted by
/// [`CniArgs::check_known`] whatever the plugin knows.
pub const RUNTIME_KEYS: &[&str] = &[
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs, CniError> {
        let mut pairs = Vec::new();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => pairs.push((k.to_owned(), v.to_owned())),
                _ => {
                    return Err(CniError::invalid_env("invalid CNI_ARGS pair")
                        .with_details(format!("{pair:?} is not KEY=VALUE")));
                }
            }
        }
        Ok(CniArgs { pairs })
    }

    /// The value of `key`; when it is given more than once, the last one, as
    /// the reference reads `IP=a;IP=b` (later fields overwrite earlier).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    pub fn ignore_unknown(&self) -> bool {
        self.get("IgnoreUnknown")
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    }

    /// Refuse keys outside `known` (and [`RUNTIME_KEYS`]) unless
    /// `IgnoreUnknown` is set, as the reference plugins do.
    pub fn check_known(&self, known: &[&str]) -> Result<(), CniError> {
        if self.ignore_unknown() {
            return Ok(());
        }
        let unknown: Vec<&str> = self
            .pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != "IgnoreUnknown" && !known.contains(k) && !RUNTIME_KEYS.contains(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(CniError::invalid_env("unknown CNI_ARGS keys")
                .with_details(format!("{unknown:?}; set IgnoreUnknown=1 to allow them")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web-0;IP=10.0.0.5,fd00::5").unwrap();
        assert!(a.ignore_unknown());
        assert_eq!(a.get("IP"), Some("10.0.0.5,fd00::5"));
        assert_eq!(a.get("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(a.get("nope"), None);
        assert_eq!(CniArgs::parse("").unwrap().pairs().len(), 0);
        // a value may itself hold '='
        assert_eq!(CniArgs::parse("X=a=b").unwrap().get("X"), Some("a=b"));
        // the last of a repeated key counts, as in the reference
        let twice = CniArgs::parse("IP=10.0.0.5;IP=10.0.0.6").unwrap();
        assert_eq!(twice.get("IP"), Some("10.0.0.6"));
    }

    #[test]
    fn malformed_pairs_are_code_4() {
        for bad in ["novalue", "=x", "A=1;B"] {
            assert_eq!(CniArgs::parse(bad).unwrap_err().code.0, 4, "{bad}");
        }
    }

    #[test]
    fn unknown_keys() {
        let a = CniArgs::parse("IP=1.2.3.4;FOO=bar").unwrap();
        assert!(a.check_known(&["IP"]).is_err());
        a.check_known(&["IP", "FOO"]).unwrap();
        CniArgs::parse("IgnoreUnknown=true;FOO=bar")
            .unwrap()
            .check_known(&[])
            .unwrap();
    }
}
