//! Kernel mechanism shared by the plugins, no plugin's policy: network
//! namespaces as fds; one blocking netlink socket type (rtnetlink,
//! nfnetlink); links, addresses, routes and sysctls with errno-aware errors;
//! nf_tables messages, expressions and transactions in our own table, and
//! per-owner chains on top of them; conntrack; and masquerade, which bridge
//! and ptp share.

pub mod addr;
pub mod conntrack;
pub mod error;
pub mod link;
pub mod masquerade;
pub mod netlink;
pub mod netns;
pub mod nfnetlink;
pub mod nft_expr;
pub mod nftables;
pub mod owner_chain;
pub mod route;
pub mod sysctl;
pub mod teardown;

pub use addr::Address;
pub use error::KernelError;
pub use link::Link;
pub use netlink::{Netlink, RtRequest};
pub use netns::Netns;
pub use owner_chain::NftOwner;
pub use route::RouteSpec;

/// The message crates, for plugins that build their own requests.
pub use netlink_packet_netfilter as packet_netfilter;
pub use netlink_packet_route as packet_route;
pub use rtnetlink;
