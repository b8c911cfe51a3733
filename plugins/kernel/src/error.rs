//! Errors of kernel operations, with the errno kept so callers can tell
//! "already gone" from a real failure.

use std::io;
use std::path::PathBuf;

use cni_types::{CniError, Code};
use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("network namespace {0} does not exist")]
    NetnsNotFound(PathBuf),
    #[error("{0} is not a network namespace")]
    NotANetns(PathBuf),
    #[error("cannot enter network namespace {path}: {source}")]
    Netns { path: PathBuf, source: io::Error },
    #[error("netlink {op}: {source}")]
    Netlink { op: &'static str, source: io::Error },
    #[error("netlink {op}: cannot decode the kernel's reply: {detail}")]
    Decode { op: &'static str, detail: String },
    #[error("link {0:?} not found")]
    LinkNotFound(String),
    #[error("sysctl {key}: {source}")]
    Sysctl { key: String, source: io::Error },
    /// The kernel refused an nf_tables request or batch (the batch was then
    /// aborted as a whole); `object` names what it was about.
    #[error("nftables {op} {object}: {source}")]
    Nftables {
        op: &'static str,
        object: String,
        source: io::Error,
    },
    /// An owner whose chain name would not fit; `what` names the kind of
    /// rules (masquerade, macspoofchk).
    #[error(
        "names too long for {what}: with network {network:?}, even a digest of it, the container id and interface make a chain name of {len} bytes, at most 255"
    )]
    NftNameTooLong {
        what: &'static str,
        network: String,
        len: usize,
    },
    #[error(
        "cannot set up {what} for {owner:?}: network name, container id and ifname must be non-empty, without '/' or NUL"
    )]
    NftOwner { what: &'static str, owner: String },
    #[error("invalid interface name {0:?}")]
    InvalidIfname(String),
    /// A port mapping or match condition that cannot be written as a rule
    /// (a port 0, an address of the wrong family).
    #[error("invalid port mapping: {0}")]
    InvalidPortMapping(String),
    /// The kernel refused a conntrack (ctnetlink) request; `op` says which.
    #[error("conntrack {op}: {source}")]
    Conntrack { op: String, source: io::Error },
}

impl KernelError {
    pub fn errno(&self) -> Option<Errno> {
        match self {
            KernelError::Netns { source, .. }
            | KernelError::Netlink { source, .. }
            | KernelError::Sysctl { source, .. }
            | KernelError::Nftables { source, .. }
            | KernelError::Conntrack { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    /// The thing acted on does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            KernelError::NetnsNotFound(_) | KernelError::LinkNotFound(_)
        ) || matches!(
            self.errno(),
            Some(Errno::ENODEV | Errno::ENOENT | Errno::ESRCH | Errno::EADDRNOTAVAIL)
        )
    }
}

/// The one place kernel failures become CNI codes: a missing namespace means
/// the container is gone (3), a path that is not a namespace is a bad
/// `CNI_NETNS` (4), a network name too long to name its nftables chains is
/// invalid config (7), anything the kernel refused (nftables, conntrack) is an
/// I/O failure (5).
impl From<KernelError> for CniError {
    fn from(e: KernelError) -> Self {
        let code = match &e {
            KernelError::NetnsNotFound(_) => Code::UNKNOWN_CONTAINER,
            KernelError::NotANetns(_) => Code::INVALID_ENV,
            KernelError::NftNameTooLong { .. }
            | KernelError::NftOwner { .. }
            | KernelError::InvalidPortMapping(_) => Code::INVALID_CONFIG,
            _ => Code::IO_FAILURE,
        };
        CniError::new(code, e.to_string())
    }
}

pub type Result<T, E = KernelError> = std::result::Result<T, E>;
