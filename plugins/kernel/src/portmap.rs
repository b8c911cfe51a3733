//! Host port mappings (the portmap plugin): connections to a port of the
//! host are sent on to a container's address and port (DNAT), in our own
//! nftables table `inet cni-rs`.
//!
//! Once per namespace (one batch, like every kind in `nft.rs`):
//! - three verdict maps keyed by host port, one per protocol, `pm-tcp`,
//!   `pm-udp`, `pm-sctp` (`type inet_service : verdict`);
//! - two nat base chains, `portmap-pre` (hook prerouting, priority -100,
//!   dstnat: traffic from elsewhere) and `portmap-out` (hook output,
//!   priority -100: traffic of the host itself), each with one rule per
//!   protocol, `fib daddr type local tcp dport vmap @pm-tcp`. Only traffic
//!   addressed to a local address of the host is looked up: a connection
//!   forwarded through the host to another machine's port is never
//!   hijacked, whatever the port;
//! - the nat base chain `portmap-masq` (hook postrouting, priority 100,
//!   srcnat) with `meta mark & 0x2000 == 0x2000 masquerade`: the owner
//!   chains mark ([`MASQ_MARK`], the reference's `markMasqBit` 13) the
//!   connections whose source must be rewritten.
//!
//! Per attachment (owner = network name + container id + ifname), a regular
//! chain `pm/<network>/<container id>/<ifname>` and one element per (protocol,
//! host port) in the protocol's map, `<host port> : jump pm/...`. The chain
//! holds, per mapping, in the family of the container address (conditions
//! of that family first, then the protocol, the port, and the host address
//! when the mapping has one), each rule with a comment naming the owner:
//! - with `snat`, marking rules for hairpin traffic (`ip saddr <container
//!   subnet>`: a container reaching a mapping, possibly its own, through
//!   the host) and, for IPv4, traffic from the host's own 127.0.0.0/8
//!   (which needs `route_localnet` on the interface towards the container,
//!   the plugin's business); with `masq_all` one rule marking every source
//!   instead;
//! - `dnat ip to <container ip>:<container port>` (`dnat ip6 to [..]:..`).
//!
//! The protocol and port matches repeat the map's key: they are how DEL and
//! CHECK recover the owner's keys from its own chain, so DEL needs neither
//! the runtime's `portMappings` nor the container's namespace.
//!
//! One owner per (protocol, host port): the port is the map's key. A later
//! ADD of the same port by another owner takes the element over (as
//! masquerade does with a reused address): the newest mapping wins, the
//! older owner's rules stay in its chain but are no longer reached (and no
//! longer reported by [`installed`]), and the older owner's DEL leaves the
//! element of the newer one alone. Two owners mapping the same port on two
//! different host addresses therefore cannot coexist: the second takes the
//! port over on every address.
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there): run it inside [`crate::Netns::run`] to act
//! elsewhere.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Immediate, InterfaceName, Ipv4HeaderField, Ipv6HeaderField, Masquerade,
    Meta, Nat, NatType, NetworkHeaderField, Payload, Register, TcpHeaderField,
    TransportHeaderField,
};
use nftnl::{Batch, Chain, ChainType, Hook, MsgType, ProtoFamily, Rule};
use nix::libc;

use crate::error::{KernelError, Result};
use crate::nfnetlink::Attrs;
use crate::nft::{self, BaseChain, ChainKind, Expr, MapKey, MapSpec, NFT_CMP_EQ};
use crate::nft_ffi::{FibDaddrType, INET_SERVICE, RTN_LOCAL, VerdictLookup};

pub use crate::nft::NftOwner;

/// The transport protocol of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    const ALL: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Sctp];

    /// The IP protocol number (`meta l4proto`).
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => libc::IPPROTO_TCP as u8,
            Proto::Udp => libc::IPPROTO_UDP as u8,
            Proto::Sctp => libc::IPPROTO_SCTP as u8,
        }
    }

    fn from_number(n: u8) -> Option<Proto> {
        Proto::ALL.into_iter().find(|p| p.number() == n)
    }

    /// The map of this protocol's host ports.
    fn map(self) -> &'static MapSpec {
        match self {
            Proto::Tcp => &PM_TCP,
            Proto::Udp => &PM_UDP,
            Proto::Sctp => &PM_SCTP,
        }
    }
}

/// One host port sent on to a container's address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub proto: Proto,
    pub host_port: u16,
    /// Only connections to this address of the host; `None` (and 0.0.0.0 or
    /// `::`, which [`installed`] reports as `None`) means any local address.
    pub host_ip: Option<IpAddr>,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

