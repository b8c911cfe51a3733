//! The release tarball (`make dist`) installs and works: unpacked the way the
//! README installs it (`tar -C DIR -xzf`), it holds exactly the expected
//! files with the right modes and checksums, its binaries need exactly the
//! libraries its own README lists, and the plugins in it answer VERSION and
//! run a loopback ADD and DEL in a throwaway namespace.
//!
//! Runs only when `CNI_RS_DIST` names the tarball; `make test` builds it and
//! sets that. Without it each test says why it is skipped and passes.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cni_tests::{Call, Netns, PLUGINS, TempDir, must};
use serde_json::{Value, json};

/// Every entry of the tarball, in its order (sorted by name).
const ENTRIES: [&str; 7] = [
    "./LICENSE",
    "./README.md",
    "./SHA256SUMS",
    "./bridge",
    "./host-local",
    "./loopback",
    "./portmap",
];

fn tarball() -> Option<PathBuf> {
    match std::env::var_os("CNI_RS_DIST") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "CNI_RS_DIST={} is not a file", p.display());
            Some(p)
        }
        None => {
            eprintln!(
                "skipped: CNI_RS_DIST is not set; `make test` sets it to the tarball `make dist` built"
            );
            None
        }
    }
}

/// The tarball unpacked into a fresh directory, as the README installs it.
fn unpacked(tgz: &Path) -> TempDir {
    let dir = TempDir::new("dist");
    must("tar", &["-C", s(dir.path()), "-xzf", s(tgz)]);
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Run a command in `dir`, which must succeed; its stdout.
fn must_in(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {} failed: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn name_layout_and_modes() {
    let Some(tgz) = tarball() else { return };

    // cni-rs-linux-<Go arch>-v<workspace version>.tgz, like the reference's.
    let machine = must("uname", &["-m"]);
    let arch = match machine.trim() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let version = env!("CARGO_PKG_VERSION"); // the workspace's, inherited
    assert_eq!(
        tgz.file_name().unwrap().to_str().unwrap(),
        format!("cni-rs-linux-{arch}-v{version}.tgz")
    );

    // Exactly these entries: no "./" entry that would reset the mode and
    // owner of the directory it is unpacked into, nothing nested.
    let listing = must("tar", &["--numeric-owner", "-tvzf", s(&tgz)]);
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(names, ENTRIES, "{listing}");
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[1], "0/0", "owner and group 0: {line}");
        assert!(f[0].starts_with('-'), "a regular file: {line}");
    }

    let dir = unpacked(&tgz);
    let mut found: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| format!("./{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    found.sort();
    assert_eq!(found, ENTRIES);
    for entry in ENTRIES {
        let name = &entry[2..];
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        let want = if PLUGINS.contains(&name) {
            0o755
        } else {
            0o644
        };
        assert_eq!(mode, want, "{name}: {mode:o}");
    }

    let license = std::fs::read_to_string(dir.path().join("LICENSE")).unwrap();
    assert!(
        license.contains("Apache License") && license.contains("Version 2.0, January 2004"),
        "LICENSE is not the Apache 2.0 text"
    );
}

#[test]
fn checksums_verify() {
    let Some(tgz) = tarball() else { return };
    let dir = unpacked(&tgz);

    // SHA256SUMS inside lists exactly the plugins, and they match.
    let sums = std::fs::read_to_string(dir.path().join("SHA256SUMS")).unwrap();
    let listed: BTreeSet<&str> = sums
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(listed, BTreeSet::from(PLUGINS), "{sums}");
    must_in(dir.path(), "sha256sum", &["--strict", "-c", "SHA256SUMS"]);

    // The .sha256 and .sha512 published beside the tarball.
    let name = tgz.file_name().unwrap().to_str().unwrap();
    let beside = tgz.parent().unwrap();
    for (tool, ext) in [("sha256sum", "sha256"), ("sha512sum", "sha512")] {
        let file = format!("{name}.{ext}");
        let text = std::fs::read_to_string(beside.join(&file))
            .unwrap_or_else(|e| panic!("{file} beside the tarball: {e}"));
        assert_eq!(text.lines().count(), 1, "{file}: {text}");
        assert!(text.trim_end().ends_with(&format!("  {name}")), "{text}");
        must_in(beside, tool, &["--strict", "-c", &file]);
    }
}

/// The sonames in backquotes in one cell of a markdown table row.
fn sonames(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// The README's library table (in its "## Install" section): for `binary`,
/// the libraries it lists as NEEDED.
fn documented_needed(readme: &str, binary: &str) -> BTreeSet<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Install\n"))
        .expect("README.md has an Install section");
    let tick = format!("`{binary}`");
    let row = section
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.split('|').collect::<Vec<_>>())
        .find(|cells| cells.len() > 4 && cells[1].contains(&tick))
        .unwrap_or_else(|| panic!("README.md's library table has no row for {tick}"));
    sonames(row[2])
}

