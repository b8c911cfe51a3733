//! The reservation store on disk, in the reference plugin's exact layout so
//! that a node can switch between it and us with live containers:
//!
//! ```text
//! <dataDir>/<network>/lock                  flock'ed for every operation (the reference takes the same lock)
//! <dataDir>/<network>/<ip>                  "<container id>\r\n<ifname>": the reservation
//! <dataDir>/<network>/last_reserved_ip.<N>  where round-robin resumes in range set N
//! ```
//!
//! Beside it, `.cnirs/owners/<id>:<ifname>/<ip>` is a hard link to each
//! reservation we make. It is written and synced first and then linked to
//! `<ip>`, which fails if the name exists: so reserving is exclusive and a
//! process killed at any instant leaves either a complete reservation or
//! none. It also indexes reservations by owner, so finding a container's
//! addresses reads one small directory instead of every file (the
//! reference's cost). An index entry counts only while it is the same inode
//! as `<ip>`: if another program releases or reuses the address, the entry
//! is stale and ignored. ':' cannot appear in a container id or an interface
//! name, so `<id>:<ifname>` is unambiguous.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::allocator::{Owner, Store};
use crate::error::StoreError;

const LOCK: &str = "lock";
const LAST_RESERVED: &str = "last_reserved_ip.";
const OURS: &str = ".cnirs";
const OWNERS: &str = "owners";

pub struct DiskStore {
    dir: PathBuf,
    /// Held (flock'ed) for as long as the store is open.
    _lock: File,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |e| StoreError::new(op, path, e)
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

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl DiskStore {
    /// Open (creating it if needed) the store of `network` and take its lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<DiskStore, StoreError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        lock.lock().map_err(io("lock", &lock_path))?;
        Ok(DiskStore { dir, _lock: lock })
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn owner_dir(&self, owner: &Owner) -> PathBuf {
        let name = format!(
            "{}:{}",
            owner.id.trim(),
            owner.ifname.as_deref().unwrap_or("")
        );
        self.dir.join(OURS).join(OWNERS).join(name)
    }

    fn holder(&self, ip: IpAddr) -> Option<Owner> {
        fs::read_to_string(self.ip_path(ip))
            .ok()
            .map(|c| parse_holder(&c))
    }

    /// Addresses whose reservation file exists, read from names alone.
    pub fn held_names(&self) -> Result<Vec<IpAddr>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(io("list", &self.dir))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.parse::<IpAddr>().ok())
            })
            .collect())
    }

    /// Show that the store can be written: STATUS asks this.
    pub fn probe_writable(&self) -> Result<(), StoreError> {
        let ours = self.dir.join(OURS);
        fs::create_dir_all(&ours).map_err(io("create", &ours))?;
        let probe = ours.join("status-probe");
        fs::write(&probe, b"ok").map_err(io("write", &probe))?;
        fs::remove_file(&probe).map_err(io("remove", &probe))
    }

    /// Remove index entries that no longer match a reservation (the address
    /// was released or reused by another program, or a process died between
    /// writing the entry and linking it), and owner directories left empty.
    pub fn tidy(&self) -> Result<(), StoreError> {
        let owners = self.dir.join(OURS).join(OWNERS);
        let dirs = match fs::read_dir(&owners) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::new("list", &owners, e)),
        };
        for d in dirs.filter_map(|e| e.ok()) {
            let odir = d.path();
            for entry in fs::read_dir(&odir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
            {
                let keep = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<IpAddr>().ok())
                    .is_some_and(|ip| same_file(&entry.path(), &self.ip_path(ip)));
                if !keep {
                    let _ = fs::remove_file(entry.path());
                }
            }
            let _ = fs::remove_dir(&odir); // fails while it still holds entries
        }
        Ok(())
    }

    fn write_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), StoreError> {
        // Written aside and renamed over, so it is never seen half written.
        let name = format!("{LAST_RESERVED}{set}");
        let tmp = self.dir.join(OURS).join(format!("{name}.tmp"));
        fs::write(&tmp, ip.to_string()).map_err(io("write", &tmp))?;
        let dst = self.dir.join(name);
        fs::rename(&tmp, &dst).map_err(io("rename", &dst))
    }

    /// Scan every reservation file for `owner`'s: the reference's way, needed
    /// for reservations that another program made.
    fn scan(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, StoreError> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|(_, h)| h.covers(owner))
            .map(|(ip, _)| ip)
            .collect())
    }
}

impl Store for DiskStore {
    fn reserve(&mut self, owner: &Owner, ip: IpAddr, set: usize) -> Result<bool, StoreError> {
        let target = self.ip_path(ip);
        // Cheap test first: most addresses round-robin passes over are taken.
        if fs::symlink_metadata(&target).is_ok() {
            return Ok(false);
        }
        let odir = self.owner_dir(owner);
        fs::create_dir_all(&odir).map_err(io("create", &odir))?;
        let entry = odir.join(ip.to_string());
        let written = File::create(&entry)
            .and_then(|mut f| {
                f.write_all(holder_text(owner).as_bytes())?;
                f.sync_data()
            })
            .map_err(io("write", &entry));
        if let Err(e) = written {
            let _ = fs::remove_file(&entry);
            return Err(e);
        }
        match fs::hard_link(&entry, &target) {
            Ok(()) => {
                self.write_last_reserved(set, ip)?;
                Ok(true)
            }
            Err(e) => {
                let _ = fs::remove_file(&entry);
                if e.kind() == ErrorKind::AlreadyExists {
                    Ok(false)
                } else {
                    Err(StoreError::new("reserve", target, e))
                }
            }
        }
    }

    fn last_reserved(&mut self, set: usize) -> Result<Option<IpAddr>, StoreError> {
        let path = self.dir.join(format!("{LAST_RESERVED}{set}"));
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::new("read", path, e)),
        }
    }

    fn indexed(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, StoreError> {
        let odir = self.owner_dir(owner);
        let entries = match fs::read_dir(&odir) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::new("list", odir, e)),
        };
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let ip = e.file_name().to_str()?.parse::<IpAddr>().ok()?;
                same_file(&e.path(), &self.ip_path(ip)).then_some(ip)
            })
            .collect())
    }

    fn find(&mut self, owner: &Owner, hints: &[IpAddr]) -> Result<Vec<IpAddr>, StoreError> {
        let mut ips = self.indexed(owner)?;
        for hint in hints {
            if !ips.contains(hint) && self.holder(*hint).is_some_and(|h| h.covers(owner)) {
                ips.push(*hint);
            }
        }
        if ips.is_empty() {
            ips = self.scan(owner)?;
        }
        Ok(ips)
    }

    fn release(&mut self, ip: IpAddr) -> Result<(), StoreError> {
        let target = self.ip_path(ip);
        let entry = self
            .holder(ip)
            .map(|h| self.owner_dir(&h).join(ip.to_string()));
        // The reservation first: once it is gone the address is free, and a
        // leftover index entry is recognised as stale.
        match fs::remove_file(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::new("remove", target, e)),
        }
        if let Some(entry) = entry {
            let _ = fs::remove_file(&entry);
            if let Some(odir) = entry.parent() {
                let _ = fs::remove_dir(odir);
            }
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
}
