//! The result cache, in libcni's format and layout
//! (`<cache dir>/results/<network>-<container id>-<ifname>`, kind `cniCacheV1`),
//! so that libcni-based tools and this runner can read each other's entries.
//! DEL and CHECK take `prevResult` from it; GC takes the attachments to keep.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use cni_types::{Attachment, CniError, Code};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const KIND: &str = "cniCacheV1";

/// One cache file. Field names, order and omissions are libcni's `cachedInfo`.
/// Every field has a default because Go's decoder tolerates missing ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    #[serde(default)]
    pub kind: String,
    #[serde(rename = "containerId", default)]
    pub container_id: String,
    /// The network config list; Go encodes `[]byte` as base64.
    #[serde(default, with = "base64_bytes")]
    pub config: Vec<u8>,
    #[serde(rename = "ifName", default)]
    pub if_name: String,
    #[serde(rename = "networkName", default)]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    /// Go's `[][2]string`; a tuple serialises as a two-element array.
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<(String, String)>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    /// Go writes a nil slice as `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(s) => STANDARD.decode(s).map_err(D::Error::custom),
        }
    }
}

/// The `results` directory of a cache dir.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(cache_dir: &Path) -> Cache {
        Cache {
            dir: cache_dir.join("results"),
        }
    }

    /// Callers pass validated names, so the file name stays inside `dir`.
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{network}-{container_id}-{ifname}"))
    }

    /// Write the entry crash-safely: a reader sees the old file or the new
    /// one, never a torn one (temp file in the same dir, fsync, rename).
    pub fn write(&self, entry: &CacheEntry) -> Result<(), CniError> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let io = |what: &str, p: &Path, e: std::io::Error| {
            CniError::io(format!("cannot {what} {}: {e}", p.display()))
        };
        // Results name containers and may hold addresses: owner only, as libcni.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| io("create cache directory", &self.dir, e))?;
        let bytes = serde_json::to_vec(entry)
            .map_err(|e| CniError::io(format!("cannot encode cache entry: {e}")))?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        // A leading dot keeps temp files out of `attachments`.
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("write cache file", &path, e));
        }
        // Make the rename itself durable; a failure here loses nothing written.
        let _ = File::open(&self.dir).and_then(|d| d.sync_all());
        Ok(())
    }

    /// The cached result of an attachment, raw (in whatever version it was
    /// written), or `None` if there is no entry or it holds no result. An
    /// old-style file holding the bare result is read too, as libcni does.
    pub fn read_result(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Value>, CniError> {
        let path = self.path(network, container_id, ifname);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CniError::io(format!(
                    "cannot read cache file {}: {e}",
                    path.display()
                )));
            }
        };
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
            CniError::new(
                Code::DECODE,
                format!("corrupt cache file {}: {e}", path.display()),
            )
        })?;
        if doc.get("kind").and_then(Value::as_str) == Some(KIND) {
            Ok(doc.get("result").filter(|r| !r.is_null()).cloned())
        } else {
            Ok(Some(doc))
        }
    }

    /// Remove an attachment's entry; one that is already gone is fine.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.path(network, container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::io(format!(
                "cannot remove cache file {}: {e}",
                path.display()
            ))),
        }
    }

    /// The attachments cached for `network`, in file-name order, as libcni's
    /// GetCachedAttachments finds them. An unreadable directory is an error,
    /// not an empty list: GC would take that as "keep nothing".
    pub fn attachments(&self, network: &str) -> Result<Vec<Attachment>, CniError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(CniError::io(format!(
                    "cannot read cache directory {}: {e}",
                    self.dir.display()
                )));
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        files.sort();
        let mut found: Vec<Attachment> = Vec::new();
        for file in files {
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                // removed by a concurrent DEL, or a directory
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::IsADirectory) => {
                    continue;
                }
                Err(e) => {
                    return Err(CniError::io(format!(
                        "cannot read cache file {}: {e}",
                        file.display()
                    )));
                }
            };
            let Ok(entry) = serde_json::from_slice::<CacheEntry>(&bytes) else {
                eprintln!(
                    "cni-run: warning: ignoring unreadable cache file {}",
                    file.display()
                );
                continue;
            };
            if entry.kind != KIND
                || entry.network_name != network
                || entry.container_id.is_empty()
                || entry.if_name.is_empty()
            {
                continue;
            }
            let a = Attachment {
                container_id: entry.container_id,
                ifname: entry.if_name,
            };
            if !found.contains(&a) {
                found.push(a);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("cni-run-cache-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn entry(network: &str, container_id: &str, ifname: &str) -> CacheEntry {
        CacheEntry {
            kind: KIND.into(),
            container_id: container_id.into(),
            config: br#"{"name":"net"}"#.to_vec(),
            if_name: ifname.into(),
            network_name: network.into(),
            netns: "/run/netns/x".into(),
            cni_args: vec![("K".into(), "V".into())],
            capability_args: json!({"mac": "c2:00:00:00:00:01"})
                .as_object()
                .unwrap()
                .clone(),
            result: Some(json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]})),
        }
    }

    #[test]
    fn encodes_as_libcni() {
        let v = serde_json::to_value(entry("net", "c1", "eth0")).unwrap();
        assert_eq!(
            v,
            json!({
                "kind": "cniCacheV1",
                "containerId": "c1",
                "config": "eyJuYW1lIjoibmV0In0=",
                "ifName": "eth0",
                "networkName": "net",
                "netns": "/run/netns/x",
                "cniArgs": [["K", "V"]],
                "capabilityArgs": {"mac": "c2:00:00:00:00:01"},
                "result": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
            })
        );
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys[..5],
            ["kind", "containerId", "config", "ifName", "networkName"]
        );
        // empty optional fields are omitted
        let bare = CacheEntry {
            kind: KIND.into(),
            ..Default::default()
        };
        let v = serde_json::to_value(bare).unwrap();
        for k in ["netns", "cniArgs", "capabilityArgs", "result"] {
            assert!(v.get(k).is_none(), "{k}");
        }
    }

    #[test]
    fn decodes_what_go_writes() {
        let e: CacheEntry = serde_json::from_value(json!({
            "kind": "cniCacheV1", "containerId": "c", "config": null,
            "ifName": "eth0", "networkName": "n", "cniArgs": [["A", "1"]]
        }))
        .unwrap();
        assert!(e.config.is_empty());
        assert_eq!(e.cni_args, [("A".to_string(), "1".to_string())]);
        let round = entry("net", "c1", "eth0");
        let back: CacheEntry =
            serde_json::from_slice(&serde_json::to_vec(&round).unwrap()).unwrap();
        assert_eq!(back, round);
    }

    #[test]
    fn write_read_remove() {
        let d = Dir::new("rw");
        let c = Cache::new(&d.0);
        assert_eq!(
            c.path("net", "c1", "eth0"),
            d.0.join("results").join("net-c1-eth0")
        );
        assert_eq!(c.read_result("net", "c1", "eth0").unwrap(), None);
        let e = entry("net", "c1", "eth0");
        c.write(&e).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.0.join("results")), 0o700);
        assert_eq!(mode(&c.path("net", "c1", "eth0")), 0o600);
        assert_eq!(c.read_result("net", "c1", "eth0").unwrap(), e.result);
        // overwrite leaves no temp file behind
        c.write(&e).unwrap();
        assert_eq!(std::fs::read_dir(d.0.join("results")).unwrap().count(), 1);
        c.remove("net", "c1", "eth0").unwrap();
        c.remove("net", "c1", "eth0").unwrap();
        assert_eq!(c.read_result("net", "c1", "eth0").unwrap(), None);
    }

    #[test]
    fn reads_legacy_and_rejects_garbage() {
        let d = Dir::new("legacy");
        let c = Cache::new(&d.0);
        std::fs::create_dir_all(d.0.join("results")).unwrap();
        let bare = json!({"cniVersion": "0.4.0", "ips": []});
        std::fs::write(c.path("net", "old", "eth0"), bare.to_string()).unwrap();
        assert_eq!(c.read_result("net", "old", "eth0").unwrap(), Some(bare));
        std::fs::write(c.path("net", "bad", "eth0"), "{").unwrap();
        assert_eq!(
            c.read_result("net", "bad", "eth0").unwrap_err().code,
            Code::DECODE
        );
        let no_result =
            json!({"kind": KIND, "containerId": "n", "ifName": "eth0", "networkName": "net"});
        std::fs::write(c.path("net", "n", "eth0"), no_result.to_string()).unwrap();
        assert_eq!(c.read_result("net", "n", "eth0").unwrap(), None);
    }

    #[test]
    fn attachments_of_one_network() {
        let d = Dir::new("att");
        let c = Cache::new(&d.0);
        assert!(c.attachments("net").unwrap().is_empty());
        c.write(&entry("net", "c2", "eth0")).unwrap();
        c.write(&entry("net", "c1", "eth1")).unwrap();
        c.write(&entry("other", "c3", "eth0")).unwrap();
        let results = d.0.join("results");
        std::fs::write(results.join("net-junk-eth0"), "not json").unwrap();
        std::fs::write(results.join("net-legacy-eth0"), r#"{"cniVersion":"0.4.0"}"#).unwrap();
        std::fs::write(results.join(".net-c9-eth0.tmp-1"), "{}").unwrap();
        let got = c.attachments("net").unwrap();
        let ids: Vec<(&str, &str)> = got
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        assert_eq!(ids, [("c1", "eth1"), ("c2", "eth0")]);
        assert_eq!(c.attachments("other").unwrap().len(), 1);
    }
}
