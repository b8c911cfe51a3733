//! The CNI error: a spec code, a message and details, printed as JSON on stdout.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A CNI error code. The well-known codes are constants; plugins use 100+.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Code(pub u32);

impl Code {
    pub const INCOMPATIBLE_VERSION: Code = Code(1);
    pub const UNSUPPORTED_FIELD: Code = Code(2);
    pub const UNKNOWN_CONTAINER: Code = Code(3);
    pub const INVALID_ENV: Code = Code(4);
    pub const IO_FAILURE: Code = Code(5);
    pub const DECODE: Code = Code(6);
    pub const INVALID_CONFIG: Code = Code(7);
    pub const TRY_AGAIN_LATER: Code = Code(11);
    pub const NOT_AVAILABLE: Code = Code(50);
    pub const LIMITED_CONNECTIVITY: Code = Code(51);
    /// The reference plugins use 999 for failures that carry no code.
    pub const INTERNAL: Code = Code(999);
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The error every plugin returns; its JSON is the spec's error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        CniError::new(Code::INVALID_CONFIG, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        CniError::new(Code::INVALID_ENV, msg)
    }

    pub fn io(msg: impl Into<String>) -> Self {
        CniError::new(Code::IO_FAILURE, msg)
    }

    /// The JSON object printed on stdout, tagged with the version in use.
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_four_spec_fields() {
        let e = CniError::new(Code::INVALID_CONFIG, "bad").with_details("why");
        let v = e.to_json("1.0.0");
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","code":7,"msg":"bad","details":"why"})
        );
    }

    #[test]
    fn decodes_an_error_without_details() {
        let e: CniError = serde_json::from_str(r#"{"code":11,"msg":"later"}"#).unwrap();
        assert_eq!(e.code, Code::TRY_AGAIN_LATER);
        assert_eq!(e.details, "");
    }
}