#[test]
fn runtime_libraries_are_the_documented_ones() {
    let Some(tgz) = tarball() else { return };
    let dir = unpacked(&tgz);
    // The README shipped in the tarball is the one that must be right.
    let readme = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
    for plugin in PLUGINS {
        let bin = dir.path().join(plugin);
        let dynamic = must("readelf", &["-d", s(&bin)]);
        let needed: BTreeSet<String> = dynamic
            .lines()
            .filter(|l| l.contains("(NEEDED)"))
            .map(|l| {
                let start = l.find('[').unwrap() + 1;
                l[start..l.rfind(']').unwrap()].to_owned()
            })
            .collect();
        assert_eq!(
            needed,
            documented_needed(&readme, plugin),
            "{plugin}: NEEDED against README.md"
        );
        // Every one of them (and what they need) is found on this machine.
        let ldd = must("ldd", &[s(&bin)]);
        assert!(!ldd.contains("not found"), "{plugin}: {ldd}");
        // Built by the release profile, which strips.
        let sections = must("readelf", &["-S", s(&bin)]);
        assert!(!sections.contains(".symtab"), "{plugin} is not stripped");
    }
}

#[test]
fn every_plugin_answers_version() {
    let Some(tgz) = tarball() else { return };
    let dir = unpacked(&tgz);
    let want = [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ];
    for plugin in PLUGINS {
        let v = Call::new(plugin, "VERSION")
            .binary(dir.path().join(plugin))
            .var("CNI_PATH", Some(s(dir.path())))
            .stdin(r#"{"cniVersion":"1.1.0"}"#)
            .run()
            .success();
        assert_eq!(v["cniVersion"], "1.1.0", "{plugin}: {v}");
        let supported: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap_or_else(|| panic!("{plugin}: {v}"))
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        for version in want {
            assert!(
                supported.contains(&version),
                "{plugin} lacks {version}: {v}"
            );
        }
    }
}

#[test]
fn loopback_from_the_tarball_adds_and_deletes() {
    let Some(tgz) = tarball() else { return };
    let dir = unpacked(&tgz);
    let ns = Netns::new("dist");
    let conf = json!({"cniVersion": "1.1.0", "name": "lo-net", "type": "loopback"});
    let call = |verb: &str| {
        Call::new("loopback", verb)
            .binary(dir.path().join("loopback"))
            .var("CNI_PATH", Some(s(dir.path())))
            .netns(&ns)
            .conf(&conf)
    };

    let result: Value = call("ADD").run().success();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][0]["name"], "lo", "{result}");
    assert!(ns.link_flags("lo").contains(&"UP".to_owned()));
    assert_eq!(ns.addrs("lo"), ["127.0.0.1/8", "::1/128"]);

    call("DEL").run().silent_success();
    assert!(!ns.link_flags("lo").contains(&"UP".to_owned()));
}
