//! Kernel effects shared by the plugins: network namespaces as fds, a
//! blocking rtnetlink socket opened inside a namespace, and link, address,
//! route and sysctl operations with errno-aware errors.

pub mod addr;
pub mod error;
pub mod link;
pub mod masquerade;
pub mod netlink;
pub mod netns;
mod nfnetlink;
pub mod route;
pub mod sysctl;

pub use addr::Address;
pub use error::KernelError;
pub use link::Link;
pub use netlink::Netlink;
pub use netns::Netns;
pub use route::RouteSpec;

/// The message crates, for plugins that build their own requests.
pub use netlink_packet_route as packet_route;
pub use rtnetlink;