/// One extra match condition (from conditionsV4/V6); `negate` means `!=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    Saddr {
        negate: bool,
        net: IpNetwork,
    },
    Daddr {
        negate: bool,
        net: IpNetwork,
    },
    /// An interface name; a trailing `*` matches every name starting with
    /// what precedes it (as nft's `iifname "eth*"`).
    Iifname {
        negate: bool,
        name: String,
    },
    Oifname {
        negate: bool,
        name: String,
    },
    /// `meta mark & mask == value`.
    Mark {
        negate: bool,
        value: u32,
        mask: u32,
    },
}

/// The packet mark that sends a connection to masquerade (the reference's
/// default markMasqBit 13).
pub const MASQ_MARK: u32 = 0x2000;

/// What [`add`] installs for one owner.
pub struct Setup<'a> {
    pub owner: NftOwner<'a>,
    pub mappings: &'a [Mapping],
    /// Masquerade hairpin and localhost traffic (the reference's `snat`,
    /// default true).
    pub snat: bool,
    /// Masquerade every source (`masqAll`); only with `snat`, as the
    /// reference.
    pub masq_all: bool,
    /// Container subnets whose traffic to a mapping is hairpin and must be
    /// masqueraded.
    pub hairpin_from: &'a [IpNetwork],
    pub conditions_v4: &'a [Cond],
    pub conditions_v6: &'a [Cond],
}

const PM_TCP: MapSpec = MapSpec {
    name: "pm-tcp",
    key: INET_SERVICE,
    id: 1,
};
const PM_UDP: MapSpec = MapSpec {
    name: "pm-udp",
    key: INET_SERVICE,
    id: 2,
};
const PM_SCTP: MapSpec = MapSpec {
    name: "pm-sctp",
    key: INET_SERVICE,
    id: 3,
};

/// dstnat and srcnat, as nft names the usual nat priorities.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;

/// The base chains `portmap-pre`, `portmap-out` and `portmap-masq` in
/// `inet cni-rs`, dispatching to the regular chains
/// `pm/<network>/<container id>/<ifname>`.
const KIND: ChainKind = ChainKind {
    family: ProtoFamily::Inet,
    prefix: "pm",
    what: "portmap",
    bases: &[
        BaseChain {
            name: "portmap-pre",
            chain_type: ChainType::Nat,
            hook: Hook::PreRouting,
            priority: DSTNAT,
            rules: dispatch,
        },
        BaseChain {
            name: "portmap-out",
            chain_type: ChainType::Nat,
            hook: Hook::Out,
            priority: DSTNAT,
            rules: dispatch,
        },
        BaseChain {
            name: "portmap-masq",
            chain_type: ChainType::Nat,
            hook: Hook::PostRouting,
            priority: SRCNAT,
            rules: masquerade_marked,
        },
    ],
    maps: &[PM_TCP, PM_UDP, PM_SCTP],
    rule_key: |rule| {
        let p = parse(rule);
        Some(key(p.proto?, p.port?))
    },
};

// include/uapi/linux/netfilter/nf_tables.h
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_NAT_DNAT: u32 = 1;
/// Offset and length of the destination port (TCP, UDP and SCTP alike).
const DPORT: (u32, u32) = (2, 2);
/// Offsets and lengths of the destination address in the IP headers.
const IPV4_DADDR: (u32, u32) = (16, 4);
const IPV6_DADDR: (u32, u32) = (24, 16);

/// `th dport`: after a `meta l4proto` match, the same two bytes for the
/// three protocols.
fn dport() -> Payload {
    Payload::Transport(TransportHeaderField::Tcp(TcpHeaderField::Dport))
}

/// The rules of `portmap-pre` and `portmap-out`, one per protocol:
/// `fib daddr type local meta l4proto <proto> th dport vmap @pm-<proto>`.
fn dispatch(batch: &mut Batch, chain: &Chain) {
    for proto in Proto::ALL {
        let map = proto.map();
        let name = nft::cstring(map.name);
        let mut rule = Rule::new(chain);
        rule.add_expr(&FibDaddrType);
        rule.add_expr(&Cmp::new(CmpOp::Eq, RTN_LOCAL));
        rule.add_expr(&Meta::L4Proto);
        rule.add_expr(&Cmp::new(CmpOp::Eq, proto.number()));
        rule.add_expr(&dport());
        rule.add_expr(&VerdictLookup {
            map: &name,
            map_id: map.id,
        });
        batch.add(&rule, MsgType::Add);
    }
}

/// The rule of `portmap-masq`: `meta mark & 0x2000 == 0x2000 masquerade`.
fn masquerade_marked(batch: &mut Batch, chain: &Chain) {
    let mut rule = Rule::new(chain);
    rule.add_expr(&Meta::Mark { set: false });
    rule.add_expr(&Bitwise::new(MASQ_MARK, 0u32));
    rule.add_expr(&Cmp::new(CmpOp::Eq, MASQ_MARK));
    rule.add_expr(&Masquerade);
    batch.add(&rule, MsgType::Add);
}

