//! The CNI environment variables, checked for the verb they come with.

use std::path::PathBuf;

use crate::args::CniArgs;
use crate::error::CniError;
use crate::validate;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return Err(CniError::invalid_env(format!("unknown CNI_COMMAND {s:?}"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }

    /// ADD, DEL and CHECK act on one attachment (container id + interface).
    pub fn is_per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The variables the spec defines.
const VARIABLES: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

/// One message for every variable: read as unset, a value that is not text
/// would silently change what the plugin does (an `IP=` request dropped).
fn not_utf8(var: &str) -> CniError {
    CniError::invalid_env(format!("{var} is not valid UTF-8"))
}

/// What the runtime told the plugin through its environment.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    /// Empty for GC, STATUS and VERSION.
    pub container_id: String,
    /// `None` when unset or empty (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

impl Env {
    pub fn from_process() -> Result<Env, CniError> {
        for k in VARIABLES {
            if std::env::var_os(k).is_some_and(|v| v.to_str().is_none()) {
                return Err(not_utf8(k));
            }
        }
        Env::from_lookup(|k| std::env::var(k).ok())
    }

    /// Read and check the variables. Per the spec, ADD/DEL/CHECK need the
    /// container id and interface, ADD/CHECK the netns; CNI_PATH is only
    /// needed by plugins that delegate, so it is not required here.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = match var("CNI_COMMAND") {
            Some(c) => Command::parse(&c)?,
            None => return Err(CniError::invalid_env("CNI_COMMAND is not set")),
        };
        let container_id = var("CNI_CONTAINERID").unwrap_or_default();
        let ifname = var("CNI_IFNAME").unwrap_or_default();
        let netns = var("CNI_NETNS").map(PathBuf::from);
        if command.is_per_attachment() {
            validate::container_id(&container_id)?;
            validate::interface_name(&ifname)?;
            if netns.is_none() && command != Command::Del {
                return Err(CniError::invalid_env(format!(
                    "CNI_NETNS is required for {}",
                    command.as_str()
                )));
            }
        }
        let args = CniArgs::parse(&var("CNI_ARGS").unwrap_or_default())?;
        let path = var("CNI_PATH").map(split_cni_path).unwrap_or_default();
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

/// The directories of a `CNI_PATH` value, empty entries dropped.
pub fn split_cni_path(raw: impl AsRef<std::ffi::OsStr>) -> Vec<PathBuf> {
    std::env::split_paths(raw.as_ref())
        .filter(|d| !d.as_os_str().is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
    ];

    #[test]
    fn full_add() {
        let e = env(&ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(
            e.path,
            [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    fn without(key: &str) -> Vec<(&'static str, &'static str)> {
        ADD.iter().copied().filter(|(k, _)| *k != key).collect()
    }

    #[test]
    fn per_verb_requirements() {
        for k in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_COMMAND"] {
            assert_eq!(env(&without(k)).unwrap_err().code.0, 4, "{k}");
        }
        // DEL may come without a netns (containerd after the task exited)
        let mut del = without("CNI_NETNS");
        del[0] = ("CNI_COMMAND", "DEL");
        assert!(env(&del).unwrap().netns.is_none());
        // GC, STATUS, VERSION need only the command
        for c in ["GC", "STATUS", "VERSION"] {
            env(&[("CNI_COMMAND", c)]).unwrap();
        }
    }

    #[test]
    fn bad_values() {
        let mut e = ADD.to_vec();
        e[0] = ("CNI_COMMAND", "FROB");
        assert_eq!(env(&e).unwrap_err().code.0, 4);
        let mut e = ADD.to_vec();
        e[3] = ("CNI_IFNAME", "eth/0");
        assert_eq!(env(&e).unwrap_err().code.0, 4);
        let mut e = ADD.to_vec();
        e.push(("CNI_ARGS", "broken"));
        assert_eq!(env(&e).unwrap_err().code.0, 4);
    }
}
