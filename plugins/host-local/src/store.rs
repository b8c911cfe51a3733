//! The reservation store on disk, in the reference plugin's exact layout so
//! that a node can switch between it and us with live containers, and so that
//! both can share one store:
//!
//! ```text
//! <dataDir>/<network>/lock                  flock'ed for every operation (the reference takes the same lock)
//! <dataDir>/<network>/<ip>                  "<container id>\r\n<ifname>": the reservation
//! <dataDir>/<network>/last_reserved_ip.<N>  where round-robin resumes in range set N
//! ```
//!
//! Beside it, `.cnirs/owners/<id>:<ifname>/<ip>` is a hard link to each
//! reservation. We write and sync it first and then link it to `<ip>`, which
//! fails if the name exists: so reserving is exclusive and a process killed
//! at any instant leaves either a complete reservation or none. It also
//! indexes reservations by owner, so finding a container's addresses reads
//! one small directory instead of every file (the reference's cost). An
//! index entry counts only while it is the same inode as `<ip>`. ':' cannot
//! appear in a container id or an interface name, so `<id>:<ifname>` is
//! unambiguous; holders read from files are validated before they name a
//! directory, so no file's contents can lead a path out of the index.
//!
//! Our own steps keep "every reservation has an index entry" true at every
//! instant. Another program on the store (the reference plugin) does not, so
//! `.cnirs/seen` records the store directory's state after our last
//! operation; when it differs on open, someone else changed the store and
//! the index is rebuilt from the reservation files (their reservations get
//! entries, stale entries and empty owner directories go).
//!
//! Every name is opened relative to the store's directory without following
//! symlinks ([`crate::dirfd`]), and the store's own directories must not be
//! symlinks.

use std::fs::{DirBuilder, File};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use cni_types::validate;

use crate::allocator::{Owner, Store};
use crate::dirfd::Dir;
use crate::error::StoreError;

const LOCK: &str = "lock";
const LAST_RESERVED: &str = "last_reserved_ip.";
const OURS: &str = ".cnirs";
const OWNERS: &str = "owners";
const SEEN: &str = "seen";
/// A holder is an id (at most a few hundred bytes) and an interface name.
const HOLDER_CAP: u64 = 4096;

pub struct DiskStore {
    path: PathBuf,
    dir: Dir,
    ours: Dir,
    owners: Dir,
    /// The store directory's state as `.cnirs/seen` recorded it, or as we
    /// found it after rebuilding the index.
    seen: String,
    /// `.cnirs/seen` is on disk and true. Removed before our first change,
    /// so a process killed amid its changes leaves none, and the next open
    /// tidies after it.
    sealed: bool,
    /// Held (flock'ed) for as long as the store is open.
    _lock: File,
}

/// What a reservation file says about its holder.
fn parse_holder(content: &str) -> Owner {
    let content = content.trim();
    match content
        .split_once("\r\n")
        .or_else(|| content.split_once('\n'))
    {
        Some((id, ifname)) => Owner {
            id: id.trim().to_owned(),
            ifname: Some(ifname.trim().to_owned()),
        },
        None => Owner {
            id: content.to_owned(),
            ifname: None,
        },
    }
}

fn holder_text(owner: &Owner) -> String {
    format!(
        "{}\r\n{}",
        owner.id.trim(),
        owner.ifname.as_deref().unwrap_or("")
    )
}

/// The index directory of `owner`, if its id and interface are names the
/// spec allows (anything else is not an attachment and names no directory).
fn owner_dir_name(owner: &Owner) -> Option<String> {
    validate::container_id(&owner.id).ok()?;
    let ifname = owner.ifname.as_deref().unwrap_or("");
    if !ifname.is_empty() {
        validate::interface_name(ifname).ok()?;
    }
    Some(format!("{}:{ifname}", owner.id))
}

