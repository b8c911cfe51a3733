//! Kernel effects shared by the plugins: network namespaces as fds, a
//! blocking rtnetlink socket opened inside a namespace, and link, address,
//! route and sysctl operations with errno-aware errors, and rules in our own
//! nftables tables (masquerade, MAC spoof check).

pub mod addr;
pub mod conntrack;
pub mod error;
pub mod link;
pub mod masquerade;
pub mod netlink;
pub mod netns;
mod nfnetlink;
mod nft;
mod nft_batch;
mod nft_expr;
pub mod portmap;
pub mod route;
pub mod spoofcheck;
pub mod sysctl;

pub use addr::Address;
pub use error::KernelError;
pub use link::Link;
pub use netlink::Netlink;
pub use netns::Netns;
pub use nft::NftOwner;
pub use route::RouteSpec;

/// The message crates, for plugins that build their own requests.
pub use netlink_packet_route as packet_route;
pub use rtnetlink;
