use cni_kernel::KernelError;
use cni_types::{CniError, Code};

#[derive(Debug, thiserror::Error)]
pub enum PortmapError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("portmap is a chained plugin: it needs the previous plugin's result (prevResult)")]
    NoPrevResult,
    #[error("{0}")]
    Drift(String),
}

/// The one place portmap failures become CNI codes: a missing prevResult is
/// an invalid config (7), kernel failures keep their mapping, CHECK drift is
/// the plugin's own 101 (as in bridge).
impl From<PortmapError> for CniError {
    fn from(e: PortmapError) -> Self {
        match e {
            PortmapError::Cni(c) => c,
            PortmapError::Kernel(k) => k.into(),
            PortmapError::NoPrevResult => CniError::new(Code::INVALID_CONFIG, e.to_string()),
            PortmapError::Drift(_) => CniError::new(Code(101), e.to_string()),
        }
    }
}

pub type Result<T, E = PortmapError> = std::result::Result<T, E>;
