//! File operations relative to an open directory, never following a
//! symbolic link: the store runs as root in a directory that others may
//! have planted names in, so a name in it must never lead elsewhere.
//!
//! Every open uses `O_NOFOLLOW` (a symlink fails with `ELOOP`) and
//! `O_NONBLOCK` (a FIFO cannot hang us); reads accept regular files only and
//! stop at a cap. Files are created 0600 and directories 0755 whatever the
//! umask (the umask can only take bits away).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o755;

fn err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn flags(extra: OFlag) -> OFlag {
    OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | extra
}

/// Identity of a file: device and inode.
pub type FileId = (u64, u64);

/// An open directory.
pub struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Open `path` as a directory, following symlinks: the admin's
    /// `dataDir` (or a directory on its way, such as `/var/run`) may be one.
    /// Everything below it is opened with [`Dir::subdir`].
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?;
        Ok(Dir { fd })
    }

    /// The subdirectory `name`, created if missing. A symlink there is refused.
    pub fn subdir(&self, name: &str, create: bool) -> io::Result<Dir> {
        if create {
            match mkdirat(&self.fd, name, Mode::from_bits_truncate(DIR_MODE)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(err(e)),
            }
        }
        let fd = openat(
            &self.fd,
            name,
            flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY),
            Mode::empty(),
        )
        .map_err(err)?;
        Ok(Dir { fd })
    }

    /// Open (creating) a regular file for reading and writing.
    pub fn open_rw(&self, name: &str) -> io::Result<File> {
        let fd = openat(
            &self.fd,
            name,
            flags(OFlag::O_CREAT | OFlag::O_RDWR),
            Mode::from_bits_truncate(FILE_MODE),
        )
        .map_err(err)?;
        regular(File::from(fd))
    }

    /// Create `name`, which must not exist, holding `bytes`; synced when
    /// `sync`. On failure nothing is left under that name.
    pub fn create_new(&self, name: &str, bytes: &[u8], sync: bool) -> io::Result<()> {
        let fd = openat(
            &self.fd,
            name,
            flags(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY),
            Mode::from_bits_truncate(FILE_MODE),
        )
        .map_err(err)?;
        let mut f = File::from(fd);
        let written = f
            .write_all(bytes)
            .and_then(|_| if sync { f.sync_data() } else { Ok(()) });
        if written.is_err() {
            let _ = self.remove(name);
        }
        written
    }

    /// Replace `name` whole: write a temporary file in `scratch`, then rename
    /// it over `name` (a rename replaces a symlink instead of following it).
    pub fn replace(&self, name: &str, bytes: &[u8], scratch: &Dir, tmp: &str) -> io::Result<()> {
        // A temporary file left by a killed process is ours to replace.
        scratch.remove(tmp)?;
        scratch.create_new(tmp, bytes, false)?;
        renameat(&scratch.fd, tmp, &self.fd, name).map_err(|e| {
            let _ = scratch.remove(tmp);
            err(e)
        })
    }

    /// Overwrite `name` in place with `bytes`, creating it if missing. A
    /// rename over an existing file makes ext4 start writing the new one
    /// out at once (its `auto_da_alloc`), about 0.3 ms per ADD; an
    /// overwrite does not. Only a regular file with no other link is
    /// written to: anything else (a symlink, a hard link, a FIFO) is
    /// replaced whole by [`Dir::replace`]. For small hints only: a crash
    /// mid-write can leave a mix of the old and new bytes.
    pub fn overwrite(&self, name: &str, bytes: &[u8], scratch: &Dir, tmp: &str) -> io::Result<()> {
        let opened = openat(
            &self.fd,
            name,
            flags(OFlag::O_CREAT | OFlag::O_WRONLY),
            Mode::from_bits_truncate(FILE_MODE),
        );
        if let Ok(fd) = opened {
            let f = File::from(fd);
            let meta = f.metadata()?;
            if meta.is_file() && meta.nlink() == 1 {
                use std::os::unix::fs::FileExt;
                f.write_all_at(bytes, 0)?;
                return f.set_len(bytes.len() as u64);
            }
        }
        self.replace(name, bytes, scratch, tmp)
    }

    /// Up to `cap` bytes of the regular file `name`; `None` if it does not exist.
    pub fn read(&self, name: &str, cap: u64) -> io::Result<Option<Vec<u8>>> {
        match openat(&self.fd, name, flags(OFlag::O_RDONLY), Mode::empty()) {
            Ok(fd) => read_capped(regular(File::from(fd))?, cap).map(Some),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Hard-link `name` as `to/to_name`; fails if that exists.
    pub fn link(&self, name: &str, to: &Dir, to_name: &str) -> io::Result<()> {
        linkat(&self.fd, name, &to.fd, to_name, AtFlags::empty()).map_err(err)
    }

    /// Remove the file `name`; a missing one is not an error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    /// Remove the subdirectory `name` if it is empty.
    pub fn remove_empty_dir(&self, name: &str) {
        let _ = unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir);
    }

    /// Identity of `name` itself (a symlink is not followed); `None` if absent.
    pub fn id(&self, name: &str) -> Option<FileId> {
        fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|s| (s.st_dev, s.st_ino))
    }

    /// Does `name` exist (as anything, a dangling symlink included)?
    pub fn exists(&self, name: &str) -> bool {
        self.id(name).is_some()
    }

    /// Is `name` a directory (not a symlink to one)?
    pub fn is_dir(&self, name: &str) -> bool {
        fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|s| SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
    }

    /// The names in this directory that are valid UTF-8, `.` and `..` left out.
    pub fn names(&self) -> io::Result<Vec<String>> {
        let fd = openat(
            &self.fd,
            ".",
            flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY),
            Mode::empty(),
        )
        .map_err(err)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(err)?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(err)?;
            let name = OsString::from_vec(entry.file_name().to_bytes().to_vec());
            if let Ok(name) = name.into_string()
                && name != "."
                && name != ".."
            {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Metadata of the directory itself.
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        File::from(self.fd.try_clone()?).metadata()
    }
}

/// Refuse anything but a regular file (a device, FIFO or socket).
fn regular(f: File) -> io::Result<File> {
    if f.metadata()?.is_file() {
        Ok(f)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

fn read_capped(f: File, cap: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes"),
        ));
    }
    Ok(buf)
}

/// Read a regular file named by a path the config gave (resolvConf): a FIFO,
/// device or directory is refused, and so is anything over `cap` bytes.
/// Symlinks are followed here: /etc/resolv.conf is often one.
pub fn read_regular_file(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    // Look before opening: opening a device can have effects of its own.
    if !std::fs::metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(err)?;
    let f = File::from(fd);
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file (mode {:o})", meta.mode()),
        ));
    }
    read_capped(f, cap)
}