/// A host port's key: in the map of its protocol, in network byte order.
fn key(proto: Proto, port: u16) -> MapKey {
    MapKey {
        map: proto.map().name,
        key: port.to_be_bytes().to_vec(),
    }
}

/// The host address a mapping matches, if it matches one (0.0.0.0 and `::`
/// mean any).
fn host_ip(m: &Mapping) -> Option<IpAddr> {
    m.host_ip.filter(|ip| !ip.is_unspecified())
}

fn invalid(detail: String) -> KernelError {
    KernelError::InvalidPortMapping(detail)
}

/// Refuse what cannot be written as a rule: a condition of the wrong family
/// or with an unusable interface name, a port 0. Mappings whose host address
/// is of the other family than the container's are dropped, and repeated
/// ones kept once.
fn plan<'m>(s: &Setup<'m>) -> Result<Vec<&'m Mapping>> {
    for (v4, conds) in [(true, s.conditions_v4), (false, s.conditions_v6)] {
        for c in conds {
            match c {
                Cond::Saddr { net, .. } | Cond::Daddr { net, .. } if net.is_ipv4() != v4 => {
                    let list = if v4 { "conditionsV4" } else { "conditionsV6" };
                    return Err(invalid(format!("{net} in {list}")));
                }
                Cond::Iifname { name, .. } | Cond::Oifname { name, .. } => {
                    ifname_match(name)?;
                }
                _ => {}
            }
        }
    }
    let mut plan: Vec<&Mapping> = Vec::new();
    for m in s.mappings {
        if m.host_port == 0 || m.container_port == 0 {
            return Err(invalid(format!(
                "port 0 in {:?} {} -> {}:{}",
                m.proto, m.host_port, m.container_ip, m.container_port
            )));
        }
        if m.host_ip
            .is_some_and(|h| h.is_ipv4() != m.container_ip.is_ipv4())
        {
            continue;
        }
        if !plan.contains(&m) {
            plan.push(m);
        }
    }
    Ok(plan)
}

/// What an interface name condition compares with: the name NUL-padded to
/// IFNAMSIZ (exact), or for `name*` the bytes of `name` (a prefix).
fn ifname_match(name: &str) -> Result<InterfaceName> {
    const IFNAMSIZ: usize = 16;
    let bad = || KernelError::InvalidIfname(name.to_owned());
    if name.contains('\0') || name.len() >= IFNAMSIZ {
        return Err(bad());
    }
    match name.strip_suffix('*') {
        Some("") => Err(bad()),
        Some(prefix) => Ok(InterfaceName::StartingWith(nft::cstring(prefix))),
        None if name.is_empty() => Err(bad()),
        None => Ok(InterfaceName::Exact(nft::cstring(name))),
    }
}

fn op(negate: bool) -> CmpOp {
    if negate { CmpOp::Neq } else { CmpOp::Eq }
}

/// `<field> [!=] <net>`: a load, a mask unless the prefix is full, and a
/// compare.
fn match_net(rule: &mut Rule, field: NetworkHeaderField, net: &IpNetwork, negate: bool) {
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let (addr, mask) = (octets(net.network()), octets(net.mask()));
    rule.add_expr(&Payload::Network(field));
    if mask.iter().any(|b| *b != 0xff) {
        rule.add_expr(&Bitwise::new(&mask[..], &vec![0u8; mask.len()][..]));
    }
    rule.add_expr(&Cmp::new(op(negate), &addr[..]));
}

fn saddr(v4: bool) -> NetworkHeaderField {
    if v4 {
        NetworkHeaderField::Ipv4(Ipv4HeaderField::Saddr)
    } else {
        NetworkHeaderField::Ipv6(Ipv6HeaderField::Saddr)
    }
}

fn daddr(v4: bool) -> NetworkHeaderField {
    if v4 {
        NetworkHeaderField::Ipv4(Ipv4HeaderField::Daddr)
    } else {
        NetworkHeaderField::Ipv6(Ipv6HeaderField::Daddr)
    }
}

