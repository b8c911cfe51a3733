use std::net::IpAddr;

use cni_types::{CniError, CniResult, Code, Dns, Plugin, Request};

use crate::allocator::{self, Owner, Store};
use crate::config::IpamConfig;
use crate::dirfd;
use crate::dns;
use crate::error::HostLocalError;
use crate::store::DiskStore;

pub struct HostLocal;

/// Delegate `command` for `req` to the IPAM plugin `ipam_type`, as a
/// plugin with IPAM does (bridge, ptp): host-local of this very build runs
/// in the caller's process, any other binary is exec'd
/// ([`cni_types::invoke::delegate_request`]).
pub fn delegate_ipam(
    ipam_type: &str,
    command: cni_types::Command,
    req: &Request,
) -> Result<Option<CniResult>, CniError> {
    let local: [(&str, &dyn Plugin); 1] = [("host-local", &HostLocal)];
    cni_types::invoke::delegate_request(ipam_type, command, req, &local)
}

/// resolv.conf is a few lines; glibc reads at most a few kilobytes of it.
const RESOLV_CONF_CAP: u64 = 64 * 1024;

impl Plugin for HostLocal {
    fn about(&self) -> &str {
        concat!("cni-rs host-local plugin v", env!("CARGO_PKG_VERSION"))
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

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        Ok(gc(req)?)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        status(req)
    }
}

fn owner(req: &Request) -> Owner {
    Owner::new(&req.env.container_id, &req.env.ifname)
}

/// Addresses of the previous result: where DEL and CHECK look first.
fn prev_addresses(req: &Request) -> Vec<IpAddr> {
    // A prevResult we cannot read must not stop a DEL from releasing.
    let prev = req.conf.prev_result().ok().flatten();
    prev.map(|p| p.ips.iter().map(|i| i.address.ip()).collect())
        .unwrap_or_default()
}

fn add(req: &Request) -> Result<CniResult, HostLocalError> {
    let conf = IpamConfig::load(req)?;
    // Read resolvConf before reserving anything: nothing to undo if it fails.
    let dns = match &conf.resolv_conf {
        Some(path) => {
            let text = dirfd::read_regular_file(path, RESOLV_CONF_CAP).map_err(|source| {
                HostLocalError::ResolvConf {
                    path: path.clone(),
                    source,
                }
            })?;
            dns::parse(&String::from_utf8_lossy(&text))
        }
        None => Dns::default(),
    };
    let mut store = DiskStore::open(&conf.data_dir, &conf.network)?;
    let ips = allocator::allocate(&mut store, &conf, &owner(req))?;
    Ok(CniResult {
        ips,
        routes: conf.routes,
        dns,
        ..Default::default()
    })
}

fn del(req: &Request) -> Result<(), HostLocalError> {
    let conf = IpamConfig::load(req)?;
    let mut store = DiskStore::open(&conf.data_dir, &conf.network)?;
    allocator::release(&mut store, &owner(req), &prev_addresses(req))?;
    Ok(())
}

/// The container holds a reservation, and every address of the previous
/// result that lies in our ranges is still its.
fn check(req: &Request) -> Result<(), HostLocalError> {
    let conf = IpamConfig::load(req)?;
    let mut store = DiskStore::open(&conf.data_dir, &conf.network)?;
    let who = owner(req);
    let prev = prev_addresses(req);
    let held = store.find(&who, &prev)?;
    let not_reserved = || HostLocalError::NotReserved {
        id: who.id.clone(),
        ifname: who.ifname.clone().unwrap_or_default(),
    };
    if held.is_empty() {
        return Err(not_reserved());
    }
    let ours = |a: &IpAddr| conf.sets.iter().any(|s| s.range_for(*a).is_some());
    if let Some(missing) = prev.iter().filter(|a| ours(a)).find(|a| !held.contains(a)) {
        return Err(HostLocalError::Cni(CniError::new(
            Code(103),
            format!(
                "address {missing} of the previous result is not reserved for container {}",
                who.id
            ),
        )));
    }
    Ok(())
}

fn gc(req: &Request) -> Result<(), HostLocalError> {
    let conf = IpamConfig::load(req)?;
    let keep: Vec<Owner> = req
        .gc_attachments()?
        .into_iter()
        .map(|a| Owner::new(&a.container_id, &a.ifname))
        .collect();
    let mut store = DiskStore::open(&conf.data_dir, &conf.network)?;
    let collected = allocator::collect(&mut store, &keep);
    // Tidy the index even when a release failed; report the failure after.
    store.tidy()?;
    collected?;
    Ok(())
}

/// Ready for ADD when the store can be written and every range set still
/// has a free address (ADD takes one from each).
fn status(req: &Request) -> Result<(), CniError> {
    let conf = IpamConfig::load(req)?;
    let unavailable = |msg: String| CniError::new(Code::NOT_AVAILABLE, msg);
    let mut store = DiskStore::open(&conf.data_dir, &conf.network)
        .map_err(|e| unavailable(format!("address store is not usable: {e}")))?;
    store
        .probe_writable()
        .map_err(|e| unavailable(format!("address store is not writable: {e}")))?;
    let full = allocator::exhausted_sets(&mut store, &conf.sets)
        .map_err(|e| unavailable(e.to_string()))?;
    if let Some(i) = full.first() {
        return Err(unavailable(format!(
            "no free address left in range set {i} ({})",
            conf.sets[*i].describe()
        )));
    }
    Ok(())
}
