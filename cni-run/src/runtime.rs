//! What the runtime passes to every plugin of a chain, read from cnitool's
//! environment: libcni's `RuntimeConf`, plus where configs and the cache live.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use cni_types::CniError;
use serde_json::{Map, Value};
use sha2::{Digest, Sha512};

pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";
pub const DEFAULT_IFNAME: &str = "eth0";

/// One attachment's invocation parameters, shared by every plugin of the list.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    /// Absolute; `None` only for GC and STATUS run without a netns argument.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` as pairs, for the cache.
    pub args: Vec<(String, String)>,
    /// `CNI_ARGS` as given, handed to plugins unchanged.
    pub args_raw: String,
    /// `CAP_ARGS`: every capability the runtime offers; each plugin gets the
    /// ones it declares.
    pub capability_args: Map<String, Value>,
    /// `CNI_PATH`.
    pub path: Vec<PathBuf>,
    /// Holds `results/`, as libcni's cache dir does.
    pub cache_dir: PathBuf,
}

/// Everything the environment decides for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    /// `NETCONFPATH`.
    pub conf_dir: PathBuf,
    pub runtime: RuntimeConf,
}

impl Environment {
    /// Read cnitool's variables through `get`. `cwd` is only needed to make a
    /// relative netns absolute.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<OsString>,
        netns: Option<&OsStr>,
        cwd: Option<&Path>,
    ) -> Result<Environment, CniError> {
        // Unset and empty mean the same, as with cnitool's os.Getenv.
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        let text = |k: &str| -> Result<Option<String>, CniError> {
            var(k)
                .map(|v| {
                    v.into_string()
                        .map_err(|_| CniError::invalid_env(format!("{k} is not valid UTF-8")))
                })
                .transpose()
        };
        let dir = |k: &str, default: &str| var(k).map_or_else(|| default.into(), PathBuf::from);

        let args_raw = text("CNI_ARGS")?.unwrap_or_default();
        let args = parse_cni_args(&args_raw)?;
        let capability_args = parse_capability_args(&text("CAP_ARGS")?.unwrap_or_default())?;
        let ifname = text("CNI_IFNAME")?.unwrap_or_else(|| DEFAULT_IFNAME.into());
        let path = var("CNI_PATH")
            .map(cni_types::env::split_cni_path)
            .unwrap_or_default();
        let netns = match netns {
            None => None,
            Some(ns) => {
                let ns = Path::new(ns);
                let cwd = match cwd {
                    Some(cwd) => cwd,
                    None if ns.is_absolute() => Path::new("/"),
                    None => {
                        return Err(CniError::io(
                            "cannot make the netns path absolute: no current directory",
                        ));
                    }
                };
                Some(absolute(ns, cwd))
            }
        };
        let container_id = netns.as_deref().map(container_id).unwrap_or_default();
        Ok(Environment {
            conf_dir: dir("NETCONFPATH", DEFAULT_CONF_DIR),
            runtime: RuntimeConf {
                container_id,
                netns,
                ifname,
                args,
                args_raw,
                capability_args,
                path,
                cache_dir: dir("CNI_CACHE_DIR", DEFAULT_CACHE_DIR),
            },
        })
    }
}

/// cnitool's container id: `cnitool-` and the hex of the first 10 bytes of
/// the SHA-512 of the absolute netns path, so the same netns always maps to
/// the same cache entry across runs.
pub fn container_id(netns: &Path) -> String {
    let digest = Sha512::digest(netns.as_os_str().as_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("cnitool-{hex}")
}

/// Go's `filepath.Abs`: join to `cwd` and clean lexically. The path need not
/// exist (DEL of a netns that is already gone must still work).
pub fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    let joined = cwd.join(path);
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in joined.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut out = PathBuf::from("/");
    out.extend(parts);
    out
}

/// `CNI_ARGS` with cnitool's rules, which are stricter than a plugin's:
/// every `;`-separated pair is exactly `KEY=VALUE`, both non-empty.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    raw.split(';')
        .map(|pair| {
            let mut kv = pair.split('=');
            match (kv.next(), kv.next(), kv.next()) {
                (Some(k), Some(v), None) if !k.is_empty() && !v.is_empty() => {
                    Ok((k.to_owned(), v.to_owned()))
                }
                _ => Err(
                    CniError::invalid_env(format!("invalid CNI_ARGS pair {pair:?}"))
                        .with_details("CNI_ARGS must be KEY=VALUE pairs separated by ';'"),
                ),
            }
        })
        .collect()
}

