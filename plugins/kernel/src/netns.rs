//! Network namespaces as file descriptors. Work inside one happens on a
//! short-lived thread of its own, so no thread we share ever changes namespace.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, PROC_SUPER_MAGIC, fstatfs};

use crate::error::{KernelError, Result};
use crate::netlink::Netlink;

#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Open a namespace such as `/run/netns/x` or `/proc/<pid>/ns/net`.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => KernelError::NetnsNotFound(path.clone()),
            _ => KernelError::Netns {
                path: path.clone(),
                source,
            },
        })?;
        // A bind-mounted namespace lives on nsfs; /proc/<pid>/ns/net on older
        // kernels reports procfs. Anything else (a regular file, a directory)
        // would make setns fail later with a less useful error.
        let magic = fstatfs(&file)
            .map_err(|e| KernelError::Netns {
                path: path.clone(),
                source: e.into(),
            })?
            .filesystem_type();
        if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
            return Err(KernelError::NotANetns(path));
        }
        Ok(Netns { file, path })
    }

    /// Open the namespace if it exists; `None` when it is gone (DEL after the
    /// container died).
    pub fn open_if_exists(path: impl AsRef<Path>) -> Result<Option<Netns>> {
        match Netns::open(path) {
            Ok(ns) => Ok(Some(ns)),
            Err(KernelError::NetnsNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's fd, e.g. to create a link directly inside it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Run `f` on a fresh thread that has entered this namespace. The thread
    /// ends with `f`, taking the namespace switch with it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    KernelError::Netns {
                        path: self.path.clone(),
                        source: e.into(),
                    }
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A netlink socket bound to this namespace. A socket belongs to the
    /// namespace it was created in, so it can be used from any thread.
    pub fn netlink(&self) -> Result<Netlink> {
        self.run(Netlink::open)?
    }
}
