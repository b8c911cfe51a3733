//! Whether a plugin speaks the list's version: decoding its VERSION reply as
//! libcni does, and refusing a list a plugin cannot run.

use cni_types::{CniError, Code, Version};
use serde_json::Value;

/// The versions a plugin supports, from the outcome of running it with
/// `CNI_COMMAND=VERSION`. Like libcni: a plugin that predates VERSION (0.1.0)
/// answers "unknown CNI_COMMAND: VERSION", and a 0.2.0 reply may omit
/// `supportedVersions`.
pub fn supported(reply: Result<Vec<u8>, CniError>) -> Result<Vec<String>, CniError> {
    let out = match reply {
        Ok(out) => out,
        Err(e) if e.msg == "unknown CNI_COMMAND: VERSION" => return Ok(vec!["0.1.0".into()]),
        Err(e) => return Err(e),
    };
    let bad =
        |why: String| CniError::new(Code::DECODE, format!("cannot decode version info: {why}"));
    let doc: Value = serde_json::from_slice(&out).map_err(|e| bad(e.to_string()))?;
    let version = doc.get("cniVersion").and_then(Value::as_str).unwrap_or("");
    if version.is_empty() {
        return Err(bad("missing field cniVersion".into()));
    }
    let versions: Vec<String> = match doc.get("supportedVersions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(vs)) => vs
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("supportedVersions holds a non-string".into()))?,
        Some(_) => return Err(bad("supportedVersions is not a list".into())),
    };
    if versions.is_empty() {
        if version == "0.2.0" {
            return Ok(vec!["0.1.0".into(), "0.2.0".into()]);
        }
        return Err(bad("missing field supportedVersions".into()));
    }
    Ok(versions)
}

/// Refuse (code 1) when `version` is not among what plugin `plugin_type` supports.
pub fn require(plugin_type: &str, version: Version, supported: &[String]) -> Result<(), CniError> {
    if supported.iter().any(|v| v == version.as_str()) {
        return Ok(());
    }
    Err(CniError::new(
        Code::INCOMPATIBLE_VERSION,
        format!("plugin type={plugin_type:?} does not support config version \"{version}\""),
    )
    .with_details(format!("it supports: {}", supported.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Result<Vec<u8>, CniError> {
        Ok(s.as_bytes().to_vec())
    }

    #[test]
    fn decodes_replies() {
        assert_eq!(
            supported(ok(
                r#"{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}"#
            ))
            .unwrap(),
            ["1.0.0", "1.1.0"]
        );
        assert_eq!(
            supported(ok(r#"{"cniVersion":"0.2.0"}"#)).unwrap(),
            ["0.1.0", "0.2.0"]
        );
        let old = CniError::new(Code(999), "unknown CNI_COMMAND: VERSION");
        assert_eq!(supported(Err(old)).unwrap(), ["0.1.0"]);
        for bad in [
            "",
            "[]",
            r#"{"supportedVersions":["1.0.0"]}"#,
            r#"{"cniVersion":"1.0.0"}"#,
            r#"{"cniVersion":"1.0.0","supportedVersions":[1]}"#,
            r#"{"cniVersion":"1.0.0","supportedVersions":"1.0.0"}"#,
        ] {
            assert_eq!(supported(ok(bad)).unwrap_err().code, Code::DECODE, "{bad}");
        }
        let failed = CniError::new(Code(11), "busy");
        assert_eq!(supported(Err(failed.clone())).unwrap_err(), failed);
    }

    #[test]
    fn refusal_names_the_plugin() {
        let vs = vec!["0.4.0".to_string(), "1.0.0".to_string()];
        require("bridge", Version::V1_0_0, &vs).unwrap();
        let e = require("bridge", Version::V1_1_0, &vs).unwrap_err();
        assert_eq!(e.code, Code::INCOMPATIBLE_VERSION);
        assert!(
            e.msg.contains("type=\"bridge\"") && e.msg.contains("1.1.0"),
            "{e}"
        );
        assert!(e.details.contains("0.4.0, 1.0.0"));
    }
}
