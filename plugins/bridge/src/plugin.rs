use std::net::IpAddr;
use std::path::Path;

use cni_kernel::{Link, Netlink, Netns, NftOwner, masquerade, owner_chain, teardown};
use cni_types::{CniError, CniResult, Code, Command, Interface, IpConfig, Plugin, Request, Route};
use ipnetwork::IpNetwork;

use crate::config::{BridgeConf, parse_mac};
use crate::container::{self, Setup};
use crate::error::{BridgeError, Result};
use crate::host;
use crate::spoofcheck;

pub struct Bridge;

impl Plugin for Bridge {
    fn about(&self) -> &str {
        concat!("cni-rs bridge plugin v", env!("CARGO_PKG_VERSION"))
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

fn owner<'a>(conf: &'a BridgeConf, req: &'a Request) -> NftOwner<'a> {
    NftOwner {
        network: &conf.net.name,
        container_id: &req.env.container_id,
        ifname: &req.env.ifname,
    }
}

fn ipam(conf: &BridgeConf, req: &Request, command: Command) -> Result<Option<CniResult>> {
    let ty = &conf
        .net
        .ipam
        .as_ref()
        .expect("layer 3 has ipam")
        .plugin_type;
    Ok(host_local::plugin::delegate_ipam(ty, command, req)?)
}

/// What ADD has done so far, so that a failure can undo exactly that.
#[derive(Default)]
struct Done {
    host_veth: Option<u32>,
    ipam: bool,
    rules: bool,
}

fn add(req: &Request) -> Result<CniResult> {
    let conf = BridgeConf::load(req)?;
    if let Some(ipam) = conf.net.ipam.as_ref().filter(|_| conf.is_layer3()) {
        // Before anything changes: an IPAM plugin that cannot be run.
        cni_types::invoke::delegate_target(&ipam.plugin_type, &req.env.path)?;
    }
    let netns = Netns::open(req.netns()?)?;
    let mut host_nl = Netlink::open()?;
    let mut done = Done::default();
    let outcome = add_steps(req, &conf, &netns, &mut host_nl, &mut done);
    if outcome.is_err() {
        // Undo in reverse. Deleting the host end deletes the container end.
        if done.rules {
            let _ = del_rules(&conf, &owner(&conf, req));
        }
        if done.ipam {
            let _ = ipam(&conf, req, Command::Del);
        }
        if let Some(index) = done.host_veth {
            let _ = host_nl.delete_link(index);
        }
    }
    outcome
}

fn add_steps(
    req: &Request,
    conf: &BridgeConf,
    netns: &Netns,
    nl: &mut Netlink,
    done: &mut Done,
) -> Result<CniResult> {
    let ifname = &req.env.ifname;
    // Into the namespace first: if it is not a network namespace, nothing
    // has been created yet.
    let mut cnl = netns.netlink()?;
    let br = host::ensure_bridge(nl, conf)?;
    if cnl.link_by_name(ifname)?.is_some() {
        return Err(BridgeError::InterfaceExists(ifname.clone()));
    }
    let veth = host::create_veth(nl, netns, conf, ifname)?;
    done.host_veth = Some(veth.index);
    host::attach(nl, conf, &br, &veth, &owner(conf, req))?;

    let mut result = CniResult::default();
    if conf.is_layer3() {
        let r = ipam(conf, req, Command::Add)?.expect("ADD returns a result");
        done.ipam = true;
        if r.ips.is_empty() {
            return Err(BridgeError::NoAddresses);
        }
        result.ips = r
            .ips
            .into_iter()
            .map(|ip| IpConfig {
                interface: Some(2),
                ..ip
            })
            .collect();
        result.routes = r.routes;
        result.dns = r.dns;
        if conf.is_default_gateway {
            add_default_routes(&result.ips, &mut result.routes);
        }
    }
    if let Some(dns) = conf.net.dns.as_ref().filter(|d| !d.is_empty()) {
        result.dns = dns.clone();
    }

    let cont = container::configure(
        netns,
        &mut cnl,
        &Setup {
            ifname,
            ips: &result.ips,
            routes: &result.routes,
            enable_dad: conf.enabledad,
            up: !conf.disable_container_interface,
        },
    )?;
    let spoof = match conf.macspoofchk {
        true => Some(mac_of(&cont).ok_or_else(|| BridgeError::NoMac(cont.name.clone()))?),
        false => None,
    };
    if conf.is_gateway {
        host::ensure_gateways(nl, conf, &br, &result.ips)?;
        host::enable_forwarding(nl, &result.ips)?;
    }
    let masq: Vec<IpNetwork> = match conf.ip_masq {
        true => result.ips.iter().map(|i| i.address).collect(),
        false => Vec::new(),
    };
    if !masq.is_empty() || spoof.is_some() {
        done.rules = true;
        let spoof = spoof.map(|mac| (veth.name.as_str(), mac));
        add_rules(&owner(conf, req), &masq, spoof)?;
    }

    // The bridge's MTU follows its smallest port: read it back. The veth's
    // MAC and MTU were fixed when it was created.
    let br = nl.link_by_index(br.index)?.unwrap_or(br);
    result.interfaces = vec![
        interface(&br, None),
        interface(&veth, None),
        interface(&cont, Some(netns.path())),
    ];
    Ok(result)
}

/// A link's Ethernet address.
fn mac_of(l: &Link) -> Option<[u8; 6]> {
    l.mac.as_deref().and_then(|m| m.try_into().ok())
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

/// isDefaultGateway: a default route via the gateway of the first address of
/// each family, unless the result already has a default route with a gateway.
fn add_default_routes(ips: &[IpConfig], routes: &mut Vec<Route>) {
    for ip in ips {
        let Some(gw) = ip.gateway else { continue };
        let any: IpAddr = if gw.is_ipv4() {
            [0u8; 4].into()
        } else {
            [0u16; 8].into()
        };
        let dst = IpNetwork::new(any, 0).expect("prefix 0");
        // As the reference: a default route with a gateway already in the
        // result (IPAM's own, or the first range set's of this family) stays.
        if !routes.iter().any(|r| r.dst == dst && r.gw.is_some()) {
            routes.push(Route::new(dst, Some(gw)));
        }
    }
}

/// The attachment's masquerade (for `masq`, if any) and spoof check (for the
/// host veth and the container's MAC, if any) in one nftables transaction.
fn add_rules(owner: &NftOwner, masq: &[IpNetwork], spoof: Option<(&str, [u8; 6])>) -> Result<()> {
    let op = "add masquerade and macspoofchk";
    Ok(owner_chain::transaction(op, |s, batch| {
        if !masq.is_empty() {
            masquerade::stage_add(s, batch, owner, masq, op)?;
        }
        if let Some((veth, mac)) = spoof {
            spoofcheck::stage_add(s, batch, owner, veth, mac, op)?;
        }
        Ok(())
    })?)
}

/// Remove the attachment's masquerade and spoof check (those the config
/// asks for) in one nftables transaction.
fn del_rules(conf: &BridgeConf, owner: &NftOwner) -> Result<()> {
    if !conf.ip_masq && !conf.macspoofchk {
        return Ok(());
    }
    let op = "delete masquerade and macspoofchk";
    Ok(owner_chain::transaction(op, |s, batch| {
        if conf.ip_masq {
            masquerade::stage_del(s, batch, owner, op)?;
        }
        if conf.macspoofchk {
            spoofcheck::stage_del(s, batch, owner, op)?;
        }
        Ok(())
    })?)
}

/// DEL goes on past failures (release IPAM, remove masquerade and spoof
/// check, remove the interface) and reports the first. It needs neither the
/// namespace nor the container's addresses to remove the nftables rules.
fn del(req: &Request) -> Result<()> {
    let conf = BridgeConf::load(req)?;
    // The nftables rules go on a thread of their own while this one releases
    // the address and deletes the veth: each ends in a kernel wait (an RCU
    // grace period when the nf_tables socket closes, rcu_barrier in
    // RTM_DELLINK), and side by side those waits overlap instead of adding
    // up. The thread stays in this (the host's) network namespace.
    let (rules, rest) = std::thread::scope(|s| {
        let rules = s.spawn(|| del_rules(&conf, &owner(&conf, req)));
        let ipam = if conf.is_layer3() {
            ipam(&conf, req, Command::Del).map(|_| ())
        } else {
            Ok(())
        };
        let link = teardown::delete_in_netns(req.env.netns.as_deref(), &req.env.ifname)
            .map_err(BridgeError::from)
            .and_then(|gone| {
                if gone {
                    Ok(())
                } else {
                    remove_host_veth(req, &conf)
                }
            });
        let rules = rules
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (rules, (ipam, link))
    });
    // Every step was tried; the first failure, in the order ipam, rules,
    // link, is the answer.
    let (ipam, link) = rest;
    ipam.and(rules).and(link)
}

/// Without a namespace to look in, the previous result still names the host
/// end: delete it (which deletes the pair) if it is a veth on our bridge
/// whose alias names this attachment (a prevResult may name anyone's).
fn remove_host_veth(req: &Request, conf: &BridgeConf) -> Result<()> {
    let Ok(Some(prev)) = req.conf.prev_result() else {
        return Ok(());
    };
    let Some(br) = Netlink::open()?.link_by_name(&conf.bridge)? else {
        return Ok(());
    };
    let names = prev
        .interfaces
        .iter()
        .filter(|i| i.sandbox.is_empty() && i.name != conf.bridge)
        .map(|i| i.name.as_str());
    let alias = cni_kernel::link::owner_alias(&owner(conf, req));
    Ok(teardown::delete_owned_veths(names, &alias, |l| {
        l.controller == Some(br.index)
    })?)
}

/// The network as ADD left it: bridge, veth pair on it, container addresses
/// and routes from the previous result, the masquerade rules, the MAC spoof
/// check, the IPAM reservation.
fn check(req: &Request) -> Result<()> {
    let conf = BridgeConf::load(req)?;
    let prev = req
        .conf
        .prev_result()?
        .ok_or_else(|| CniError::invalid_config("CHECK needs prevResult"))?;
    let drift = |m: String| Err(BridgeError::Drift(m));
    if conf.is_layer3() {
        ipam(&conf, req, Command::Check)?;
    }
    let mut nl = Netlink::open()?;
    let Some(br) = nl.link_by_name(&conf.bridge)? else {
        return drift(format!("bridge {} is gone", conf.bridge));
    };
    let netns = Netns::open(req.netns()?)?;
    let mut cnl = netns.netlink()?;
    let ifname = &req.env.ifname;
    let Some(cont) = cnl.link_by_name(ifname)? else {
        return drift(format!("interface {ifname} is gone"));
    };
    let host_end = match cont.peer {
        Some(i) => nl.link_by_index(i)?,
        None => None,
    };
    match host_end {
        Some(h) if h.controller == Some(br.index) => {}
        Some(h) => {
            return drift(format!(
                "{} is not attached to bridge {}",
                h.name, conf.bridge
            ));
        }
        None => return drift(format!("the host end of {ifname} is gone")),
    }
    if !conf.disable_container_interface && !cont.is_up() {
        return drift(format!("{ifname} is down"));
    }
    let ours = |ip: &&IpConfig| {
        ip.interface
            .and_then(|i| prev.interfaces.get(i))
            .is_some_and(|i| i.name == *ifname && !i.sandbox.is_empty())
    };
    let mine: Vec<IpConfig> = prev.ips.iter().filter(ours).cloned().collect();
    let have: Vec<IpNetwork> = cnl
        .addresses(Some(cont.index))?
        .into_iter()
        .map(|a| a.addr)
        .collect();
    for ip in &mine {
        if !have.contains(&ip.address) {
            return drift(format!("{ifname} lacks address {}", ip.address));
        }
    }
    let routes = cnl.routes()?;
    for r in &prev.routes {
        let want = container::route_spec(r, &mine, cont.index);
        let found = routes.iter().any(|k| {
            k.dst == want.dst && k.gw == want.gw && (k.oif == want.oif || want.gw.is_some())
        });
        if !found {
            return drift(format!("route to {} is gone", r.dst));
        }
    }
    if conf.ip_masq && !mine.is_empty() {
        let installed = masquerade::installed(&owner(&conf, req))?.unwrap_or_default();
        if let Some(ip) = mine.iter().find(|i| !installed.contains(&i.address.ip())) {
            return drift(format!("masquerade rule for {} is gone", ip.address.ip()));
        }
    }
    if conf.macspoofchk {
        check_spoofcheck(req, &conf, &prev)?;
    }
    Ok(())
}

/// The spoof check enforces the container interface's MAC on the host veth,
/// both as the previous result names them.
fn check_spoofcheck(req: &Request, conf: &BridgeConf, prev: &CniResult) -> Result<()> {
    let drift = |m: String| Err(BridgeError::Drift(m));
    let ifname = &req.env.ifname;
    let Some(host_veth) = prev
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty() && i.name != conf.bridge)
    else {
        return drift("prevResult names no host veth".into());
    };
    let Some(mac) = prev
        .interfaces
        .iter()
        .find(|i| i.name == *ifname && !i.sandbox.is_empty())
        .and_then(|i| parse_mac(&i.mac).ok())
    else {
        return drift(format!("prevResult gives no MAC for {ifname}"));
    };
    let mac_str = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    match spoofcheck::installed(&owner(conf, req))? {
        None => drift(format!("MAC spoof check for {} is gone", host_veth.name)),
        Some((h, m)) if h != host_veth.name || m != mac => drift(format!(
            "MAC spoof check enforces {} on {h}, not {} on {}",
            mac_str(m),
            mac_str(mac),
            host_veth.name
        )),
        Some(_) => Ok(()),
    }
}

/// Remove masquerade rules and spoof checks of attachments not in the valid
/// list (whatever the config says now, so turning an option off does not
/// leak), and let the IPAM plugin collect its own. Goes on past failures,
/// reports the first.
fn gc(req: &Request) -> Result<()> {
    let conf = BridgeConf::load(req)?;
    let keep = req.gc_attachments()?;
    let mut first: Option<BridgeError> = None;
    if conf.is_layer3()
        && let Err(e) = ipam(&conf, req, Command::Gc)
    {
        first.get_or_insert(e);
    }
    if masquerade::available().is_ok() {
        let owners = masquerade::owners(&conf.net.name);
        if let Err(e) = owner_chain::collect(&conf.net.name, &keep, owners, masquerade::del) {
            first.get_or_insert(e.into());
        }
    }
    if spoofcheck::available().is_ok() {
        let owners = spoofcheck::owners(&conf.net.name);
        if let Err(e) = owner_chain::collect(&conf.net.name, &keep, owners, spoofcheck::del) {
            first.get_or_insert(e.into());
        }
    }
    first.map_or(Ok(()), Err)
}

/// Ready when the kernel has bridges (and nf_tables if masquerading) and the
/// IPAM plugin is ready.
fn status(req: &Request) -> Result<(), CniError> {
    let conf = BridgeConf::load(req)?;
    let unavailable = |m: String| CniError::new(Code::NOT_AVAILABLE, m);
    let bridge_exists = Netlink::open()
        .and_then(|mut nl| nl.link_by_name(&conf.bridge))
        .map_err(|e| unavailable(format!("netlink is not usable: {e}")))?
        .is_some_and(|l| l.kind == Some(cni_kernel::packet_route::link::InfoKind::Bridge));
    if !bridge_exists && !Path::new("/sys/module/bridge").exists() {
        return Err(unavailable("the kernel has no bridge support".into()));
    }
    if conf.ip_masq {
        masquerade::available()
            .map_err(|e| unavailable(format!("nf_tables is not usable: {e}")))?;
    }
    if conf.is_layer3() {
        ipam(&conf, req, Command::Status).map_err(CniError::from)?;
    }
    Ok(())
}
