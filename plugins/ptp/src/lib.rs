//! The ptp plugin: a veth pair per container and no bridge. The container
//! reaches everything through its host end, which holds the gateway address;
//! the host reaches the container through a route to each of its addresses.
//! `config` parses the options, `routes` says which routes each side gets,
//! `plugin` holds the verbs.

pub mod config;
pub mod error;
pub mod plugin;
pub mod routes;
