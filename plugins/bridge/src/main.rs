//! The bridge plugin. This build parses and checks its configuration; the
//! network work itself is not implemented yet (issue #4), so every verb
//! after validation answers with a clear error and STATUS reports the plugin
//! as not available (50), which tells runtimes not to schedule ADDs on it.

// The ADD path reads every field; until it lands only validation does.
#[allow(dead_code)]
mod config;

use cni_types::{CniError, CniResult, Code, Plugin, Request};

struct BridgePlugin;

/// Validate the config, then say plainly what is missing.
fn not_yet(req: &Request) -> CniError {
    match config::BridgeConf::load(req) {
        Err(e) => e,
        Ok(_) => CniError::new(
            Code::INTERNAL,
            format!(
                "bridge {} is not implemented in this build of cni-rs",
                req.env.command.as_str()
            ),
        ),
    }
}

impl Plugin for BridgePlugin {
    fn about(&self) -> &str {
        concat!("cni-rs bridge plugin v", env!("CARGO_PKG_VERSION"))
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Err(not_yet(req))
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        Err(not_yet(req))
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Err(not_yet(req))
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        Err(not_yet(req))
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let e = not_yet(req);
        Err(if e.code == Code::INTERNAL {
            CniError {
                code: Code::NOT_AVAILABLE,
                ..e
            }
        } else {
            e
        })
    }
}

fn main() {
    cni_types::plugin::run(&BridgePlugin)
}
