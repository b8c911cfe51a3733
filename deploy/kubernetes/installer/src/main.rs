//! `cni-install`: the entry point of the cni-rs install image. It copies the
//! plugins the image carries into the node's CNI binary directory, and
//! optionally a network config into its config directory, then (with
//! `--wait`) sleeps, as a DaemonSet's container must keep running.
//!
//! Each file is written beside its final name, synced, and renamed over
//! it: a runtime that runs a plugin (or reads the config directory)
//! meanwhile sees the old file or the new one, never half of one, and a
//! plugin being executed keeps its old inode. Temporary names start with a
//! dot, which runtimes skip when they list configs.
//!
//! ```text
//! cni-install [--conflist FILE] [--wait]
//!   CNI_RS_SOURCE   where the image keeps the plugins   (/opt/cni-rs/bin)
//!   CNI_BIN_DIR     the node's plugin directory         (/host/opt/cni/bin)
//!   CNI_CONF_DIR    the node's config directory         (/host/etc/cni/net.d)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const PLUGINS: [&str; 5] = ["bridge", "host-local", "loopback", "portmap", "ptp"];

fn dir_from(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Write `bytes` to `dir/.name.cni-rs-new` with `mode`, sync it, rename it
/// over `dir/name`, then sync the directory.
fn install(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.cni-rs-new"));
    let _ = fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dir.join(name)).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    File::open(dir)?.sync_all()
}

fn run(args: &[String]) -> Result<bool, String> {
    let mut conflist = None;
    let mut wait = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--wait" => wait = true,
            "--conflist" => {
                conflist = Some(PathBuf::from(it.next().ok_or("--conflist needs a file")?))
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let source = dir_from("CNI_RS_SOURCE", "/opt/cni-rs/bin");
    let bin = dir_from("CNI_BIN_DIR", "/host/opt/cni/bin");
    let conf = dir_from("CNI_CONF_DIR", "/host/etc/cni/net.d");
    fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    for p in PLUGINS {
        let from = source.join(p);
        let bytes = fs::read(&from).map_err(|e| format!("{}: {e}", from.display()))?;
        install(&bin, p, &bytes, 0o755).map_err(|e| format!("{}/{p}: {e}", bin.display()))?;
        eprintln!("installed {}", bin.join(p).display());
    }
    if let Some(c) = conflist {
        let bytes = fs::read(&c).map_err(|e| format!("{}: {e}", c.display()))?;
        looks_like_config(&bytes).map_err(|e| format!("{}: {e}", c.display()))?;
        let name = c
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: no file name", c.display()))?
            .to_owned();
        fs::create_dir_all(&conf).map_err(|e| format!("{}: {e}", conf.display()))?;
        install(&conf, &name, &bytes, 0o644)
            .map_err(|e| format!("{}/{name}: {e}", conf.display()))?;
        eprintln!("installed {}", conf.join(&name).display());
    }
    Ok(wait)
}

/// A config must at least look like one (a JSON object) before a runtime
/// finds it: a broken file in /etc/cni/net.d stops pod networking.
fn looks_like_config(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let t = text.trim();
    if t.starts_with('{') && t.ends_with('}') {
        Ok(())
    } else {
        Err("not a JSON object".to_owned())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => {
            eprintln!("cni-rs plugins installed; waiting");
            // A DaemonSet's container keeps running; SIGTERM ends it.
            loop {
                std::thread::park();
            }
        }
        Ok(false) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cni-install: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_replaces_by_rename() {
        let d = std::env::temp_dir().join(format!("cni-install-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("ptp"), b"old").unwrap();
        let before = std::os::unix::fs::MetadataExt::ino(&fs::metadata(d.join("ptp")).unwrap());
        install(&d, "ptp", b"new", 0o755).unwrap();
        let meta = fs::metadata(d.join("ptp")).unwrap();
        assert_ne!(std::os::unix::fs::MetadataExt::ino(&meta), before);
        assert_eq!(fs::read(d.join("ptp")).unwrap(), b"new");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o755
        );
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ptp"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn configs_must_be_objects() {
        assert!(looks_like_config(b" {\"a\": 1}\n").is_ok());
        assert!(looks_like_config(b"[1]").is_err());
        assert!(looks_like_config(b"\xff").is_err());
    }
}