/// One condition (checked by [`plan`]).
fn condition(rule: &mut Rule, c: &Cond, v4: bool) {
    match c {
        Cond::Saddr { negate, net } => match_net(rule, saddr(v4), net, *negate),
        Cond::Daddr { negate, net } => match_net(rule, daddr(v4), net, *negate),
        Cond::Iifname { negate, name } | Cond::Oifname { negate, name } => {
            let Ok(name) = ifname_match(name) else { return };
            let padded;
            let value: &[u8] = match &name {
                InterfaceName::Exact(n) => {
                    let mut p = [0u8; 16];
                    p[..n.as_bytes().len()].copy_from_slice(n.as_bytes());
                    padded = p;
                    &padded[..]
                }
                InterfaceName::StartingWith(n) => n.as_bytes(),
            };
            let meta = match c {
                Cond::Iifname { .. } => Meta::IifName,
                _ => Meta::OifName,
            };
            rule.add_expr(&meta);
            rule.add_expr(&Cmp::new(op(*negate), value));
        }
        Cond::Mark {
            negate,
            value,
            mask,
        } => {
            rule.add_expr(&Meta::Mark { set: false });
            if *mask != u32::MAX {
                rule.add_expr(&Bitwise::new(*mask, 0u32));
            }
            rule.add_expr(&Cmp::new(op(*negate), value & mask));
        }
    }
}

/// What every rule of a mapping starts with: the family, the conditions of
/// that family, the protocol and host port (the map's key, repeated), and
/// the host address if the mapping has one.
fn head<'a>(chain: &'a Chain<'a>, m: &Mapping, conds: &[Cond]) -> Rule<'a> {
    let v4 = m.container_ip.is_ipv4();
    let nfproto = if v4 {
        libc::NFPROTO_IPV4
    } else {
        libc::NFPROTO_IPV6
    };
    let mut rule = Rule::new(chain);
    rule.add_expr(&Meta::NfProto);
    rule.add_expr(&Cmp::new(CmpOp::Eq, nfproto as u8));
    for c in conds {
        condition(&mut rule, c, v4);
    }
    rule.add_expr(&Meta::L4Proto);
    rule.add_expr(&Cmp::new(CmpOp::Eq, m.proto.number()));
    rule.add_expr(&dport());
    rule.add_expr(&Cmp::new(CmpOp::Eq, &m.host_port.to_be_bytes()[..]));
    if let Some(ip) = host_ip(m) {
        rule.add_expr(&Payload::Network(daddr(v4)));
        rule.add_expr(&Cmp::new(CmpOp::Eq, ip));
    }
    rule
}

/// `meta mark set mark | 0x2000`, then the comment.
fn mark<'a>(mut rule: Rule<'a>, comment: &str) -> Rule<'a> {
    rule.add_expr(&Meta::Mark { set: false });
    rule.add_expr(&Bitwise::new(!MASQ_MARK, MASQ_MARK));
    rule.add_expr(&Meta::Mark { set: true });
    nft::set_comment(&mut rule, comment);
    rule
}

/// The rules of one mapping, in order: the marking rules, then the DNAT
/// (which ends the chain for the packet).
fn mapping_rules<'a>(chain: &'a Chain<'a>, s: &Setup, m: &Mapping, comment: &str) -> Vec<Rule<'a>> {
    let v4 = m.container_ip.is_ipv4();
    let conds = if v4 { s.conditions_v4 } else { s.conditions_v6 };
    let mut rules = Vec::new();
    if s.snat {
        if s.masq_all {
            rules.push(mark(head(chain, m, conds), comment));
        } else {
            let localhost = IpNetwork::new(Ipv4Addr::LOCALHOST.into(), 8).expect("a valid prefix");
            let sources = s
                .hairpin_from
                .iter()
                .chain(v4.then_some(&localhost))
                .filter(|n| n.is_ipv4() == v4);
            for net in sources {
                let mut rule = head(chain, m, conds);
                match_net(&mut rule, saddr(v4), net, false);
                rules.push(mark(rule, comment));
            }
        }
    }
    let mut rule = head(chain, m, conds);
    let family = match m.container_ip {
        IpAddr::V4(ip) => {
            rule.add_expr(&Immediate::new(ip.octets(), Register::Reg1));
            ProtoFamily::Ipv4
        }
        IpAddr::V6(ip) => {
            rule.add_expr(&Immediate::new(ip.octets(), Register::Reg1));
            ProtoFamily::Ipv6
        }
    };
    rule.add_expr(&Immediate::new(
        m.container_port.to_be_bytes(),
        Register::Reg2,
    ));
    rule.add_expr(&Nat {
        nat_type: NatType::DNat,
        family,
        ip_register: Register::Reg1,
        port_register: Some(Register::Reg2),
    });
    nft::set_comment(&mut rule, comment);
    rules.push(rule);
    rules
}

