//! Running a plugin binary: how a plugin delegates to its IPAM plugin, and how
//! a runtime (`cni-run`) runs a chain. Same binary search, environment and
//! decoding of the reply in both cases.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::env::{Command, Env};
use crate::error::{CniError, Code};
use crate::plugin::{Plugin, Request};
use crate::result::CniResult;
use crate::version::Version;

/// The CNI environment of one plugin invocation.
#[derive(Debug, Clone, Default)]
pub struct InvokeEnv {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` as the runtime wrote it.
    pub args: String,
    pub path: Vec<PathBuf>,
}

impl InvokeEnv {
    /// The environment a plugin was given, to hand on to its delegate.
    pub fn from_env(env: &Env) -> Self {
        InvokeEnv {
            container_id: env.container_id.clone(),
            netns: env.netns.clone(),
            ifname: env.ifname.clone(),
            args: env
                .args
                .pairs()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
            path: env.path.clone(),
        }
    }
}

/// Find `name` in the `CNI_PATH` directories.
pub fn find_plugin(name: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CniError::invalid_config(format!(
            "invalid plugin type {name:?}"
        )));
    }
    if path.is_empty() {
        return Err(CniError::invalid_env(format!(
            "CNI_PATH is not set, so plugin {name:?} cannot be found"
        )));
    }
    path.iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::invalid_config(format!("failed to find plugin {name:?}")).with_details(
                format!(
                    "searched {}",
                    path.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

/// Run `binary` with `command`, the given environment and `stdin`. Inherited
/// `CNI_*` variables are replaced so that nothing leaks from our own call.
/// Returns stdout on success, or the plugin's CNI error.
pub fn exec(
    binary: &Path,
    command: Command,
    env: &InvokeEnv,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    exec_with(binary, command, env, stdin, &[])
}

fn exec_with(
    binary: &Path,
    command: Command,
    env: &InvokeEnv,
    stdin: &[u8],
    extra: &[(&str, String)],
) -> Result<Vec<u8>, CniError> {
    let mut p = Process::new(binary);
    p.envs(extra.iter().map(|(k, v)| (k, v)));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CNI_") {
            p.env_remove(k);
        }
    }
    p.env("CNI_COMMAND", command.as_str());
    if command.is_per_attachment() {
        p.env("CNI_CONTAINERID", &env.container_id)
            .env("CNI_IFNAME", &env.ifname)
            .env("CNI_NETNS", env.netns.as_deref().unwrap_or(Path::new("")))
            .env("CNI_ARGS", &env.args);
    }
    if let Ok(joined) = std::env::join_paths(&env.path) {
        p.env("CNI_PATH", joined);
    }
    let name = binary.display();
    let mut child = p
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(format!("cannot run plugin {name}: {e}")))?;
    // Feed stdin while reading stdout, so a plugin that writes before it has
    // read everything cannot deadlock us. A plugin may also exit without
    // reading stdin; a broken pipe then is not our error.
    let mut pipe = child.stdin.take().expect("piped");
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            let _ = pipe.write_all(stdin);
        });
        child.wait_with_output()
    })
    .map_err(|e| CniError::io(format!("cannot wait for plugin {name}: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        // Keep the delegate's diagnostics where the runtime collects ours.
        eprint!("{stderr}");
    }
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(
        serde_json::from_slice::<CniError>(&out.stdout).unwrap_or_else(|_| {
            CniError::new(
                Code::INTERNAL,
                format!("plugin {name} failed ({})", out.status),
            )
            .with_details(format!(
                "stdout: {}; stderr: {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                stderr.trim()
            ))
        }),
    )
}

/// Decode an ADD reply, in whatever version the plugin wrote it.
pub fn decode_result(stdout: &[u8], expected: Version) -> Result<CniResult, CniError> {
    let v: Value = serde_json::from_slice(stdout)
        .map_err(|e| CniError::new(Code::DECODE, format!("cannot decode plugin result: {e}")))?;
    CniResult::from_value(&v, expected)
}

/// The binary [`delegate_request`] would run for `ipam_type`, or why it must not:
/// missing, this very plugin (its IPAM would be itself, without end), or
/// too deep a chain of delegations. Plugins ask this before they change
/// anything.
pub fn delegate_target(ipam_type: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    let binary = find_plugin(ipam_type, path)?;
    let refuse = |why: String| {
        Err(CniError::invalid_config(format!(
            "ipam type {ipam_type:?} {why}"
        )))
    };
    if is_this_program(&binary) {
        return refuse("is this plugin itself".into());
    }
    let depth = delegation_depth();
    if depth >= MAX_DELEGATION_DEPTH {
        return refuse(format!(
            "would be delegated to {} levels deep: plugins name each other as IPAM",
            depth + 1
        ));
    }
    Ok(binary)
}

/// The stamp `scripts/stamp.sh` puts after a release binary's last byte:
/// the build's id and the plugin's name. `None` for an unstamped binary.
pub fn build_stamp(path: &Path) -> Option<(String, String)> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut buf = [0u8; 64];
    f.read_exact_at(&mut buf, len.checked_sub(64)?).ok()?;
    let (magic, rest) = buf.split_at(12);
    if magic != b"CNIRS-BUILD1" {
        return None;
    }
    let (id, name) = rest.split_at(32);
    let id = std::str::from_utf8(id).ok()?;
    let name = std::str::from_utf8(name).ok()?.trim_end_matches('\0');
    Some((id.to_owned(), name.to_owned()))
}

/// This process's build id, if its binary is stamped (read once).
fn own_build() -> Option<&'static str> {
    static OWN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| build_stamp(Path::new("/proc/self/exe")).map(|(id, _)| id))
        .as_deref()
}

/// Delegate `command` for `req` to the IPAM plugin `ipam_type` with the
/// config we were given, as the reference plugins do; ADD returns the IPAM
/// result. When the binary found on `CNI_PATH` is our own build of one of
/// the `local` plugins (same build stamp, same name), that plugin runs in
/// this process instead: the same code on the same request, one process
/// start less. Any other binary is exec'd, as the spec says.
pub fn delegate_request(
    ipam_type: &str,
    command: Command,
    req: &Request,
    local: &[(&str, &dyn Plugin)],
) -> Result<Option<CniResult>, CniError> {
    let binary = delegate_target(ipam_type, &req.env.path)?;
    let inproc = own_build().and_then(|own| {
        let (id, name) = build_stamp(&binary)?;
        (id == own)
            .then(|| local.iter().find(|(n, _)| *n == name))
            .flatten()
    });
    if let Some((_, plugin)) = inproc {
        return match command {
            Command::Add => plugin.add(req).map(Some),
            Command::Del => plugin.del(req).map(|_| None),
            Command::Check => plugin.check(req).map(|_| None),
            Command::Gc => plugin.gc(req).map(|_| None),
            Command::Status => plugin.status(req).map(|_| None),
            Command::Version => Ok(None),
        };
    }
    let extra = [(DELEGATION_DEPTH, (delegation_depth() + 1).to_string())];
    let out = exec_with(
        &binary,
        command,
        &InvokeEnv::from_env(&req.env),
        &req.stdin,
        &extra,
    )?;
    match command {
        Command::Add => decode_result(&out, req.version).map(Some),
        _ => Ok(None),
    }
}

/// How many delegations deep this process runs, passed down to delegates so
/// that plugins naming each other as IPAM cannot recurse without bound (one
/// process per level until fork fails).
const DELEGATION_DEPTH: &str = "CNIRS_DELEGATION_DEPTH";
const MAX_DELEGATION_DEPTH: u32 = 4;

fn delegation_depth() -> u32 {
    std::env::var(DELEGATION_DEPTH)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// Is `binary` the file this process runs (through any link or copy path)?
fn is_this_program(binary: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let me = std::env::current_exe().ok();
    matches!((id(binary), me.as_deref().and_then(id)), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cni-types-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn finds_plugins_on_the_path() {
        let d = tempdir("find");
        script(&d, "ipam", "true");
        assert_eq!(
            find_plugin("ipam", &[PathBuf::from("/nonexistent"), d.clone()]).unwrap(),
            d.join("ipam")
        );
        assert_eq!(
            find_plugin("nope", std::slice::from_ref(&d))
                .unwrap_err()
                .code,
            Code::INVALID_CONFIG
        );
        assert_eq!(
            find_plugin("../x", std::slice::from_ref(&d))
                .unwrap_err()
                .code,
            Code::INVALID_CONFIG
        );
        assert_eq!(
            find_plugin("ipam", &[]).unwrap_err().code,
            Code::INVALID_ENV
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn passes_env_and_stdin_and_decodes_replies() {
        let d = tempdir("exec");
        let ok = script(
            &d,
            "ok",
            r#"read conf; printf '{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.9.0.%s/24"}]}' "$CNI_IFNAME""#,
        );
        let env = InvokeEnv {
            container_id: "c".into(),
            ifname: "7".into(),
            ..Default::default()
        };
        let out = exec(&ok, Command::Add, &env, b"{}\n").unwrap();
        let r = decode_result(&out, Version::V1_0_0).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.7/24");

        let err = script(
            &d,
            "err",
            r#"echo '{"code":11,"msg":"busy","details":"x"}'; exit 1"#,
        );
        let e = exec(&err, Command::Del, &env, b"{}").unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (Code::TRY_AGAIN_LATER, "busy"));

        let crash = script(&d, "crash", "echo garbage; exit 3");
        assert_eq!(
            exec(&crash, Command::Del, &env, b"{}").unwrap_err().code,
            Code::INTERNAL
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
