//! Network namespaces as file descriptors. Work inside one happens on the
//! calling thread, which is switched in and back by a guard: two `setns`
//! calls instead of a thread's clone, stack and join on every ADD.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns};
use nix::sys::stat::Mode;
use nix::sys::statfs::{NSFS_MAGIC, fstatfs, statfs};

use crate::error::{KernelError, Result};
use crate::netlink::Netlink;

#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Open a namespace such as `/run/netns/x` or `/proc/<pid>/ns/net`.
    ///
    /// The path comes from the runtime's environment, so it is checked before
    /// anything is opened: a FIFO would block the open forever and a device
    /// file has effects of its own. Only a network namespace is accepted
    /// (code 4 for anything else: a file, a mount namespace, /proc/version).
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref().to_path_buf();
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => KernelError::NetnsNotFound(path.clone()),
            _ => KernelError::Netns {
                path: path.clone(),
                source,
            },
        };
        // stat and statfs look at the file without opening it.
        let meta = std::fs::metadata(&path).map_err(io)?;
        let on_nsfs = statfs(&path).map_err(|e| io(e.into()))?.filesystem_type() == NSFS_MAGIC;
        if !meta.is_file() || !on_nsfs {
            return Err(KernelError::NotANetns(path));
        }
        let file = File::from(
            open(
                &path,
                OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
                Mode::empty(),
            )
            .map_err(|e| io(e.into()))?,
        );
        // What was opened is what was looked at (not swapped meanwhile) ...
        if fstatfs(&file).map_err(|e| io(e.into()))?.filesystem_type() != NSFS_MAGIC {
            return Err(KernelError::NotANetns(path));
        }
        // ... and a network namespace. procfs names a namespace opened
        // through /proc/<pid>/ns by its type ("net:[...]"); one opened through
        // a bind mount reads as its path, and setns, which checks the type,
        // decides on first use (`run`).
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        if let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) {
            let target = target.as_os_str().as_encoded_bytes();
            if !target.starts_with(b"/") && !target.starts_with(b"net:[") {
                return Err(KernelError::NotANetns(path));
            }
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

    /// Run `f` inside this namespace on the calling thread, which returns
    /// to the namespace it was in when `f` ends (also by a panic).
    ///
    /// The way back is tried first: a process that may enter a namespace
    /// but not return to its own (a user namespace without rights over the
    /// namespace it started in) runs `f` on a thread of its own instead.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let home = match Home::here() {
            Ok(home) => home,
            Err(_) => return self.run_on_thread(f),
        };
        self.enter()?;
        let out = f();
        drop(home);
        Ok(out)
    }

    fn enter(&self) -> Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| match e {
            // Another kind of namespace.
            nix::errno::Errno::EINVAL => KernelError::NotANetns(self.path.clone()),
            e => KernelError::Netns {
                path: self.path.clone(),
                source: e.into(),
            },
        })
    }

    /// `run` on a short-lived thread: it ends with `f`, taking the
    /// namespace switch with it.
    fn run_on_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
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

/// The calling thread's own network namespace, returned to on drop.
struct Home(File);

impl Home {
    /// Open the thread's namespace and check that the thread may switch
    /// into it (a switch to where it already is), as the return will.
    fn here() -> std::io::Result<Home> {
        let home = File::open("/proc/thread-self/ns/net")?;
        setns(home.as_fd(), CloneFlags::CLONE_NEWNET)?;
        Ok(Home(home))
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Carrying on in the container's namespace would apply the
            // host's side of the work there: stop instead.
            eprintln!("cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}
