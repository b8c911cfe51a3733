use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use cni_kernel::packet_route::address::AddressFlags;
use cni_kernel::packet_route::link::InfoKind;
use cni_kernel::{
    Link, Netlink, Netns, NftOwner, RouteSpec, RtRequest, masquerade, owner_chain, sysctl, teardown,
};
use cni_types::invoke::delegate_target;
use cni_types::{CniError, CniResult, Code, Command, Interface, IpConfig, Plugin, Request};
use ipnetwork::IpNetwork;
use nix::errno::Errno;

use crate::config::PtpConf;
use crate::error::{PtpError, Result};
use crate::routes;

pub struct Ptp;

impl Plugin for Ptp {
    fn about(&self) -> &str {
        concat!("cni-rs ptp plugin v", env!("CARGO_PKG_VERSION"))
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

fn owner<'a>(conf: &'a PtpConf, req: &'a Request) -> NftOwner<'a> {
    NftOwner {
        network: &conf.net.name,
        container_id: &req.env.container_id,
        ifname: &req.env.ifname,
    }
}

fn ipam(conf: &PtpConf, req: &Request, command: Command) -> Result<Option<CniResult>> {
    let ty = conf.ipam_type().expect("checked when loaded");
    Ok(host_local::plugin::delegate_ipam(ty, command, req)?)
}

/// What ADD has done so far, so that a failure can undo exactly that.
#[derive(Default)]
struct Done {
    ipam: bool,
    host_veth: Option<u32>,
    masq: bool,
}

fn add(req: &Request) -> Result<CniResult> {
    let conf = PtpConf::load(req)?;
    // Before anything changes: an IPAM plugin that cannot be run.
    delegate_target(conf.ipam_type().expect("checked"), &req.env.path)?;
    let netns = Netns::open(req.netns()?)?;
    let mut host_nl = Netlink::open()?;
    let mut done = Done::default();
    let outcome = add_steps(req, &conf, &netns, &mut host_nl, &mut done);
    if outcome.is_err() {
        // Undo in reverse. Deleting the host end deletes the container end
        // and the routes through it.
        if done.masq {
            let _ = masquerade::del(&owner(&conf, req));
        }
        if let Some(index) = done.host_veth {
            let _ = host_nl.delete_link(index);
        }
        if done.ipam {
            let _ = ipam(&conf, req, Command::Del);
        }
    }
    outcome
}

fn add_steps(
    req: &Request,
    conf: &PtpConf,
    netns: &Netns,
    nl: &mut Netlink,
    done: &mut Done,
) -> Result<CniResult> {
    let ifname = &req.env.ifname;
    // Into the namespace first: if it is not a network namespace, nothing
    // has been created yet.
    let mut cnl = netns.netlink()?;
    if cnl.link_by_name(ifname)?.is_some() {
        return Err(PtpError::InterfaceExists(ifname.clone()));
    }
    let r = ipam(conf, req, Command::Add)?.expect("ADD returns a result");
    done.ipam = true;
    if r.ips.is_empty() {
        return Err(PtpError::NoAddresses);
    }
    let ips: Vec<IpConfig> = r
        .ips
        .into_iter()
        .map(|ip| IpConfig {
            interface: Some(1),
            ..ip
        })
        .collect();
    // Every route is known (and every address has a gateway) before the
    // first link is made.
    let host_addrs = routes::host_addresses(&ips)?;
    let has_v4 = ips.iter().any(|i| i.address.is_ipv4());
    let has_v6 = ips.iter().any(|i| i.address.is_ipv6());

    let host = nl.create_host_veth(ifname, netns.fd(), conf.mtu, None)?;
    done.host_veth = Some(host.index);
    // The host end is still down: no DAD for its link-local address once it
    // is up, or the first IPv6 packet to the container waits a second for a
    // neighbour solicitation the kernel holds back (see bridge).
    if has_v6 {
        sysctl::no_dad(&host.name, host.ipv6)?;
    }
    nl.set_alias_up(
        host.index,
        &cni_kernel::link::owner_alias(&owner(conf, req)),
    )?;
    for a in &host_addrs {
        nl.add_address_with(host.index, *a, AddressFlags::Nodad)?;
    }
    for r in routes::host_routes(&ips, host.index) {
        match nl.add_route(&r) {
            // A stale route of a container that had this address.
            Err(e) if e.errno() == Some(Errno::EEXIST) => {
                nl.del_route(&r)?;
                nl.add_route(&r)?;
            }
            other => other?,
        }
    }
    sysctl::enable_forwarding(nl, has_v4, has_v6)?;

    let cont = configure_container(netns, &mut cnl, ifname, &ips, &r.routes)?;
    if conf.ip_masq {
        done.masq = true;
        let nets: Vec<IpNetwork> = ips.iter().map(|i| i.address).collect();
        masquerade::add(&owner(conf, req), &nets)?;
    }
    // Only DNS the config sets replaces what IPAM said.
    let dns = match conf.net.dns.as_ref().filter(|d| !d.is_empty()) {
        Some(d) => d.clone(),
        None => r.dns,
    };
    let host = nl.link_by_index(host.index)?.unwrap_or(host);
    Ok(CniResult {
        interfaces: vec![interface(&host, None), interface(&cont, Some(netns.path()))],
        ips,
        routes: r.routes,
        dns,
    })
}

/// The container end: settings, addresses without their subnet route, up,
/// then the routes of [`routes::container_routes`].
fn configure_container(
    netns: &Netns,
    nl: &mut Netlink,
    ifname: &str,
    ips: &[IpConfig],
    result_routes: &[cni_types::Route],
) -> Result<Link> {
    let link = nl.require_link(ifname)?;
    if ips.iter().any(|i| i.address.is_ipv6()) {
        let now = link.ipv6;
        netns.run(|| sysctl::prepare_container_iface_v6(ifname, false, now))??;
    }
    // One datagram, carried out in order; on failure the pair is deleted,
    // and whatever was applied goes with it.
    // Neighbours learn the new MAC at once (gratuitous ARP on up).
    let mut requests = vec![RtRequest::set_inet_conf(link.index, |c| c.arp_notify = 1)];
    for ip in ips {
        let mut flags = AddressFlags::Noprefixroute;
        if ip.address.is_ipv6() {
            flags |= AddressFlags::Nodad;
        }
        requests.push(RtRequest::add_address(link.index, ip.address, flags));
    }
    requests.push(RtRequest::set_link_up(link.index, true));
    for r in routes::container_routes(ips, result_routes, link.index)? {
        requests.push(RtRequest::add_route(&r)?);
    }
    nl.execute_all(requests)?;
    Ok(link)
}

fn interface(l: &Link, sandbox: Option<&Path>) -> Interface {
    Interface {
        name: l.name.clone(),
        mac: l.mac_string(),
        mtu: l.mtu,
        sandbox: sandbox.map(|p| p.display().to_string()).unwrap_or_default(),
        ..Default::default()
    }
}

/// DEL goes on past failures (release IPAM, remove masquerade, remove the
/// pair) and reports the first. Masquerade is found by owner, so it goes
/// also when the namespace is gone or `CNI_NETNS` is empty.
fn del(req: &Request) -> Result<()> {
    let conf = PtpConf::load(req)?;
    // As in bridge: the nftables close and RTM_DELLINK each end in a kernel
    // wait; on two threads they overlap.
    let (masq, rest) = std::thread::scope(|s| {
        let masq = s.spawn(|| match conf.ip_masq {
            true => masquerade::del(&owner(&conf, req)).map_err(PtpError::from),
            false => Ok(()),
        });
        let ipam = ipam(&conf, req, Command::Del).map(|_| ());
        // The container's end (its pair and the host's routes through it).
        let link = teardown::delete_in_netns(req.env.netns.as_deref(), &req.env.ifname)
            .map_err(PtpError::from)
            .and_then(|gone| match gone {
                true => Ok(()),
                false => remove_host_veth(req, &conf),
            });
        let masq = masq
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (masq, (ipam, link))
    });
    let (ipam, link) = rest;
    ipam.and(masq).and(link)
}

/// Without a namespace, the previous result names the host end: delete it
/// only if its alias names this attachment (a prevResult may name anyone's).
fn remove_host_veth(req: &Request, conf: &PtpConf) -> Result<()> {
    let Ok(Some(prev)) = req.conf.prev_result() else {
        return Ok(());
    };
    let names = prev
        .interfaces
        .iter()
        .filter(|i| i.sandbox.is_empty())
        .map(|i| i.name.as_str());
    let alias = cni_kernel::link::owner_alias(&owner(conf, req));
    Ok(teardown::delete_owned_veths(names, &alias, |_| true)?)
}

/// The network as ADD left it: the container interface of the previous
/// result (a veth, same MAC) with its addresses and routes, the host end
/// with the gateway addresses and the routes to the container, masquerade
/// for the addresses when asked, and the IPAM reservation.
fn check(req: &Request) -> Result<()> {
    let conf = PtpConf::load(req)?;
    let prev = req
        .conf
        .prev_result()?
        .ok_or_else(|| CniError::invalid_config("CHECK needs prevResult"))?;
    let drift = |m: String| Err(PtpError::Drift(m));
    ipam(&conf, req, Command::Check)?;
    let netns = Netns::open(req.netns()?)?;
    let ifname = &req.env.ifname;
    let sandbox = netns.path().display().to_string();
    let Some(want) = prev
        .interfaces
        .iter()
        .find(|i| &i.name == ifname && i.sandbox == sandbox)
    else {
        return drift(format!(
            "the previous result has no interface {ifname} in {sandbox}"
        ));
    };
    let mut cnl = netns.netlink()?;
    let Some(cont) = cnl.link_by_name(ifname)? else {
        return drift(format!("interface {ifname} is gone"));
    };
    if cont.kind != Some(InfoKind::Veth) {
        return drift(format!("interface {ifname} is not a veth"));
    }
    if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&cont.mac_string()) {
        return drift(format!(
            "interface {ifname} has MAC {}, not {}",
            cont.mac_string(),
            want.mac
        ));
    }
    let have: BTreeSet<IpNetwork> = cnl
        .addresses(Some(cont.index))?
        .into_iter()
        .map(|a| a.addr)
        .collect();
    if let Some(missing) = prev.ips.iter().find(|i| !have.contains(&i.address)) {
        return drift(format!("{ifname} lost address {}", missing.address));
    }
    let routes = cnl.routes()?;
    for r in routes::container_routes(&prev.ips, &prev.routes, cont.index)? {
        if !routes.iter().any(|h| same_route(h, &r)) {
            return drift(format!(
                "route to {} via {:?} is gone from the container",
                r.dst, r.gw
            ));
        }
    }
    // The host end: the container end's peer.
    let mut nl = Netlink::open()?;
    let host = match cont.peer {
        Some(i) => nl.link_by_index(i)?,
        None => None,
    };
    let Some(host) = host else {
        return drift(format!("the host end of {ifname} is gone"));
    };
    let host_have: BTreeSet<IpNetwork> = nl
        .addresses(Some(host.index))?
        .into_iter()
        .map(|a| a.addr)
        .collect();
    for a in routes::host_addresses(&prev.ips)? {
        if !host_have.contains(&a) {
            return drift(format!("{} lost gateway address {a}", host.name));
        }
    }
    for i in &prev.ips {
        if nl.route_oif(i.address.ip())? != Some(host.index) {
            return drift(format!(
                "the host no longer routes {} to {}",
                i.address.ip(),
                host.name
            ));
        }
    }
    if conf.ip_masq {
        let want: BTreeSet<IpAddr> = prev.ips.iter().map(|i| i.address.ip()).collect();
        let got: BTreeSet<IpAddr> = masquerade::installed(&owner(&conf, req))?
            .unwrap_or_default()
            .into_iter()
            .collect();
        if got != want {
            return drift(format!(
                "masquerade covers {got:?}, not the container's {want:?}"
            ));
        }
    }
    Ok(())
}

/// Does the kernel's route `have` install `want` (same destination, gateway,
/// interface and, when `want` names them, source and, for IPv4, scope: the
/// kernel keeps no scope for IPv6 routes)?
fn same_route(have: &RouteSpec, want: &RouteSpec) -> bool {
    have.dst == want.dst
        && have.gw == want.gw
        && have.oif == want.oif
        && want.src.is_none_or(|s| have.src == Some(s))
        && (want.dst.is_ipv6() || want.scope.is_none_or(|s| have.scope == Some(s)))
}

/// Remove masquerade of attachments not in the valid list (whatever the
/// config says now, so turning ipMasq off does not leak), and let the IPAM
/// plugin collect its own. Goes on past failures, reports the first.
fn gc(req: &Request) -> Result<()> {
    let conf = PtpConf::load(req)?;
    let keep = req.gc_attachments()?;
    let mut first: Option<PtpError> = None;
    if let Err(e) = ipam(&conf, req, Command::Gc) {
        first.get_or_insert(e);
    }
    if masquerade::available().is_ok() {
        let owners = masquerade::owners(&conf.net.name);
        if let Err(e) = owner_chain::collect(&conf.net.name, &keep, owners, masquerade::del) {
            first.get_or_insert(e.into());
        }
    }
    first.map_or(Ok(()), Err)
}

/// Ready when the kernel has veths (and nf_tables if masquerading) and the
/// IPAM plugin is ready.
fn status(req: &Request) -> Result<(), CniError> {
    let conf = PtpConf::load(req)?;
    let unavailable = |m: String| CniError::new(Code::NOT_AVAILABLE, m);
    Netlink::open().map_err(|e| unavailable(format!("netlink is not usable: {e}")))?;
    if conf.ip_masq {
        masquerade::available()
            .map_err(|e| unavailable(format!("nf_tables is not usable: {e}")))?;
    }
    ipam(&conf, req, Command::Status).map_err(CniError::from)?;
    Ok(())
}
