//! The loopback plugin: brings `lo` up in the container's namespace.
//! `plugin` holds the verbs.

pub mod error;
pub mod plugin;
