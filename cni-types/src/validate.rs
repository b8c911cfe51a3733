//! The name rules of the spec: container ids, network names, interface names.

use crate::error::{CniError, Code};

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, shared by container ids and network names.
fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub fn container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::invalid_env(
            "missing container id (CNI_CONTAINERID)",
        ));
    }
    if !is_valid_name(id) {
        return Err(CniError::invalid_env("invalid characters in container id").with_details(id));
    }
    Ok(())
}

pub fn network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::new(Code::INVALID_CONFIG, "missing network name"));
    }
    if !is_valid_name(name) {
        return Err(
            CniError::new(Code::INVALID_CONFIG, "invalid characters in network name")
                .with_details(name),
        );
    }
    Ok(())
}

/// Linux accepts 1..15 bytes (IFNAMSIZ - 1), not `.`/`..`, no `/`, `:` or
/// whitespace. `%` is refused too: the kernel expands `%d` in a new link's
/// name to a free number, so the link made would not be the one named.
pub fn interface_name(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        "interface name is empty"
    } else if name.len() > 15 {
        "interface name is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "interface name is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '%' || c.is_whitespace())
    {
        "interface name contains /, :, % or whitespace"
    } else {
        return Ok(());
    };
    Err(CniError::invalid_env(why).with_details(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        for ok in ["a", "0abc", "abc-DEF_1.2", "cnitool-0123456789abcdef0123"] {
            container_id(ok).unwrap();
        }
        for bad in ["", "-a", ".a", "a b", "a/b", "é"] {
            assert_eq!(
                container_id(bad).unwrap_err().code,
                Code::INVALID_ENV,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn network_names_are_config_errors() {
        network_name("dbnet-1.x_y").unwrap();
        assert_eq!(network_name("").unwrap_err().code, Code::INVALID_CONFIG);
        assert_eq!(network_name("a:b").unwrap_err().code, Code::INVALID_CONFIG);
    }

    #[test]
    fn interface_names() {
        for ok in ["eth0", "a", "123456789012345", "net1.100", "veth-x_y"] {
            interface_name(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "eth/0",
            "eth:0",
            "eth 0",
            "eth\t0",
            "1234567890123456",
        ] {
            assert_eq!(
                interface_name(bad).unwrap_err().code,
                Code::INVALID_ENV,
                "{bad:?}"
            );
        }
    }
}
