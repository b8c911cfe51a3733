use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use cni_types::{CniError, Code};

/// A failed file operation on the store, with the path it was about.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct StoreError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl StoreError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError {
            op,
            path: path.into(),
            source,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostLocalError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no IP addresses available in range set {0}")]
    Exhausted(String),
    #[error("requested IP address {ip} is not available in range set {set}")]
    RequestedTaken { ip: IpAddr, set: String },
    #[error("requested IP address {0} is the subnet's gateway")]
    RequestedGateway(IpAddr),
    #[error("failed to allocate all requested IPs: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))]
    RequestedUnused(Vec<IpAddr>),
    #[error("{ip} has been allocated to {id}, duplicate allocation is not allowed")]
    Duplicate { ip: IpAddr, id: String },
    #[error("no IP address is reserved for container {id} interface {ifname}")]
    NotReserved { id: String, ifname: String },
    #[error("cannot read resolvConf {}: {source}", path.display())]
    ResolvConf { path: PathBuf, source: io::Error },
}

/// The one place host-local failures become CNI codes. Store I/O (disk
/// full included) is 5; the address problems are plugin codes 100+.
impl From<HostLocalError> for CniError {
    fn from(e: HostLocalError) -> Self {
        let code = match &e {
            HostLocalError::Cni(c) => return c.clone(),
            HostLocalError::Store(_) | HostLocalError::ResolvConf { .. } => Code::IO_FAILURE,
            HostLocalError::Exhausted(_) => Code(100),
            HostLocalError::RequestedTaken { .. }
            | HostLocalError::RequestedGateway(_)
            | HostLocalError::RequestedUnused(_) => Code(101),
            HostLocalError::Duplicate { .. } => Code(102),
            HostLocalError::NotReserved { .. } => Code(103),
        };
        CniError::new(code, e.to_string())
    }
}
