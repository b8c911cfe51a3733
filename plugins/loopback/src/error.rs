use cni_kernel::KernelError;
use cni_types::{CniError, Code};
use ipnetwork::IpNetwork;

#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("loopback interface has a non-loopback address {0}")]
    NonLoopbackAddress(IpNetwork),
    #[error("loopback interface is down")]
    Down,
    #[error("loopback interface lacks address {0} from the previous result")]
    MissingAddress(IpNetwork),
}

/// Codes: protocol and kernel errors keep theirs; a loopback that is not as
/// ADD left it is 100, the first plugin-specific code.
impl From<LoopbackError> for CniError {
    fn from(e: LoopbackError) -> Self {
        match e {
            LoopbackError::Cni(e) => e,
            LoopbackError::Kernel(e) => e.into(),
            e => CniError::new(Code(100), e.to_string()),
        }
    }
}