/// Install or replace the owner's mappings in one transaction (after
/// setting up the maps and base chains once per namespace): create the
/// owner's chain if missing, flush it, add the rules of each mapping, map
/// each (protocol, host port) to the chain (taking it over from another
/// owner), and drop the owner's elements of ports it no longer maps. With
/// no mapping left (none given, or none of a usable family) this is
/// [`del`].
pub fn add(s: &Setup) -> Result<(), KernelError> {
    let mappings = plan(s)?;
    if mappings.is_empty() {
        return del(&s.owner);
    }
    let keys: Vec<MapKey> = mappings.iter().map(|m| key(m.proto, m.host_port)).collect();
    KIND.replace(&s.owner, "add portmap", &keys, |batch, chain, comment| {
        for m in &mappings {
            for rule in mapping_rules(chain, s, m, comment) {
                batch.add(&rule, MsgType::Add);
            }
        }
    })
}

/// Remove the owner's map elements and chain in one transaction; the keys
/// are recovered from the owner's chain, so no mapping needs to be known.
/// Elements of ports now mapped to another owner's chain are left alone.
/// Nothing to remove (no chain, no table) is success.
pub fn del(owner: &NftOwner) -> Result<(), KernelError> {
    KIND.delete(owner, "delete portmap")
}

/// The mappings the owner's chain installs and that its map elements still
/// dispatch to (while the base chains exist), in rule order, read back from
/// the kernel; `None` if the owner has no chain.
pub fn installed(owner: &NftOwner) -> Result<Option<Vec<Mapping>>, KernelError> {
    let rules = KIND.rules(owner, "list portmap")?;
    Ok(rules.map(|rules| rules.iter().filter_map(|r| mapping_of(r.attrs())).collect()))
}

/// Every `(container id, ifname)` with a portmap chain for `network` (read
/// from the chain names alone).
pub fn owners(network: &str) -> Result<Vec<(String, String)>, KernelError> {
    KIND.owners(network, "list portmap chains")
}

/// Ok when nf_tables answers in this namespace (a table dump succeeds).
pub fn available() -> Result<(), KernelError> {
    KIND.available("list tables")
}

/// What a rule of an owner chain says, as far as we read it: the protocol
/// (the first `meta l4proto ==`), the host port (a `th dport ==` after it),
/// the host address (an exact `ip daddr ==` after the port: conditions come
/// before the protocol) and the DNAT target (the immediates loaded into the
/// registers a `dnat` names).
#[derive(Debug, Default, PartialEq, Eq)]
struct Parsed {
    proto: Option<Proto>,
    port: Option<u16>,
    daddr: Option<IpAddr>,
    dnat: Option<(IpAddr, u16)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Meta(u32),
    Payload(u32, (u32, u32)),
}

fn parse(rule: Attrs) -> Parsed {
    let mut p = Parsed::default();
    let mut loaded = None;
    let mut regs: Vec<(u32, &[u8])> = Vec::new();
    for e in nft::exprs(rule) {
        match e {
            Expr::Meta { key } => {
                loaded = Some(Load::Meta(key));
                continue;
            }
            Expr::Payload { base, offset, len } => {
                loaded = Some(Load::Payload(base, (offset, len)));
                continue;
            }
            Expr::Cmp {
                op: NFT_CMP_EQ,
                value,
            } => match loaded {
                Some(Load::Meta(NFT_META_L4PROTO)) if p.proto.is_none() => {
                    p.proto = <[u8; 1]>::try_from(value)
                        .ok()
                        .and_then(|[n]| Proto::from_number(n));
                }
                Some(Load::Payload(NFT_PAYLOAD_TRANSPORT_HEADER, DPORT))
                    if p.proto.is_some() && p.port.is_none() =>
                {
                    p.port = <[u8; 2]>::try_from(value).ok().map(u16::from_be_bytes);
                }
                Some(Load::Payload(NFT_PAYLOAD_NETWORK_HEADER, field))
                    if p.port.is_some() && p.daddr.is_none() =>
                {
                    p.daddr = match field {
                        IPV4_DADDR => <[u8; 4]>::try_from(value).ok().map(IpAddr::from),
                        IPV6_DADDR => <[u8; 16]>::try_from(value).ok().map(IpAddr::from),
                        _ => None,
                    };
                }
                _ => {}
            },
            Expr::Immediate { dreg, value } => regs.push((dreg, value)),
            Expr::Nat {
                nat_type: NFT_NAT_DNAT,
                family,
                addr_reg: Some(addr_reg),
                port_reg: Some(port_reg),
            } => {
                let reg = |r: u32| regs.iter().rev().find(|(d, _)| *d == r).map(|(_, v)| *v);
                let addr = reg(addr_reg).and_then(|v| match family as i32 {
                    libc::NFPROTO_IPV4 => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
                    libc::NFPROTO_IPV6 => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
                    _ => None,
                });
                let port = reg(port_reg)
                    .and_then(|v| <[u8; 2]>::try_from(v).ok())
                    .map(u16::from_be_bytes);
                p.dnat = addr.zip(port);
            }
            _ => {}
        }
        loaded = None;
    }
    p
}

