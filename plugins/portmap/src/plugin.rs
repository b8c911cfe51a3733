use std::collections::BTreeSet;

use crate::rules::{self, Mapping, NftOwner, Proto, Setup};
use cni_kernel::Netlink;
use cni_kernel::conntrack::{self, Family};
use cni_types::{CniError, CniResult, Code, Plugin, Request};

use crate::config::PortMapConf;
use crate::error::{PortmapError, Result};
use crate::mappings::{Targets, expand};

pub struct Portmap;

impl Plugin for Portmap {
    fn about(&self) -> &str {
        concat!("cni-rs portmap plugin v", env!("CARGO_PKG_VERSION"))
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

    fn status(&self, _req: &Request) -> Result<(), CniError> {
        rules::available().map_err(|e| {
            CniError::new(Code::NOT_AVAILABLE, format!("nf_tables is not usable: {e}"))
        })
    }
}

fn owner<'a>(conf: &'a PortMapConf, req: &'a Request) -> NftOwner<'a> {
    NftOwner {
        network: &conf.net.name,
        container_id: &req.env.container_id,
        ifname: &req.env.ifname,
    }
}

/// The mappings this ADD (or CHECK) asks for, against the previous result.
fn wanted(conf: &PortMapConf, req: &Request, prev: &CniResult) -> Result<(Vec<Mapping>, Targets)> {
    let targets = Targets::from_result(prev, &req.env.ifname);
    Ok((
        expand(&conf.net.runtime().port_mappings, &targets)?,
        targets,
    ))
}

/// Install the mappings and return the previous result unchanged. Without
/// mappings this is a pass-through.
fn add(req: &Request) -> Result<CniResult> {
    let conf = PortMapConf::load(req)?;
    let prev = conf.net.prev_result()?.ok_or(PortmapError::NoPrevResult)?;
    let (mappings, targets) = wanted(&conf, req, &prev)?;
    if mappings.is_empty() {
        return Ok(prev);
    }
    let hairpin = targets.subnets();
    rules::add(&Setup {
        owner: owner(&conf, req),
        mappings: &mappings,
        snat: conf.snat(),
        masq_all: conf.masq_all,
        hairpin_from: &hairpin,
        conditions_v4: &conf.v4,
        conditions_v6: &conf.v6,
    })?;
    if let Err(e) = after_add(&conf, &mappings, &targets) {
        let _ = rules::del(&owner(&conf, req));
        return Err(e);
    }
    Ok(prev)
}

/// What the mappings need beyond the rules: 127.0.0.1 reaching the container
/// (route_localnet on the interface that routes to it, as the reference
/// does), and no stale UDP conntrack entry sending the port elsewhere.
fn after_add(conf: &PortMapConf, mappings: &[Mapping], targets: &Targets) -> Result<()> {
    if conf.snat()
        && let Some(v4) = targets.v4
    {
        let mut nl = Netlink::open()?;
        if let Some(oif) = nl.route_oif(v4.ip())? {
            nl.set_inet_conf(oif, |c| c.route_localnet = 1)?;
        }
    }
    flush_udp(mappings);
    Ok(())
}

/// Best effort, as in the reference: a kernel without conntrack netlink must
/// not make ADD or DEL fail, so failures are reported on stderr only.
fn flush_udp(mappings: &[Mapping]) {
    let ports: BTreeSet<(bool, u16)> = mappings
        .iter()
        .filter(|m| m.proto == Proto::Udp)
        .map(|m| (m.container_ip.is_ipv4(), m.host_port))
        .collect();
    for (v4, port) in ports {
        if let Err(e) = conntrack::flush_udp_dport(if v4 { Family::V4 } else { Family::V6 }, port) {
            eprintln!("portmap: cannot flush UDP conntrack entries of port {port}: {e}");
        }
    }
}

/// Remove the owner's mappings, found by owner: neither portMappings nor
/// the namespace is needed. Stale UDP conntrack entries go too.
fn del(req: &Request) -> Result<()> {
    let conf = PortMapConf::load(req)?;
    let removed = rules::del(&owner(&conf, req))?;
    flush_udp(&removed);
    Ok(())
}

/// Every mapping asked for is installed and dispatched to.
fn check(req: &Request) -> Result<()> {
    let conf = PortMapConf::load(req)?;
    let prev = conf.net.prev_result()?.ok_or(PortmapError::NoPrevResult)?;
    let (mappings, _) = wanted(&conf, req, &prev)?;
    if mappings.is_empty() {
        return Ok(());
    }
    let installed = rules::installed(&owner(&conf, req))?.unwrap_or_default();
    if let Some(m) = mappings.iter().find(|m| !installed.contains(m)) {
        return Err(PortmapError::Drift(format!(
            "the mapping of host port {}/{:?} to {}:{} is not installed",
            m.host_port, m.proto, m.container_ip, m.container_port
        )));
    }
    Ok(())
}

/// Remove the mappings of attachments not in the valid list.
fn gc(req: &Request) -> Result<()> {
    let conf = PortMapConf::load(req)?;
    let keep = req.gc_attachments()?;
    let mut first = None;
    for (id, ifname) in rules::owners(&conf.net.name)? {
        if keep
            .iter()
            .any(|a| a.container_id == id && a.ifname == ifname)
        {
            continue;
        }
        let o = NftOwner {
            network: &conf.net.name,
            container_id: &id,
            ifname: &ifname,
        };
        match rules::del(&o) {
            Ok(removed) => flush_udp(&removed),
            Err(e) => {
                first.get_or_insert(PortmapError::from(e));
            }
        }
    }
    first.map_or(Ok(()), Err)
}
