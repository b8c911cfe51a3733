//! The entry point every plugin binary calls: read the environment and stdin,
//! check them, dispatch by `CNI_COMMAND`, and print the result or the error.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{self, NetConf};
use crate::env::{Command, Env};
use crate::error::{CniError, Code};
use crate::result::CniResult;
use crate::validate;
use crate::version::{Version, VersionInfo};

/// What a plugin implements. Each verb gets a checked [`Request`].
pub trait Plugin {
    /// One line shown on stderr when the binary is run without `CNI_COMMAND`.
    fn about(&self) -> &str;

    fn supported_versions(&self) -> &[Version] {
        &Version::ALL
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    fn del(&self, req: &Request) -> Result<(), CniError>;
    fn check(&self, req: &Request) -> Result<(), CniError>;
    fn gc(&self, req: &Request) -> Result<(), CniError>;
    fn status(&self, req: &Request) -> Result<(), CniError>;
}

/// A checked invocation: environment, parsed config and its version.
#[derive(Debug, Clone)]
pub struct Request {
    pub env: Env,
    pub conf: NetConf,
    pub version: Version,
    /// The config exactly as received, for delegation and plugin-specific parsing.
    pub stdin: Vec<u8>,
    raw: Value,
}

impl Request {
    /// Decode a config (6 if it is not a JSON object), read the fields every
    /// config has (7 if they are malformed or the name is invalid) and its
    /// version (1 if unknown). Plugin-independent; the entry point adds the
    /// plugin's own checks.
    pub fn parse(env: Env, stdin: Vec<u8>) -> Result<Request, CniError> {
        let raw = decode(&stdin)?;
        Request::from_value(env, stdin, raw)
    }

    fn from_value(env: Env, stdin: Vec<u8>, mut raw: Value) -> Result<Request, CniError> {
        config::go_case_runtime_config(&mut raw);
        let conf = NetConf::deserialize(&raw)
            .map_err(|e| CniError::invalid_config(format!("invalid network config: {e}")))?;
        validate::network_name(&conf.name)?;
        let version = conf.version()?;
        Ok(Request {
            env,
            conf,
            version,
            stdin,
            raw,
        })
    }

    /// Parse the config into the plugin's own type. The document is known to be
    /// valid JSON here, so a mismatch is an invalid config (code 7).
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, CniError> {
        T::deserialize(&self.raw).map_err(|e| {
            CniError::invalid_config(format!("invalid {} config: {e}", self.conf.plugin_type))
        })
    }

    /// `CNI_NETNS`, which ADD and CHECK always have.
    pub fn netns(&self) -> Result<&Path, CniError> {
        self.env
            .netns
            .as_deref()
            .ok_or_else(|| CniError::invalid_env("CNI_NETNS is not set"))
    }

    /// GC: the attachments to keep. Runtimes older than 1.1.0 final send
    /// `cni.dev/attachments`; both are accepted.
    pub fn gc_attachments(&self) -> Result<Vec<Attachment>, CniError> {
        let v = self
            .conf
            .other
            .get("cni.dev/valid-attachments")
            .or_else(|| self.conf.other.get("cni.dev/attachments"));
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => Vec::<Attachment>::deserialize(v).map_err(|e| {
                CniError::invalid_config(format!("invalid cni.dev/valid-attachments: {e}"))
            }),
        }
    }
}

fn decode(stdin: &[u8]) -> Result<Value, CniError> {
    if values_at_most(stdin) > MAX_CONFIG_VALUES {
        return Err(CniError::new(
            Code::DECODE,
            format!("network config holds more than {MAX_CONFIG_VALUES} JSON values"),
        ));
    }
    let raw: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(Code::DECODE, format!("cannot decode network config: {e}")))?;
    if !raw.is_object() {
        return Err(CniError::new(
            Code::DECODE,
            "network config is not a JSON object",
        ));
    }
    Ok(raw)
}

/// One container attachment, as GC lists them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// What one invocation ends with.
enum Outcome {
    About,
    Output(Value),
    Done,
    /// The error and the version to tag it with.
    Failed(CniError, String),
}

