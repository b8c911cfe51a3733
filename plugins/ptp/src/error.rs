use std::net::IpAddr;

use cni_kernel::KernelError;
use cni_types::{CniError, Code};

#[derive(Debug, thiserror::Error)]
pub enum PtpError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("container interface {0:?} already exists")]
    InterfaceExists(String),
    #[error("the IPAM plugin returned no IP addresses")]
    NoAddresses,
    #[error("the IPAM plugin returned {0} without a gateway: ptp routes through the gateway")]
    NoGateway(IpAddr),
    #[error("{0}")]
    Drift(String),
}

/// The one place ptp failures become CNI codes, as for bridge: kernel
/// refusals keep the kernel layer's mapping, the plugin's own conditions
/// are 100+ (100: the container interface exists; 101: CHECK found the
/// network not as ADD left it; 102: IPAM gave no address).
impl From<PtpError> for CniError {
    fn from(e: PtpError) -> Self {
        let code = match &e {
            PtpError::Cni(c) => return c.clone(),
            PtpError::Kernel(_) => {
                let PtpError::Kernel(k) = e else {
                    unreachable!()
                };
                return k.into();
            }
            PtpError::NoGateway(_) => Code::INVALID_CONFIG,
            PtpError::InterfaceExists(_) => Code(100),
            PtpError::Drift(_) => Code(101),
            PtpError::NoAddresses => Code(102),
        };
        CniError::new(code, e.to_string())
    }
}

pub type Result<T, E = PtpError> = std::result::Result<T, E>;