/// The directory's state: any entry added, removed or renamed changes it.
fn fingerprint(meta: &std::fs::Metadata) -> String {
    format!(
        "{} {} {}.{} {}.{}",
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

impl DiskStore {
    /// Open (creating it if needed) the store of `network` and take its lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<DiskStore, StoreError> {
        let path = data_dir.join(network);
        let at = |op, name: &str| {
            let p = path.join(name);
            move |e| StoreError::new(op, p, e)
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(data_dir)
            .map_err(|e| StoreError::new("create", data_dir, e))?;
        let dir = Dir::open(data_dir)
            .and_then(|d| d.subdir(network, true))
            .map_err(|e| StoreError::new("open", &path, e))?;
        let lock = dir.open_rw(LOCK).map_err(at("open", LOCK))?;
        lock.lock().map_err(at("lock", LOCK))?;
        let ours = dir.subdir(OURS, true).map_err(at("open", OURS))?;
        let owners = ours.subdir(OWNERS, true).map_err(at("open", OURS))?;
        let seen = ours
            .read(SEEN, 256)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut store = DiskStore {
            path,
            dir,
            ours,
            owners,
            seen,
            sealed: true,
            _lock: lock,
        };
        if store.seen != store.now()? {
            store.sealed = false;
            store.reindex()?;
            store.seen = store.now()?;
        }
        Ok(store)
    }

    /// Called before each change of ours.
    fn unseal(&mut self) -> Result<(), StoreError> {
        if self.sealed {
            let path = format!("{OURS}/{SEEN}");
            self.ours.remove(SEEN).map_err(self.err("remove", &path))?;
            self.sealed = false;
        }
        Ok(())
    }

    fn now(&self) -> Result<String, StoreError> {
        let meta = self
            .dir
            .metadata()
            .map_err(|e| StoreError::new("stat", &self.path, e))?;
        Ok(fingerprint(&meta))
    }

    fn err(&self, op: &'static str, name: &str) -> impl FnOnce(std::io::Error) -> StoreError {
        let p = self.path.join(name);
        move |e| StoreError::new(op, p, e)
    }

    fn holder(&self, ip: IpAddr) -> Option<Owner> {
        let bytes = self.dir.read(&ip.to_string(), HOLDER_CAP).ok()??;
        Some(parse_holder(&String::from_utf8_lossy(&bytes)))
    }

    /// Is `odir/name` the reservation `name` in the store (same inode)?
    fn is_current(&self, odir: &Dir, name: &str) -> bool {
        name.parse::<IpAddr>().is_ok()
            && odir
                .id(name)
                .is_some_and(|id| self.dir.id(name) == Some(id))
    }

    /// Addresses whose reservation file exists, read from names alone.
    pub fn held_names(&self) -> Result<Vec<IpAddr>, StoreError> {
        Ok(self
            .dir
            .names()
            .map_err(self.err("list", ""))?
            .into_iter()
            .filter_map(|n| n.parse::<IpAddr>().ok())
            .collect())
    }

    /// Show that the store can be written: STATUS asks this.
    pub fn probe_writable(&self) -> Result<(), StoreError> {
        let probe = "status-probe";
        let path = format!("{OURS}/{probe}");
        self.ours.remove(probe).map_err(self.err("remove", &path))?;
        self.ours
            .create_new(probe, b"ok", false)
            .map_err(self.err("write", &path))?;
        self.ours.remove(probe).map_err(self.err("remove", &path))
    }

    /// Bring the index in line with the reservation files: an entry for
    /// every reservation whose holder is a valid attachment, no entry that is
    /// not a current reservation, no empty or foreign owner directory.
    pub fn tidy(&mut self) -> Result<(), StoreError> {
        self.unseal()?;
        self.reindex()?;
        self.seen = self.now()?;
        Ok(())
    }

    fn reindex(&self) -> Result<(), StoreError> {
        let owners_path = format!("{OURS}/{OWNERS}");
        for name in self
            .owners
            .names()
            .map_err(self.err("list", &owners_path))?
        {
            if !self.owners.is_dir(&name) {
                let _ = self.owners.remove(&name);
                continue;
            }
            let Ok(odir) = self.owners.subdir(&name, false) else {
                continue;
            };
            for entry in odir.names().unwrap_or_default() {
                if !self.is_current(&odir, &entry) {
                    let _ = odir.remove(&entry);
                }
            }
            self.owners.remove_empty_dir(&name);
        }
        for ip in self.held_names()? {
            let Some(dname) = self.holder(ip).as_ref().and_then(owner_dir_name) else {
                continue;
            };
            let name = ip.to_string();
            let odir = self
                .owners
                .subdir(&dname, true)
                .map_err(self.err("create", &format!("{owners_path}/{dname}")))?;
            if !self.is_current(&odir, &name) {
                let _ = odir.remove(&name);
                // Gone meanwhile or not a regular file: nothing to index.
                let _ = self.dir.link(&name, &odir, &name);
            }
        }
        Ok(())
    }

    fn write_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), StoreError> {
        let name = format!("{LAST_RESERVED}{set}");
        // A hint (where round-robin resumes), so written in place.
        self.dir
            .overwrite(
                &name,
                ip.to_string().as_bytes(),
                &self.ours,
                &format!("{name}.tmp"),
            )
            .map_err(self.err("write", &name))
    }

    /// Undo a reservation of ours whose step after the link failed.
    fn unreserve(&self, odir: &Dir, dname: &str, name: &str) {
        let _ = self.dir.remove(name);
        let _ = odir.remove(name);
        self.owners.remove_empty_dir(dname);
    }
}

impl Drop for DiskStore {
    /// Record the directory's state after our operations (still under the
    /// lock): the next open trusts the index while nobody else changed it.
    fn drop(&mut self) {
        if let Ok(now) = self.now()
            && (now != self.seen || !self.sealed)
        {
            let _ = self
                .ours
                .replace(SEEN, now.as_bytes(), &self.ours, "seen.tmp");
        }
    }
}

impl Store for DiskStore {
    fn reserve(&mut self, owner: &Owner, ip: IpAddr, set: usize) -> Result<bool, StoreError> {
        let name = ip.to_string();
        // Cheap test first: most addresses round-robin passes over are taken.
        if self.dir.exists(&name) {
            return Ok(false);
        }
        let dname = owner_dir_name(owner).ok_or_else(|| {
            StoreError::new(
                "reserve",
                self.path.join(&name),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid holder"),
            )
        })?;
        let entry_path = format!("{OURS}/{OWNERS}/{dname}/{name}");
        self.unseal()?;
        let odir = self
            .owners
            .subdir(&dname, true)
            .map_err(self.err("create", &entry_path))?;
        // An entry left by a killed process is stale (the address is free).
        odir.remove(&name)
            .map_err(self.err("remove", &entry_path))?;
        odir.create_new(&name, holder_text(owner).as_bytes(), true)
            .map_err(self.err("write", &entry_path))?;
        match odir.link(&name, &self.dir, &name) {
            Ok(()) => {}
            Err(e) => {
                let _ = odir.remove(&name);
                self.owners.remove_empty_dir(&dname);
                return if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(false)
                } else {
                    Err(StoreError::new("reserve", self.path.join(&name), e))
                };
            }
        }
        if let Err(e) = self.write_last_reserved(set, ip) {
            self.unreserve(&odir, &dname, &name);
            return Err(e);
        }
        Ok(true)
    }

    fn last_reserved(&mut self, set: usize) -> Result<Option<IpAddr>, StoreError> {
        let name = format!("{LAST_RESERVED}{set}");
        let bytes = self.dir.read(&name, 64).map_err(self.err("read", &name))?;
        Ok(bytes.and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()))
    }

    fn indexed(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, StoreError> {
        // Also the id-only holders old reference versions wrote.
        let id_only = Owner {
            id: owner.id.clone(),
            ifname: None,
        };
        let mut out = Vec::new();
        for who in [owner, &id_only] {
            let Some(dname) = owner_dir_name(who) else {
                continue;
            };
            let Ok(odir) = self.owners.subdir(&dname, false) else {
                continue;
            };
            for name in odir.names().unwrap_or_default() {
                match name.parse::<IpAddr>() {
                    Ok(ip) if self.is_current(&odir, &name) => out.push(ip),
                    // Stale: released or replaced by another program, or
                    // written by a process killed before it linked it.
                    _ => {
                        let _ = odir.remove(&name);
                    }
                }
            }
            self.owners.remove_empty_dir(&dname);
            if owner.ifname.is_none() {
                break;
            }
        }
        Ok(out)
    }

    fn find(&mut self, owner: &Owner, hints: &[IpAddr]) -> Result<Vec<IpAddr>, StoreError> {
        let mut ips = self.indexed(owner)?;
        for hint in hints {
            if !ips.contains(hint) && self.holder(*hint).is_some_and(|h| h.covers(owner)) {
                ips.push(*hint);
            }
        }
        Ok(ips)
    }

    fn release(&mut self, ip: IpAddr) -> Result<(), StoreError> {
        let name = ip.to_string();
        let dname = self.holder(ip).as_ref().and_then(owner_dir_name);
        self.unseal()?;
        // The reservation first: once it is gone the address is free, and a
        // leftover index entry is recognised as stale.
        self.dir.remove(&name).map_err(self.err("remove", &name))?;
        if let Some(dname) = dname
            && let Ok(odir) = self.owners.subdir(&dname, false)
        {
            let _ = odir.remove(&name);
            self.owners.remove_empty_dir(&dname);
        }
        Ok(())
    }

    fn all(&mut self) -> Result<Vec<(IpAddr, Owner)>, StoreError> {
        Ok(self
            .held_names()?
            .into_iter()
            .filter_map(|ip| self.holder(ip).map(|h| (ip, h)))
            .collect())
    }

    fn held(&mut self) -> Result<Vec<IpAddr>, StoreError> {
        self.held_names()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_formats() {
        assert_eq!(parse_holder("abc\r\neth0"), Owner::new("abc", "eth0"));
        assert_eq!(parse_holder("abc\neth0\n"), Owner::new("abc", "eth0"));
        assert_eq!(
            parse_holder("  abc \n"),
            Owner {
                id: "abc".into(),
                ifname: None
            }
        );
        assert_eq!(holder_text(&Owner::new("abc", "eth0")), "abc\r\neth0");
    }

    #[test]
    fn only_valid_holders_name_an_index_directory() {
        assert_eq!(
            owner_dir_name(&Owner::new("abc", "eth0")).as_deref(),
            Some("abc:eth0")
        );
        for (id, ifname) in [
            ("../../etc", "eth0"),
            ("abc", "../x"),
            ("a/b", "eth0"),
            (".", "eth0"),
            ("abc", "eth0/.."),
            ("", "eth0"),
        ] {
            assert_eq!(
                owner_dir_name(&Owner::new(id, ifname)),
                None,
                "{id} {ifname}"
            );
        }
    }
}
