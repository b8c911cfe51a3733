//! The CNI protocol (spec 1.1.0 and its conventions), with no kernel effects:
//! configuration and result types in every spec version, errors and their
//! codes, the environment, the plugin entry point, and plugin invocation.

pub mod args;
pub mod config;
pub mod env;
pub mod error;
pub mod invoke;
pub mod plugin;
pub mod result;
pub mod validate;
pub mod version;

pub use args::CniArgs;
pub use config::{IpRange, NetConf, NetConfList, PortMapping, RuntimeConfig};
pub use env::{Command, Env};
pub use error::{CniError, Code};
pub use plugin::{Attachment, Plugin, Request};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::{Version, VersionInfo};