/// Run the plugin and exit. Never returns.
pub fn run(plugin: &dyn Plugin) -> ! {
    let (value, code) = match respond(plugin, Env::from_process(), read_stdin) {
        Outcome::About => {
            let versions = plugin.supported_versions().iter().map(|v| v.as_str());
            eprintln!("{}", plugin.about());
            eprintln!(
                "CNI protocol versions supported: {}",
                versions.collect::<Vec<_>>().join(", ")
            );
            std::process::exit(0)
        }
        Outcome::Done => std::process::exit(0),
        Outcome::Output(v) => (v, 0),
        Outcome::Failed(e, version) => (e.to_json(&version), 1),
    };
    // One write: stdout is line-buffered, and a pretty result written
    // through it directly costs a system call per line.
    let mut text = serde_json::to_vec_pretty(&value).expect("a JSON value serialises");
    text.push(b'\n');
    let mut out = std::io::stdout().lock();
    let written = out.write_all(&text).and_then(|_| out.flush());
    if let Err(e) = written {
        eprintln!("cannot write to stdout: {e}");
        std::process::exit(1);
    }
    std::process::exit(code)
}

/// Everything but the printing: a panic anywhere in the plugin becomes a
/// CNI error (the panic message itself goes to stderr through the default hook).
fn respond(
    plugin: &dyn Plugin,
    env: Result<Env, CniError>,
    stdin: impl FnOnce() -> Result<Vec<u8>, CniError>,
) -> Outcome {
    let mut version_for_errors = Version::LATEST.to_string();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        dispatch(plugin, env, stdin, &mut version_for_errors)
    }));
    match outcome {
        Ok(Outcome::Failed(e, _)) => Outcome::Failed(e, version_for_errors),
        Ok(o) => o,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Outcome::Failed(
                CniError::new(Code::INTERNAL, "plugin panicked").with_details(what),
                version_for_errors,
            )
        }
    }
}

/// The largest config read from stdin. Real ones are kilobytes; the largest
/// a runtime sends are GC's attachment lists (~100 bytes per container).
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// The most JSON values a config may hold. Decoding costs memory per value
/// (tens of bytes each, more than the two bytes `1,` takes on stdin), so a
/// byte cap alone would still let a config of small numbers cost gigabytes.
pub const MAX_CONFIG_VALUES: usize = 200_000;

fn read_stdin() -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::io(format!("cannot read stdin: {e}")))?;
    if buf.len() as u64 > MAX_CONFIG_BYTES {
        return Err(CniError::new(
            Code::DECODE,
            format!(
                "network config is larger than {} MiB",
                MAX_CONFIG_BYTES >> 20
            ),
        ));
    }
    Ok(buf)
}

