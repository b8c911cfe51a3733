use cni_kernel::{KernelError, Netns};
use cni_types::{CniError, CniResult, Interface, IpConfig, Plugin, Request};

use crate::error::LoopbackError;

/// The interface is always `lo`, whatever `CNI_IFNAME` says, as in the reference.
const LO: &str = "lo";

pub struct Loopback;

impl Plugin for Loopback {
    fn about(&self) -> &str {
        concat!("cni-rs loopback plugin v", env!("CARGO_PKG_VERSION"))
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Ok(add(req)?)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        Ok(del(req)?)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Ok(check(req)?)
    }

    /// Loopback keeps no state outside the container: nothing to collect.
    fn gc(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }

    /// Needs nothing but the kernel: always ready.
    fn status(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }
}

fn add(req: &Request) -> Result<CniResult, LoopbackError> {
    // Read prevResult first so a bad one fails before anything changes.
    let prev = req.conf.prev_result()?;
    let netns = Netns::open(req.netns()?)?;
    let mut nl = netns.netlink()?;
    let lo = nl.require_link(LO)?;
    nl.set_link_up(lo.index, true)?;
    let addrs = nl.addresses(Some(lo.index))?;
    if let Some(a) = addrs.iter().find(|a| !a.addr.ip().is_loopback()) {
        return Err(LoopbackError::NonLoopbackAddress(a.addr));
    }
    // In a chain, loopback passes the previous result through.
    if let Some(prev) = prev {
        return Ok(prev);
    }
    let first = |v4: bool| addrs.iter().find(|a| a.addr.is_ipv4() == v4);
    Ok(CniResult {
        interfaces: vec![Interface {
            name: LO.into(),
            mac: "00:00:00:00:00:00".into(),
            sandbox: netns.path().display().to_string(),
            ..Default::default()
        }],
        ips: [first(true), first(false)]
            .into_iter()
            .flatten()
            .map(|a| IpConfig {
                address: a.addr,
                gateway: None,
                interface: Some(0),
            })
            .collect(),
        ..Default::default()
    })
}

/// Bring `lo` down. Nothing to do when there is no namespace any more.
fn del(req: &Request) -> Result<(), LoopbackError> {
    let Some(path) = req.env.netns.as_deref() else {
        return Ok(());
    };
    let Some(netns) = Netns::open_if_exists(path)? else {
        return Ok(());
    };
    let mut nl = netns.netlink()?;
    match nl.require_link(LO) {
        Ok(lo) => Ok(nl.set_link_up(lo.index, false)?),
        Err(KernelError::LinkNotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `lo` is up and still holds the addresses the result reported for it.
fn check(req: &Request) -> Result<(), LoopbackError> {
    let netns = Netns::open(req.netns()?)?;
    let mut nl = netns.netlink()?;
    let lo = nl.require_link(LO)?;
    if !lo.is_up() {
        return Err(LoopbackError::Down);
    }
    let Some(prev) = req.conf.prev_result()? else {
        return Ok(());
    };
    let ours = |ip: &&IpConfig| {
        ip.interface
            .and_then(|i| prev.interfaces.get(i))
            .is_some_and(|i| i.name == LO && i.sandbox == netns.path().display().to_string())
    };
    let addrs = nl.addresses(Some(lo.index))?;
    for ip in prev.ips.iter().filter(ours) {
        if !addrs.iter().any(|a| a.addr == ip.address) {
            return Err(LoopbackError::MissingAddress(ip.address));
        }
    }
    Ok(())
}
