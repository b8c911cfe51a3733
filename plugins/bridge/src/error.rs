use cni_kernel::KernelError;
use cni_types::{CniError, Code};

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{0:?} already exists and is not a bridge")]
    NotABridge(String),
    #[error("container interface {0:?} already exists")]
    InterfaceExists(String),
    #[error(
        "bridge {bridge:?} already has an IP address different from {want} (set forceAddress to replace it)"
    )]
    BridgeAddress { bridge: String, want: String },
    #[error("the IPAM plugin returned no IP addresses")]
    NoAddresses,
    #[error("{0}")]
    Drift(String),
    #[error("container interface {0:?} has no Ethernet address to enforce")]
    NoMac(String),
    #[error(
        "this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING), which vlan and vlanTrunk need"
    )]
    NoVlanFiltering,
}

/// The one place bridge failures become CNI codes: configuration conflicts
/// are 7, kernel refusals keep the kernel layer's mapping, and the plugin's
/// own conditions are 100+ (100: the container interface exists; 101: CHECK
/// found the network not as ADD left it; 102: IPAM gave no address).
impl From<BridgeError> for CniError {
    fn from(e: BridgeError) -> Self {
        let code = match &e {
            BridgeError::Cni(c) => return c.clone(),
            BridgeError::Kernel(_) => {
                let BridgeError::Kernel(k) = e else {
                    unreachable!()
                };
                return k.into();
            }
            BridgeError::NotABridge(_) | BridgeError::BridgeAddress { .. } => Code::INVALID_CONFIG,
            BridgeError::InterfaceExists(_) => Code(100),
            BridgeError::NoVlanFiltering | BridgeError::NoMac(_) => Code::IO_FAILURE,
            BridgeError::Drift(_) => Code(101),
            BridgeError::NoAddresses => Code(102),
        };
        CniError::new(code, e.to_string())
    }
}

pub type Result<T, E = BridgeError> = std::result::Result<T, E>;