/// `CAP_ARGS`: a JSON object of capability name to value. `null` is no args,
/// as Go's json.Unmarshal into a map allows.
pub fn parse_capability_args(raw: &str) -> Result<Map<String, Value>, CniError> {
    if raw.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(other) => Err(CniError::invalid_env("CAP_ARGS is not a JSON object")
            .with_details(format!("got {other}"))),
        Err(e) => Err(CniError::invalid_env(format!(
            "CAP_ARGS is not valid JSON: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[test]
    fn container_id_matches_cnitool() {
        // echo -n /var/run/netns/test | sha512sum | cut -c1-20
        assert_eq!(
            container_id(Path::new("/var/run/netns/test")),
            "cnitool-7b8a61d5d8e94d07cbe4"
        );
    }

    #[test]
    fn netns_is_made_absolute_lexically() {
        let cwd = Path::new("/work/dir");
        let abs = |p: &str| absolute(Path::new(p), cwd);
        assert_eq!(abs("ns"), PathBuf::from("/work/dir/ns"));
        assert_eq!(abs("./a/../b//c/"), PathBuf::from("/work/dir/b/c"));
        assert_eq!(abs("../../../x"), PathBuf::from("/x"));
        assert_eq!(abs("/run/netns/./x"), PathBuf::from("/run/netns/x"));
        assert_eq!(abs(""), PathBuf::from("/work/dir"));
    }

    #[test]
    fn cni_args_follow_cnitool_rules() {
        assert_eq!(
            parse_cni_args("IgnoreUnknown=1;IP=10.0.0.5").unwrap(),
            [
                ("IgnoreUnknown".to_string(), "1".to_string()),
                ("IP".to_string(), "10.0.0.5".to_string())
            ]
        );
        assert!(parse_cni_args("").unwrap().is_empty());
        for bad in ["A", "A=", "=1", "A=1=2", "A=1;", ";A=1", "A=1;;B=2"] {
            let e = parse_cni_args(bad).unwrap_err();
            assert_eq!(e.code.0, 4, "{bad}");
            assert!(e.msg.contains("invalid CNI_ARGS pair"), "{bad}");
        }
    }

    #[test]
    fn capability_args_must_be_an_object() {
        assert_eq!(
            parse_capability_args(r#"{"mac":"c2:00:00:00:00:01"}"#).unwrap()["mac"],
            "c2:00:00:00:00:01"
        );
        assert!(parse_capability_args("").unwrap().is_empty());
        assert!(parse_capability_args("null").unwrap().is_empty());
        assert_eq!(parse_capability_args("[1]").unwrap_err().code.0, 4);
        assert_eq!(parse_capability_args("{").unwrap_err().code.0, 4);
    }

    fn env_of(vars: &[(&str, &str)], netns: Option<&str>) -> Result<Environment, CniError> {
        let m: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Environment::from_lookup(
            |k| m.get(k).cloned(),
            netns.map(OsStr::new),
            Some(Path::new("/cwd")),
        )
    }

    #[test]
    fn defaults() {
        let e = env_of(&[], Some("ns")).unwrap();
        assert_eq!(e.conf_dir, PathBuf::from(DEFAULT_CONF_DIR));
        assert_eq!(e.runtime.cache_dir, PathBuf::from(DEFAULT_CACHE_DIR));
        assert_eq!(e.runtime.ifname, "eth0");
        assert_eq!(e.runtime.netns, Some(PathBuf::from("/cwd/ns")));
        assert_eq!(e.runtime.container_id, container_id(Path::new("/cwd/ns")));
        assert!(e.runtime.path.is_empty());
        assert!(e.runtime.args.is_empty());
        // GC and STATUS may come without a netns
        let e = env_of(&[], None).unwrap();
        assert_eq!(
            (e.runtime.netns, e.runtime.container_id),
            (None, String::new())
        );
    }

    #[test]
    fn reads_every_variable() {
        let e = env_of(
            &[
                ("NETCONFPATH", "/n"),
                ("CNI_CACHE_DIR", "/c"),
                ("CNI_PATH", "/a::/b"),
                ("CNI_IFNAME", "net1"),
                ("CNI_ARGS", "K=V"),
                ("CAP_ARGS", r#"{"portMappings":[]}"#),
            ],
            Some("/run/netns/x"),
        )
        .unwrap();
        assert_eq!(e.conf_dir, PathBuf::from("/n"));
        assert_eq!(e.runtime.cache_dir, PathBuf::from("/c"));
        assert_eq!(e.runtime.path, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(e.runtime.ifname, "net1");
        assert_eq!(e.runtime.args_raw, "K=V");
        assert_eq!(e.runtime.capability_args["portMappings"], json!([]));
        assert!(env_of(&[("CNI_ARGS", "K")], Some("x")).is_err());
        assert!(env_of(&[("CAP_ARGS", "1")], Some("x")).is_err());
    }

    #[test]
    fn relative_netns_without_cwd_is_an_error() {
        let none = |_: &str| None;
        assert!(Environment::from_lookup(none, Some(OsStr::new("ns")), None).is_err());
        let e = Environment::from_lookup(none, Some(OsStr::new("/ns")), None).unwrap();
        assert_eq!(e.runtime.netns, Some(PathBuf::from("/ns")));
    }
}