/// The mapping a DNAT rule of an owner chain installs.
fn mapping_of(rule: Attrs) -> Option<Mapping> {
    let p = parse(rule);
    let (container_ip, container_port) = p.dnat?;
    Some(Mapping {
        proto: p.proto?,
        host_port: p.port?,
        host_ip: p.daddr,
        container_ip,
        container_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::test_util::{cmp, expr, meta, nla, payload, rule_attrs, written};
    use crate::nft::{NFT_CMP_NEQ, TABLE, cstring};
    use nftnl::Table;

    const CHAIN: &str = "pm/n/c/eth0";
    const NFT_META_NFPROTO: u32 = 15;

    /// The `meta nfproto` a rule matches: unused by the readers, which tell the
    /// family from the addresses, but kept for tests of the rules' shape.
    fn nfproto_of(rule: Attrs) -> Option<u8> {
        let mut loaded = None;
        for e in nft::exprs(rule) {
            match e {
                Expr::Meta { key } => loaded = Some(key),
                Expr::Cmp { value: [n], .. } if loaded == Some(NFT_META_NFPROTO) => {
                    return Some(*n);
                }
                _ => loaded = None,
            }
        }
        None
    }

    fn owner<'a>(network: &'a str, cid: &'a str, ifname: &'a str) -> NftOwner<'a> {
        NftOwner {
            network,
            container_id: cid,
            ifname,
        }
    }

    fn tcp(host_port: u16, host_ip: Option<&str>, to: &str, port: u16) -> Mapping {
        Mapping {
            proto: Proto::Tcp,
            host_port,
            host_ip: host_ip.map(|h| h.parse().unwrap()),
            container_ip: to.parse().unwrap(),
            container_port: port,
        }
    }

    fn setup<'a>(mappings: &'a [Mapping], hairpin: &'a [IpNetwork], v4: &'a [Cond]) -> Setup<'a> {
        Setup {
            owner: owner("n", "c", "eth0"),
            mappings,
            snat: true,
            masq_all: false,
            hairpin_from: hairpin,
            conditions_v4: v4,
            conditions_v6: &[],
        }
    }

    #[test]
    fn keys_are_ports_in_the_map_of_their_protocol() {
        let k = key(Proto::Udp, 8080);
        assert_eq!((k.map, k.key.as_slice()), ("pm-udp", &[0x1f, 0x90][..]));
        assert_eq!(key(Proto::Tcp, 1).map, "pm-tcp");
        assert_eq!(key(Proto::Sctp, 1).map, "pm-sctp");
        for p in Proto::ALL {
            assert_eq!(Proto::from_number(p.number()), Some(p));
        }
        assert_eq!(Proto::Sctp.number(), 132);
        assert_eq!(Proto::from_number(1), None);
        let ids: Vec<u32> = KIND.maps.iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(KIND.maps.iter().all(|m| m.key.len == 2));
    }

    #[test]
    fn names_and_comments() {
        let o = owner("net1", "ctr-1", "eth0");
        assert_eq!(KIND.chain_name(&o).unwrap(), "pm/net1/ctr-1/eth0");
        assert_eq!(KIND.comment(&o), "cni-rs portmap: net1 ctr-1 eth0");
        for base in KIND.bases {
            assert_eq!(KIND.parse_chain_name(base.name, "net1"), None);
        }
        assert_eq!(
            KIND.parse_chain_name("masq/net1/ctr-1/eth0", "net1"),
            None,
            "another kind's chain"
        );
    }

    #[test]
    fn the_plan_drops_other_families_and_repeats_and_refuses_the_unwritable() {
        let ms = [
            tcp(80, None, "10.1.0.5", 8080),
            tcp(80, Some("fd00::1"), "10.1.0.5", 8080),
            tcp(80, None, "10.1.0.5", 8080),
            tcp(80, Some("10.0.0.1"), "fd00:1::5", 8080),
            tcp(80, None, "fd00:1::5", 8080),
        ];
        let s = setup(&ms, &[], &[]);
        assert_eq!(plan(&s).unwrap(), [&ms[0], &ms[4]]);

        let zero = [tcp(0, None, "10.1.0.5", 80)];
        let e = plan(&setup(&zero, &[], &[])).unwrap_err();
        assert!(matches!(e, KernelError::InvalidPortMapping(_)), "{e:?}");
        assert_eq!(
            cni_types::CniError::from(e).code,
            cni_types::Code::INVALID_CONFIG
        );
        let zero = [tcp(80, None, "10.1.0.5", 0)];
        assert!(plan(&setup(&zero, &[], &[])).is_err());

        let v6_in_v4 = [Cond::Saddr {
            negate: false,
            net: "fd00::/8".parse().unwrap(),
        }];
        let e = plan(&setup(&ms, &[], &v6_in_v4)).unwrap_err();
        assert!(e.to_string().contains("conditionsV4"), "{e}");
        for bad in ["", "*", "0123456789abcdef", "a\0b"] {
            let c = [Cond::Iifname {
                negate: false,
                name: bad.into(),
            }];
            let e = plan(&setup(&ms, &[], &c)).unwrap_err();
            assert!(matches!(e, KernelError::InvalidIfname(_)), "{bad:?}: {e:?}");
        }
        assert!(matches!(
            ifname_match("eth*").unwrap(),
            InterfaceName::StartingWith(n) if n.as_bytes() == b"eth"
        ));
        assert!(matches!(
            ifname_match("eth0").unwrap(),
            InterfaceName::Exact(n) if n.as_bytes() == b"eth0"
        ));
    }

    /// The rules of a setup as the kernel would dump them.
    fn built(s: &Setup) -> Vec<Vec<u8>> {
        let table = Table::new(cstring(TABLE), ProtoFamily::Inet);
        let chain = Chain::new(cstring(CHAIN), &table);
        plan(s)
            .unwrap()
            .into_iter()
            .flat_map(|m| mapping_rules(&chain, s, m, "cni-rs portmap: n c eth0"))
            .map(|r| written(&r, CHAIN))
            .collect()
    }

    /// What nftnl writes for our rules is what the parser reads back (the
    /// kernel dumps rules with the same attributes): every rule names its
    /// key, DNAT rules name their mapping, conditions are not mistaken for
    /// the host address.
    #[test]
    fn rules_built_with_nftnl_parse_back() {
        let ms = [
            tcp(8080, None, "10.66.0.2", 80),
            tcp(8081, Some("198.51.100.1"), "10.66.0.2", 80),
            Mapping {
                proto: Proto::Udp,
                ..tcp(53, Some("0.0.0.0"), "10.66.0.2", 5353)
            },
            Mapping {
                proto: Proto::Sctp,
                ..tcp(9000, Some("fd99::1"), "fd66::2", 9)
            },
        ];
        let hairpin: Vec<IpNetwork> = ["10.66.0.0/24", "fd66::/64"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let conds = [
            Cond::Daddr {
                negate: false,
                net: "192.0.2.9/32".parse().unwrap(),
            },
            Cond::Saddr {
                negate: true,
                net: "203.0.113.0/24".parse().unwrap(),
            },
            Cond::Iifname {
                negate: false,
                name: "eth*".into(),
            },
            Cond::Oifname {
                negate: true,
                name: "cni0".into(),
            },
            Cond::Mark {
                negate: false,
                value: 0x10,
                mask: 0xf0,
            },
        ];
        let s = setup(&ms, &hairpin, &conds);
        let rules = built(&s);
        // Per IPv4 mapping: hairpin, localhost, DNAT; for IPv6: hairpin, DNAT.
        assert_eq!(rules.len(), 3 * 3 + 2);
        let keys: Vec<MapKey> = rules
            .iter()
            .map(|r| (KIND.rule_key)(Attrs(r)).unwrap())
            .collect();
        let expected: Vec<MapKey> = [
            (Proto::Tcp, 8080, 3),
            (Proto::Tcp, 8081, 3),
            (Proto::Udp, 53, 3),
            (Proto::Sctp, 9000, 2),
        ]
        .iter()
        .flat_map(|&(p, port, n)| std::iter::repeat_n(key(p, port), n))
        .collect();
        assert_eq!(keys, expected);
        let mappings: Vec<Mapping> = rules.iter().filter_map(|r| mapping_of(Attrs(r))).collect();
        let mut back = ms.to_vec();
        back[2].host_ip = None; // 0.0.0.0 is any address
        assert_eq!(mappings, back);
        let families: Vec<u8> = rules
            .iter()
            .map(|r| nfproto_of(Attrs(r)).unwrap())
            .collect();
        assert_eq!(&families[..9], &[libc::NFPROTO_IPV4 as u8; 9]);
        assert_eq!(&families[9..], &[libc::NFPROTO_IPV6 as u8; 2]);
        // The marking rules are no mapping, but name the host address.
        let p = parse(Attrs(&rules[3]));
        assert_eq!(p.daddr, Some("198.51.100.1".parse().unwrap()));
        assert_eq!(p.dnat, None);
    }

    #[test]
    fn snat_and_masq_all_choose_the_marking_rules() {
        let ms = [
            tcp(8080, None, "10.66.0.2", 80),
            tcp(8080, None, "fd66::2", 80),
        ];
        let hairpin: Vec<IpNetwork> = vec!["10.66.0.0/24".parse().unwrap()];
        let mut s = setup(&ms, &hairpin, &[]);
        // v4: hairpin + localhost + DNAT; v6: no hairpin subnet, DNAT.
        assert_eq!(built(&s).len(), 4);
        s.masq_all = true;
        assert_eq!(built(&s).len(), 4, "one marking rule per mapping");
        s.snat = false;
        assert_eq!(built(&s).len(), 2, "masqAll needs snat");
    }

    fn immediate(dreg: u32, value: &[u8]) -> Vec<u8> {
        expr(
            "immediate",
            &[nla(1, &dreg.to_be_bytes()), nla(2 | 0x8000, &nla(1, value))],
        )
    }

    fn dnat(family: u8, addr_reg: u32, port_reg: u32) -> Vec<u8> {
        expr(
            "nat",
            &[
                nla(1, &NFT_NAT_DNAT.to_be_bytes()),
                nla(2, &u32::from(family).to_be_bytes()),
                nla(3, &addr_reg.to_be_bytes()),
                nla(4, &addr_reg.to_be_bytes()),
                nla(5, &port_reg.to_be_bytes()),
                nla(6, &port_reg.to_be_bytes()),
                nla(7, &3u32.to_be_bytes()),
            ],
        )
    }

    #[test]
    fn mappings_are_read_from_kernel_shaped_rules() {
        let v4 = libc::NFPROTO_IPV4 as u8;
        let rule = rule_attrs(
            CHAIN,
            &[
                meta(NFT_META_NFPROTO),
                cmp(NFT_CMP_EQ, &[v4]),
                meta(NFT_META_L4PROTO),
                cmp(NFT_CMP_EQ, &[17]),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
                cmp(NFT_CMP_EQ, &[0x1f, 0x90]),
                payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
                cmp(NFT_CMP_EQ, &[198, 51, 100, 1]),
                immediate(1, &[10, 66, 0, 2]),
                immediate(2, &[0, 80]),
                dnat(v4, 1, 2),
            ],
        );
        assert_eq!(
            mapping_of(Attrs(&rule)),
            Some(Mapping {
                proto: Proto::Udp,
                host_port: 8080,
                host_ip: Some("198.51.100.1".parse().unwrap()),
                container_ip: "10.66.0.2".parse().unwrap(),
                container_port: 80,
            })
        );
        // Registers the other way round, an IPv6 target.
        let ip6: std::net::Ipv6Addr = "fd66::2".parse().unwrap();
        let rule = rule_attrs(
            CHAIN,
            &[
                meta(NFT_META_L4PROTO),
                cmp(NFT_CMP_EQ, &[6]),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
                cmp(NFT_CMP_EQ, &[0, 22]),
                immediate(2, &ip6.octets()),
                immediate(1, &[0, 2]),
                dnat(libc::NFPROTO_IPV6 as u8, 2, 1),
            ],
        );
        let m = mapping_of(Attrs(&rule)).unwrap();
        assert_eq!(
            (m.host_port, m.host_ip, m.container_ip, m.container_port),
            (22, None, IpAddr::V6(ip6), 2)
        );

        // Not a mapping: no dnat, a `!=` on the port, a port before the
        // protocol, an address of the wrong length for the family.
        for exprs in [
            vec![
                meta(NFT_META_L4PROTO),
                cmp(NFT_CMP_EQ, &[6]),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
                cmp(NFT_CMP_EQ, &[0, 22]),
                expr("masq", &[]),
            ],
            vec![
                meta(NFT_META_L4PROTO),
                cmp(NFT_CMP_EQ, &[6]),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
                cmp(NFT_CMP_NEQ, &[0, 22]),
                immediate(1, &[10, 66, 0, 2]),
                immediate(2, &[0, 80]),
                dnat(v4, 1, 2),
            ],
            vec![
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
                cmp(NFT_CMP_EQ, &[0, 22]),
                meta(NFT_META_L4PROTO),
                cmp(NFT_CMP_EQ, &[6]),
                immediate(1, &[10, 66, 0, 2]),
                immediate(2, &[0, 80]),
                dnat(v4, 1, 2),
            ],
            vec![
                meta(NFT_META_L4PROTO),
                cmp(NFT_CMP_EQ, &[6]),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
                cmp(NFT_CMP_EQ, &[0, 22]),
                immediate(1, &ip6.octets()),
                immediate(2, &[0, 80]),
                dnat(v4, 1, 2),
            ],
        ] {
            assert_eq!(mapping_of(Attrs(&rule_attrs(CHAIN, &exprs))), None);
        }
        assert_eq!(mapping_of(Attrs(&[])), None);
        assert_eq!((KIND.rule_key)(Attrs(&[])), None);
    }
}
