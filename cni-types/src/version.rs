//! CNI spec versions and the VERSION reply.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{CniError, Code};

/// Every spec version this crate can speak, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_1_0,
    V0_2_0,
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const ALL: [Version; 7] = [
        Version::V0_1_0,
        Version::V0_2_0,
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_1_0 => "0.1.0",
            Version::V0_2_0 => "0.2.0",
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// The version a config declares; an absent or empty `cniVersion` means
    /// 0.1.0, as the spec's first version had no such field.
    pub fn of_config(raw: Option<&str>) -> Result<Version, CniError> {
        match raw {
            None | Some("") => Ok(Version::V0_1_0),
            Some(s) => s.parse(),
        }
    }

    /// Results before 0.3.0 use the `ip4`/`ip6` shape.
    pub fn is_legacy_result(self) -> bool {
        self < Version::V0_3_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Version {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    Code::INCOMPATIBLE_VERSION,
                    format!("unsupported CNI version {s:?}"),
                )
                .with_details(format!("supported versions: {}", supported_list()))
            })
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn supported_list() -> String {
    Version::ALL.map(Version::as_str).join(", ")
}

/// The reply to `CNI_COMMAND=VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    pub fn new(supported: &[Version]) -> Self {
        VersionInfo {
            cni_version: Version::LATEST.as_str().to_owned(),
            supported_versions: supported.iter().map(|v| v.as_str().to_owned()).collect(),
        }
    }

    pub fn supports(&self, v: &str) -> bool {
        self.supported_versions.iter().any(|s| s == v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_version_and_orders_them() {
        for w in Version::ALL.windows(2) {
            assert!(w[0] < w[1]);
            assert_eq!(w[0].as_str().parse::<Version>().unwrap(), w[0]);
        }
    }

    #[test]
    fn unknown_version_is_code_1() {
        let e = "0.5.0".parse::<Version>().unwrap_err();
        assert_eq!(e.code, Code::INCOMPATIBLE_VERSION);
        assert!("1.1".parse::<Version>().is_err());
    }

    #[test]
    fn missing_version_means_0_1_0() {
        assert_eq!(Version::of_config(None).unwrap(), Version::V0_1_0);
        assert_eq!(Version::of_config(Some("")).unwrap(), Version::V0_1_0);
    }

    #[test]
    fn version_reply_shape() {
        let v = serde_json::to_value(VersionInfo::new(&Version::ALL)).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 7);
    }
}
