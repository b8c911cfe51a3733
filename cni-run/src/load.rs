//! Finding a network's configuration in `NETCONFPATH`, in libcni's order:
//! `.conflist` files first, then single-plugin `.conf`/`.json` files, each
//! group sorted by file name; the first whose `name` matches wins.

use std::path::{Path, PathBuf};

use cni_types::{CniError, Code, NetConfList};
use serde_json::Value;

/// A network configuration list and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedList {
    pub list: NetConfList,
    /// The list as libcni keeps it in the cache: the `.conflist` file's bytes,
    /// or the list a single `.conf` was wrapped in.
    pub bytes: Vec<u8>,
    pub source: PathBuf,
}

/// Reads one kind of config file into a list and the bytes the cache keeps.
type Parser = fn(&[u8]) -> Result<(NetConfList, Vec<u8>), CniError>;

/// Load the network `name` from `dir`. A file that cannot be read or parsed is
/// skipped with a warning (one broken file must not take every network down);
/// if it claims the wanted name and nothing valid does, its error is returned.
pub fn load(dir: &Path, name: &str) -> Result<LoadedList, CniError> {
    let mut claimed_by_broken: Option<CniError> = None;
    let groups: [(&[&str], Parser); 2] = [
        (&["conflist"], parse_conflist),
        (&["conf", "json"], parse_single),
    ];
    for (extensions, parse) in groups {
        for file in conf_files(dir, extensions)? {
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    warn(&file, &CniError::io(e.to_string()));
                    continue;
                }
            };
            match parse(&bytes) {
                Ok((list, _)) if list.name != name => {}
                Ok((list, bytes)) => {
                    return Ok(LoadedList {
                        list,
                        bytes,
                        source: file,
                    });
                }
                Err(e) => {
                    warn(&file, &e);
                    if claimed_by_broken.is_none() && claimed_name(&bytes).as_deref() == Some(name)
                    {
                        claimed_by_broken = Some(CniError {
                            msg: format!("network {name:?} in {}: {}", file.display(), e.msg),
                            ..e
                        });
                    }
                }
            }
        }
    }
    Err(claimed_by_broken.unwrap_or_else(|| {
        CniError::invalid_config(format!("no network named {name:?} in {}", dir.display()))
    }))
}

fn warn(file: &Path, e: &CniError) {
    eprintln!("cni-run: warning: skipping {}: {e}", file.display());
}

/// Files (or links to files) in `dir` with one of `extensions`, sorted. A
/// missing directory has no files, as in libcni.
fn conf_files(dir: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>, CniError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CniError::io(format!(
                "cannot read network config directory {}: {e}",
                dir.display()
            )));
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| extensions.contains(&x))
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A `.conflist`; the cache keeps the file's own bytes.
fn parse_conflist(bytes: &[u8]) -> Result<(NetConfList, Vec<u8>), CniError> {
    let list = NetConfList::parse(bytes)?;
    Ok((list, bytes.to_vec()))
}

/// A single-plugin `.conf`, wrapped in a list; the cache keeps that list, as
/// libcni's ConfListFromConf does.
fn parse_single(bytes: &[u8]) -> Result<(NetConfList, Vec<u8>), CniError> {
    let list = NetConfList::from_single(bytes)?;
    let wrapped = serde_json::to_vec(&list)
        .map_err(|e| CniError::new(Code::DECODE, format!("cannot encode config list: {e}")))?;
    Ok((list, wrapped))
}

/// The `name` a file means to define, read without any validation.
fn claimed_name(bytes: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(bytes).ok()?;
    doc.get("name")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("cni-run-load-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn file(&self, name: &str, body: &str) -> &Self {
            std::fs::write(self.0.join(name), body).unwrap();
            self
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn list(name: &str, tag: &str) -> String {
        json!({"cniVersion": "1.0.0", "name": name, "plugins": [{"type": tag}]}).to_string()
    }

    fn single(name: &str, tag: &str) -> String {
        json!({"cniVersion": "0.4.0", "name": name, "type": tag}).to_string()
    }

    fn first_type(l: &LoadedList) -> &str {
        l.list.plugins[0]["type"].as_str().unwrap()
    }

    #[test]
    fn conflists_win_over_confs_and_sort_order_decides() {
        let d = Dir::new("order");
        d.file("00-a.conf", &single("net", "conf"))
            .file("20-b.conflist", &list("net", "second"))
            .file("10-c.conflist", &list("net", "first"))
            .file("05-d.conflist", &list("other", "other"))
            .file("01-e.txt", &list("net", "txt"));
        let l = load(&d.0, "net").unwrap();
        assert_eq!(first_type(&l), "first");
        assert_eq!(l.source, d.0.join("10-c.conflist"));
        // the cache keeps the file exactly
        assert_eq!(l.bytes, list("net", "first").into_bytes());
        assert_eq!(first_type(&load(&d.0, "other").unwrap()), "other");
    }

    #[test]
    fn single_confs_are_wrapped() {
        let d = Dir::new("single");
        d.file("10-x.json", &single("js", "json"))
            .file("20-y.conf", &single("net", "conf"));
        let l = load(&d.0, "net").unwrap();
        assert_eq!(l.list.cni_version, "0.4.0");
        assert_eq!(first_type(&l), "conf");
        let cached: Value = serde_json::from_slice(&l.bytes).unwrap();
        assert_eq!(cached["plugins"][0]["type"], "conf");
        assert_eq!(cached["name"], "net");
        assert_eq!(first_type(&load(&d.0, "js").unwrap()), "json");
    }

    #[test]
    fn broken_files_are_skipped() {
        let d = Dir::new("broken");
        d.file("00-garbage.conflist", "{")
            .file(
                "01-noplugins.conflist",
                r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
            )
            .file("02-good.conflist", &list("net", "good"));
        assert_eq!(first_type(&load(&d.0, "net").unwrap()), "good");
        // a broken file that claims the name explains why it is not found
        let e = load(&d.0, "x").unwrap_err();
        assert_eq!(e.code, Code::INVALID_CONFIG);
        assert!(e.msg.contains("01-noplugins.conflist"), "{e}");
    }

    #[test]
    fn not_found() {
        let d = Dir::new("none");
        d.file("a.conflist", &list("net", "x"));
        let e = load(&d.0, "nope").unwrap_err();
        assert_eq!(e.code, Code::INVALID_CONFIG);
        assert!(e.msg.contains("no network named \"nope\""), "{e}");
        let missing = d.0.join("missing");
        assert!(
            load(&missing, "net")
                .unwrap_err()
                .msg
                .contains("no network named")
        );
    }

    #[test]
    fn lenient_fields_as_libcni() {
        let d = Dir::new("lenient");
        d.file(
            "a.conflist",
            &json!({
                "cniVersion": "1.1.0", "cniVersions": ["0.4.0"], "name": "net",
                "disableCheck": "TRUE", "disableGC": "false", "plugins": [{"type": "x"}]
            })
            .to_string(),
        )
        .file(
            "b.conflist",
            &json!({"cniVersion": "1.0.0", "name": "bad", "disableCheck": "yes", "plugins": [{"type": "x"}]})
                .to_string(),
        );
        let l = load(&d.0, "net").unwrap().list;
        assert!(l.disable_check);
        assert!(!l.disable_gc);
        assert_eq!(l.cni_version, "1.1.0");
        assert!(
            load(&d.0, "bad")
                .unwrap_err()
                .msg
                .contains("expected true or false")
        );
    }
}