/// An upper bound of the number of values in a JSON text, counted without
/// decoding it: every value but the first follows a `,` or opens a container
/// or follows a `:`.
fn values_at_most(text: &[u8]) -> usize {
    let (mut n, mut in_string, mut escaped) = (1usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b'[' | b'{' | b':' => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// The checks, in the order the reference skel applies them: environment (4),
/// decoding (6), network name (7), version (1), then the verb.
fn dispatch(
    plugin: &dyn Plugin,
    env: Result<Env, CniError>,
    stdin: impl FnOnce() -> Result<Vec<u8>, CniError>,
    version_for_errors: &mut String,
) -> Outcome {
    let env = match env {
        Ok(env) => env,
        Err(_) if std::env::var_os("CNI_COMMAND").is_none_or(|c| c.is_empty()) => {
            return Outcome::About;
        }
        Err(e) => return Outcome::Failed(e, String::new()),
    };
    if env.command == Command::Version {
        // The spec's VERSION stdin only names a version; any version is answered.
        let info = VersionInfo::new(plugin.supported_versions());
        return Outcome::Output(serde_json::to_value(info).expect("version info serialises"));
    }
    match prepare(plugin, env, stdin, version_for_errors).and_then(|req| call(plugin, &req)) {
        Ok(Some(v)) => Outcome::Output(v),
        Ok(None) => Outcome::Done,
        Err(e) => Outcome::Failed(e, String::new()),
    }
}

fn prepare(
    plugin: &dyn Plugin,
    env: Env,
    stdin: impl FnOnce() -> Result<Vec<u8>, CniError>,
    version_for_errors: &mut String,
) -> Result<Request, CniError> {
    let stdin = stdin()?;
    let raw = decode(&stdin)?;
    // Answer errors in the config's version when it is one we know.
    if let Some(Ok(v)) = raw
        .get("cniVersion")
        .and_then(Value::as_str)
        .map(str::parse::<Version>)
    {
        *version_for_errors = v.to_string();
    }
    let req = Request::from_value(env, stdin, raw)?;
    let version = req.version;
    if !plugin.supported_versions().contains(&version) {
        return Err(
            CniError::new(Code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(
                format!(
                    "config is {version}, plugin supports {:?}",
                    plugin
                        .supported_versions()
                        .iter()
                        .map(|v| v.as_str())
                        .collect::<Vec<_>>()
                ),
            ),
        );
    }
    let needs = match req.env.command {
        Command::Check => Some(Version::V0_4_0),
        Command::Gc | Command::Status => Some(Version::V1_1_0),
        _ => None,
    };
    if let Some(min) = needs
        && version < min
    {
        return Err(CniError::new(
            Code::INCOMPATIBLE_VERSION,
            format!(
                "config version {version} does not allow {}",
                req.env.command.as_str()
            ),
        )
        .with_details(format!("{} needs {min} or later", req.env.command.as_str())));
    }
    if let Some(ns) = &req.env.netns
        && is_own_netns(ns)
    {
        return Err(
            CniError::invalid_env("CNI_NETNS is the plugin's own network namespace")
                .with_details(ns.display().to_string()),
        );
    }
    Ok(req)
}

/// Refuse to treat the namespace the plugin runs in as the container's: that
/// would configure the host as if it were a container.
fn is_own_netns(path: &Path) -> bool {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    matches!((id(path), id(Path::new("/proc/self/ns/net"))), (Some(a), Some(b)) if a == b)
}

fn call(plugin: &dyn Plugin, req: &Request) -> Result<Option<Value>, CniError> {
    match req.env.command {
        Command::Add => plugin.add(req)?.to_version(req.version).map(Some),
        Command::Del => plugin.del(req).map(|_| None),
        Command::Check => plugin.check(req).map(|_| None),
        Command::Gc => plugin.gc(req).map(|_| None),
        Command::Status => plugin.status(req).map(|_| None),
        Command::Version => unreachable!("VERSION is answered before the config is read"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// Records which verb was called; ADD returns a fixed one-address result.
    #[derive(Default)]
    struct Probe {
        called: RefCell<Vec<Command>>,
    }

    impl Plugin for Probe {
        fn about(&self) -> &str {
            "probe"
        }
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            self.called.borrow_mut().push(req.env.command);
            CniResult::from_value(
                &json!({"ips": [{"address": "10.0.0.2/24"}]}),
                Version::V1_1_0,
            )
        }
        fn del(&self, req: &Request) -> Result<(), CniError> {
            self.called.borrow_mut().push(req.env.command);
            Ok(())
        }
        fn check(&self, req: &Request) -> Result<(), CniError> {
            self.called.borrow_mut().push(req.env.command);
            Ok(())
        }
        fn gc(&self, req: &Request) -> Result<(), CniError> {
            self.called.borrow_mut().push(req.env.command);
            assert_eq!(req.gc_attachments()?.len(), 1);
            Ok(())
        }
        fn status(&self, req: &Request) -> Result<(), CniError> {
            self.called.borrow_mut().push(req.env.command);
            Ok(())
        }
    }

    struct Panics;

    impl Plugin for Panics {
        fn about(&self) -> &str {
            "panics"
        }
        fn add(&self, _: &Request) -> Result<CniResult, CniError> {
            // An out-of-bounds index, hidden from the compiler's own check.
            let byte = std::hint::black_box(Vec::<u8>::new())[3];
            Err(CniError::new(Code(100 + u32::from(byte)), "unreachable"))
        }
        fn del(&self, _: &Request) -> Result<(), CniError> {
            panic!("boom in DEL")
        }
        fn check(&self, _: &Request) -> Result<(), CniError> {
            Ok(())
        }
        fn gc(&self, _: &Request) -> Result<(), CniError> {
            Ok(())
        }
        fn status(&self, _: &Request) -> Result<(), CniError> {
            Ok(())
        }
    }

    #[test]
    fn a_panic_becomes_a_cni_error_in_the_config_version() {
        for (cmd, needle) in [("ADD", "index out of bounds"), ("DEL", "boom in DEL")] {
            let vars = HashMap::from([
                ("CNI_COMMAND", cmd.to_string()),
                ("CNI_CONTAINERID", "c1".to_string()),
                ("CNI_IFNAME", "eth0".to_string()),
                ("CNI_NETNS", "/nonexistent".to_string()),
            ]);
            let env = Env::from_lookup(|k| vars.get(k).cloned());
            let conf = json!({"cniVersion": "0.4.0", "name": "n", "type": "panics"});
            match respond(&Panics, env, || Ok(conf.to_string().into_bytes())) {
                Outcome::Failed(e, v) => {
                    assert_eq!(e.code, Code::INTERNAL);
                    assert!(e.details.contains(needle), "{e}");
                    assert_eq!(v, "0.4.0");
                }
                _ => panic!("a panic was not caught"),
            }
        }
    }

    fn run_with_stdin(cmd: &str, stdin: Vec<u8>) -> (Outcome, String) {
        let vars: HashMap<&str, String> = HashMap::from([
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "c1".into()),
            ("CNI_NETNS", "/nonexistent/netns".into()),
            ("CNI_IFNAME", "eth0".into()),
        ]);
        let env = Env::from_lookup(|k| vars.get(k).cloned());
        let mut v = Version::LATEST.to_string();
        let out = dispatch(&Probe::default(), env, || Ok(stdin), &mut v);
        (out, v)
    }

    fn run_with(cmd: &str, conf: Value) -> (Outcome, String) {
        run_with_stdin(cmd, conf.to_string().into_bytes())
    }

    fn code(o: Outcome) -> u32 {
        match o {
            Outcome::Failed(e, _) => e.code.0,
            _ => 0,
        }
    }

    #[test]
    fn add_answers_in_the_config_version() {
        let (out, _) = run_with(
            "ADD",
            json!({"cniVersion": "0.3.1", "name": "n", "type": "probe"}),
        );
        match out {
            Outcome::Output(v) => {
                assert_eq!(v["cniVersion"], "0.3.1");
                assert_eq!(v["ips"][0]["version"], "4");
            }
            _ => panic!("no output"),
        }
    }

    #[test]
    fn version_gates() {
        let conf = |v: &str| json!({"cniVersion": v, "name": "n", "type": "probe"});
        assert_eq!(code(run_with("CHECK", conf("0.3.1")).0), 1);
        assert_eq!(code(run_with("CHECK", conf("0.4.0")).0), 0);
        assert_eq!(code(run_with("GC", conf("1.0.0")).0), 1);
        assert_eq!(code(run_with("STATUS", conf("1.0.0")).0), 1);
        assert_eq!(code(run_with("STATUS", conf("1.1.0")).0), 0);
        let mut gc = conf("1.1.0");
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
        assert_eq!(code(run_with("GC", gc).0), 0);
    }

    #[test]
    fn bad_config_codes() {
        assert_eq!(code(run_with("ADD", json!([1, 2])).0), 6);
        assert_eq!(
            code(run_with("ADD", json!({"cniVersion": "1.0.0", "type": "probe"})).0),
            7
        );
        assert_eq!(
            code(run_with("ADD", json!({"cniVersion": "1.0.0", "name": "a b"})).0),
            7
        );
        assert_eq!(
            code(run_with("ADD", json!({"cniVersion": "1.0.0", "name": 3})).0),
            7
        );
        let (out, v) = run_with("ADD", json!({"cniVersion": "0.9.0", "name": "n"}));
        assert_eq!(code(out), 1);
        assert_eq!(v, "1.1.0");
        // errors are tagged with the config's version when it is known
        let (_, v) = run_with("ADD", json!({"cniVersion": "0.4.0", "name": ""}));
        assert_eq!(v, "0.4.0");
    }

    #[test]
    fn value_counts_bound_what_decoding_costs() {
        assert_eq!(values_at_most(br#"{"a": [1, 2, {"b": "x,[{:"}]}"#), 8);
        assert_eq!(values_at_most(br#""a\",b""#), 1);
        let many = format!("[{}1]", "1,".repeat(MAX_CONFIG_VALUES));
        assert_eq!(code(run_with_stdin("ADD", many.into_bytes()).0), 6);
        let fine = json!({"cniVersion": "1.0.0", "name": "n", "type": "probe",
                          "list": vec![1; 1000]});
        assert_eq!(code(run_with("ADD", fine).0), 0);
    }

    #[test]
    fn own_netns_is_refused() {
        assert!(is_own_netns(Path::new("/proc/self/ns/net")));
        assert!(!is_own_netns(Path::new("/nonexistent")));
    }
}
