//! Host port mappings (the portmap plugin): connections to a port of the
//! host are sent on to a container's address and port (DNAT), in our own
//! nftables table `inet cni-rs`.
//!
//! An ADD or DEL of the usual kind only adds or removes elements of data
//! maps and sets read by static rules: no jump, no verdict-map element and
//! no reachable `dnat` rule is written, so the kernel has no jump graph to
//! validate on commit and the cost stays flat however many containers are
//! mapped (a verdict-map element or a reachable `dnat` rule in a regular
//! chain made every commit re-validate the table, O(owners)).
//!
//! Once per namespace (in the first ADD's transaction):
//! - per family (`pm4-*` for IPv4, `pm6-*` for IPv6) two data maps,
//!   `pm4-any` (`type inet_proto . inet_service : ipv4_addr .
//!   inet_service`: protocol and host port to container address and port)
//!   and `pm4-addr` (keyed by `ipv4_addr . inet_proto . inet_service`, for
//!   mappings restricted to one host address), and three sets: `pm4-src`
//!   (an interval set of the sources whose connections are masqueraded:
//!   hairpin subnets, 127.0.0.0/8), `pm4-snat` and `pm4-masqall`
//!   (`inet_proto . inet_service`: the ports of mappings with `snat`, with
//!   `masqAll`);
//! - three verdict maps keyed by host port, `pm-tcp`, `pm-udp`, `pm-sctp`
//!   (`type inet_service : verdict`), only for mappings with conditions
//!   (below);
//! - two nat base chains, `portmap-prerouting` (hook prerouting, priority
//!   -100, dstnat: traffic from elsewhere) and `portmap-output` (hook
//!   output, priority -100: traffic of the host itself), with the same
//!   rules, all starting with `fib daddr type local` (only traffic
//!   addressed to a local address of the host is looked up: a connection
//!   forwarded through the host to another machine's port is never
//!   hijacked, whatever the port): the three `vmap` lookups, then per
//!   family `ip saddr @pm4-src meta l4proto . th dport @pm4-snat meta mark
//!   set mark | 0x2000`, `meta l4proto . th dport @pm4-masqall meta mark
//!   set ...`, `dnat ip to ip daddr . meta l4proto . th dport map
//!   @pm4-addr` and `dnat ip to meta l4proto . th dport map @pm4-any`;
//! - the nat base chain `portmap-masq` (hook postrouting, priority 100,
//!   srcnat) with `meta mark & 0x2000 == 0x2000 masquerade` ([`MASQ_MARK`],
//!   the reference's `markMasqBit` 13).
//!
//! Per attachment (owner = network name + container id + ifname), a regular
//! chain `pm/<network>/<container id>/<ifname>` holding, per mapping, in the
//! family of the container address (conditions of that family first, then
//! the protocol, the port, and the host address when the mapping has one),
//! the marking rules (with `snat`: `ip saddr <hairpin subnet>` and for IPv4
//! `ip saddr 127.0.0.0/8`, which needs `route_localnet`, the plugin's
//! business; with `masq_all` one rule for every source) and the `dnat`.
//!
//! - A mapping whose family has no conditions (the usual case) is an
//!   element of `pm4-any`/`pm4-addr` (commented with the owner's name), its
//!   port in `pm4-snat` or `pm4-masqall`, its hairpin subnets in `pm4-src`.
//!   Its rules in the owner's chain are only its *record* (comment `cni-rs
//!   portmap record: ...`): the chain is never jumped to, so it costs the
//!   commit nothing, and DEL, CHECK and GC read the owner's mappings back
//!   from it with one small dump instead of listing the maps. An element is
//!   deleted only while it still maps to the owner's container (as
//!   masquerade does for reused addresses); if the record was flushed by
//!   hand, DEL finds the owner's elements by their comment (dumping the
//!   four data maps).
//! - A mapping whose family has conditions (conditionsV4/V6, rare) is
//!   jumped to: one element per (protocol, host port) in the protocol's
//!   verdict map, `<host port> : jump pm/...`, and its rules in the owner's
//!   chain are in force. Such configs cost more per commit (the kernel
//!   validates the jumps on each one).
//!
//! Marking is decided per port, not per (source, port): a source in
//! `pm4-src` connecting to any port in `pm4-snat` is masqueraded, so a
//! hairpin subnet of one network also masquerades its connections to
//! another network's mapped port (harmless: the connection still works, the
//! container sees the host's address). Subnets are never removed from
//! `pm4-src` (no reference counts; an address covered already is not added
//! again). Two owners mapping the same port on different host addresses
//! share its `pm4-snat` element: the first DEL drops the marking of both.
//!
//! One owner per (protocol, host port, host address): a later ADD of the
//! same key by another owner takes the element over (the newest mapping
//! wins; the older owner's record stays but is no longer reported by
//! [`installed`], and its DEL leaves the newer owner's element and marking
//! alone). A port mapped with conditions (verdict map) is looked up before
//! the data maps and wins over the same port mapped without.
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there): run it inside [`cni_kernel::Netns::run`] to act
//! elsewhere.

use std::net::{IpAddr, Ipv4Addr};

use cni_kernel::packet_netfilter::nftables::RuleMessage;
use ipnetwork::IpNetwork;
use nix::libc;

use cni_kernel::error::{KernelError, Result};
use cni_kernel::nfnetlink::NfSocket;
use cni_kernel::nft_expr::{
    self as e, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_META_IIFNAME, NFT_META_L4PROTO, NFT_META_MARK,
    NFT_META_NFPROTO, NFT_META_OIFNAME, NFT_NAT_DNAT, NFT_PAYLOAD_NETWORK_HEADER,
    NFT_PAYLOAD_TRANSPORT_HEADER, NFT_REG_1, NFT_REG_2, NFT_REG_VERDICT, NFT_REG32_00, NftExpr,
    RTN_LOCAL,
};
use cni_kernel::nftables::{
    self, BaseHook, Batch, Elem, ElemData, INET_SERVICE, KeyType, NF_INET_LOCAL_OUT,
    NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING, SetData, SetSpec, TABLE, elements_of,
};
use cni_kernel::owner_chain::{self, Expr, chain_rules};

/// All of portmap lives in `inet cni-rs`.
const INET: nftables::Family = nftables::Family::Inet;

pub use cni_kernel::owner_chain::NftOwner;

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
    fn map(self) -> &'static SetSpec {
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

const PM_TCP: SetSpec = verdict_map("pm-tcp", 1);
const PM_UDP: SetSpec = verdict_map("pm-udp", 2);
const PM_SCTP: SetSpec = verdict_map("pm-sctp", 3);

const fn verdict_map(name: &'static str, id: u32) -> SetSpec {
    SetSpec {
        name,
        id,
        key: INET_SERVICE,
        data: SetData::Verdict,
        interval: false,
        fields: &[],
    }
}

/// dstnat and srcnat, as nft names the usual nat priorities.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;

const PREFIX: &str = "pm";
const WHAT: &str = "portmap";

/// A base chain: its name, how it hooks in, and what puts its rules in a
/// batch.
struct BaseChain {
    name: &'static str,
    hook: BaseHook,
    rules: fn(&mut Batch, &str),
}

/// The base chains `portmap-prerouting`, `portmap-output` and
/// `portmap-masq` in `inet cni-rs`.
const BASES: [BaseChain; 3] = [
    BaseChain {
        name: "portmap-prerouting",
        hook: nat_hook(NF_INET_PRE_ROUTING, DSTNAT),
        rules: dispatch,
    },
    BaseChain {
        name: "portmap-output",
        hook: nat_hook(NF_INET_LOCAL_OUT, DSTNAT),
        rules: dispatch,
    },
    BaseChain {
        name: "portmap-masq",
        hook: nat_hook(NF_INET_POST_ROUTING, SRCNAT),
        rules: masquerade_marked,
    },
];

/// The verdict maps of the mappings with conditions, keyed by host port.
const PORT_MAPS: [SetSpec; 3] = [PM_TCP, PM_UDP, PM_SCTP];

/// A key in one of the verdict maps: (map, host port in network order).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MapKey {
    map: &'static str,
    key: Vec<u8>,
}

/// The verdict-map key a rule of an owner chain is reached by: none for a
/// record.
fn rule_key(rule: &RuleMessage) -> Option<MapKey> {
    if is_record(rule) {
        return None;
    }
    let p = parse(rule);
    Some(key(p.proto?, p.port?))
}

const fn nat_hook(hook: u32, priority: i32) -> BaseHook {
    BaseHook {
        chain_type: "nat",
        hook,
        priority,
    }
}

/// Offset and length of the destination port (TCP, UDP and SCTP alike).
const DPORT: (u32, u32) = (2, 2);
/// Offsets and lengths of the destination address in the IP headers.
const IPV4_DADDR: (u32, u32) = (16, 4);
const IPV4_SADDR: (u32, u32) = (12, 4);
const IPV6_SADDR: (u32, u32) = (8, 16);
const IPV6_DADDR: (u32, u32) = (24, 16);

/// `th dport` into `dreg`: after a `meta l4proto` match, the same two
/// bytes for the three protocols.
fn dport(dreg: u32) -> NftExpr {
    e::payload(NFT_PAYLOAD_TRANSPORT_HEADER, DPORT, dreg)
}

/// The rules of `portmap-prerouting` and `portmap-output`: one per
/// protocol for the mappings with conditions,
/// `fib daddr type local meta l4proto <proto> th dport vmap @pm-<proto>`.
fn dispatch(batch: &mut Batch, chain: &str) {
    for proto in Proto::ALL {
        let map = proto.map();
        let exprs = vec![
            e::fib_daddr_type(),
            e::cmp(NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes()),
            e::meta(NFT_META_L4PROTO, NFT_REG_1),
            e::cmp(NFT_CMP_EQ, &[proto.number()]),
            dport(NFT_REG_1),
            e::lookup(map.name, map.id, NFT_REG_1, Some(NFT_REG_VERDICT)),
        ];
        batch.add_rule(INET, chain, exprs, None);
    }
    for fam in [&V4, &V6] {
        static_rules(batch, chain, fam);
    }
}

/// The rule of `portmap-masq`: `meta mark & 0x2000 == 0x2000 masquerade`.
fn masquerade_marked(batch: &mut Batch, chain: &str) {
    let exprs = vec![
        e::meta(NFT_META_MARK, NFT_REG_1),
        e::bitwise(&MASQ_MARK.to_ne_bytes(), &0u32.to_ne_bytes()),
        e::cmp(NFT_CMP_EQ, &MASQ_MARK.to_ne_bytes()),
        e::masquerade(),
    ];
    batch.add_rule(INET, chain, exprs, None);
}

/// The data maps and sets of one family, read by the static rules of the
/// base chains; an owner without conditions for the family only adds and
/// removes elements of these.
struct Family {
    v4: bool,
    nfproto: i32,
    /// `meta l4proto . th dport : <container addr> . <container port>`.
    any: SetSpec,
    /// `<ip daddr> . meta l4proto . th dport : <container addr> . <port>`.
    addr: SetSpec,
    /// Sources to masquerade (hairpin subnets, 127.0.0.0/8): intervals.
    src: SetSpec,
    /// `meta l4proto . th dport` of the mappings with `snat`.
    snat: SetSpec,
    /// `meta l4proto . th dport` of the mappings with `masq_all`.
    masq_all: SetSpec,
}

const fn concat(types: &[u32]) -> u32 {
    let mut t = 0;
    let mut i = 0;
    while i < types.len() {
        t = (t << 6) | types[i];
        i += 1;
    }
    t
}

// nftables' datatypes: ipv4_addr 7, ipv6_addr 8, inet_proto 12,
// inet_service 13; a concatenation is `(t1 << 6) | t2`, each part padded
// to 4 bytes.
const T_V4: u32 = 7;
const T_V6: u32 = 8;
const T_PROTO: u32 = 12;
const T_SERVICE: u32 = 13;
const fn kt(datatype: u32, len: u32) -> KeyType {
    KeyType {
        datatype,
        len,
        byteorder: 2,
    }
}
const PROTO_PORT: KeyType = kt(concat(&[T_PROTO, T_SERVICE]), 8);

const V4: Family = Family {
    v4: true,
    nfproto: libc::NFPROTO_IPV4,
    any: SetSpec {
        name: "pm4-any",
        id: 11,
        key: PROTO_PORT,
        data: SetData::Data(kt(concat(&[T_V4, T_SERVICE]), 8)),
        interval: false,
        fields: &[],
    },
    addr: SetSpec {
        name: "pm4-addr",
        id: 12,
        key: kt(concat(&[T_V4, T_PROTO, T_SERVICE]), 12),
        data: SetData::Data(kt(concat(&[T_V4, T_SERVICE]), 8)),
        interval: false,
        fields: &[],
    },
    src: SetSpec {
        name: "pm4-src",
        id: 13,
        key: kt(T_V4, 4),
        data: SetData::None,
        interval: true,
        fields: &[],
    },
    snat: SetSpec {
        name: "pm4-snat",
        id: 14,
        key: PROTO_PORT,
        data: SetData::None,
        interval: false,
        fields: &[],
    },
    masq_all: SetSpec {
        name: "pm4-masqall",
        id: 15,
        key: PROTO_PORT,
        data: SetData::None,
        interval: false,
        fields: &[],
    },
};

const V6: Family = Family {
    v4: false,
    nfproto: libc::NFPROTO_IPV6,
    any: SetSpec {
        name: "pm6-any",
        id: 21,
        key: PROTO_PORT,
        data: SetData::Data(kt(concat(&[T_V6, T_SERVICE]), 20)),
        interval: false,
        fields: &[],
    },
    addr: SetSpec {
        name: "pm6-addr",
        id: 22,
        key: kt(concat(&[T_V6, T_PROTO, T_SERVICE]), 24),
        data: SetData::Data(kt(concat(&[T_V6, T_SERVICE]), 20)),
        interval: false,
        fields: &[],
    },
    src: SetSpec {
        name: "pm6-src",
        id: 23,
        key: kt(T_V6, 16),
        data: SetData::None,
        interval: true,
        fields: &[],
    },
    snat: SetSpec {
        name: "pm6-snat",
        id: 24,
        key: PROTO_PORT,
        data: SetData::None,
        interval: false,
        fields: &[],
    },
    masq_all: SetSpec {
        name: "pm6-masqall",
        id: 25,
        key: PROTO_PORT,
        data: SetData::None,
        interval: false,
        fields: &[],
    },
};

impl Family {
    fn of(ip: IpAddr) -> &'static Family {
        if ip.is_ipv4() { &V4 } else { &V6 }
    }

    fn specs(&self) -> [&SetSpec; 5] {
        [&self.any, &self.addr, &self.src, &self.snat, &self.masq_all]
    }

    /// The 32-bit register after the address (the port's in the data).
    fn port_reg(&self) -> u32 {
        if self.v4 {
            NFT_REG32_00 + 1
        } else {
            NFT_REG32_00 + 4
        }
    }
}

/// Create the data maps and sets (in the setup batch).
fn data_sets(batch: &mut Batch) {
    for fam in [&V4, &V6] {
        for spec in fam.specs() {
            batch.add_set(INET, spec);
        }
    }
}

/// `meta l4proto . th dport` into two 32-bit registers from `dreg` on.
fn load_proto_port(exprs: &mut Vec<NftExpr>, dreg: u32) {
    exprs.push(e::meta(NFT_META_L4PROTO, dreg));
    exprs.push(dport(dreg + 1));
}

/// Look register `sreg` on up in `spec` (a set: break when missing; a map:
/// load the data into `dreg` on).
fn lookup(exprs: &mut Vec<NftExpr>, spec: &SetSpec, sreg: u32, dreg: Option<u32>) {
    exprs.push(e::lookup(spec.name, spec.id, sreg, dreg));
}

/// `fib daddr type local meta nfproto <family>`: what every static rule
/// starts with.
fn local_head(fam: &Family) -> Vec<NftExpr> {
    vec![
        e::fib_daddr_type(),
        e::cmp(NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes()),
        e::meta(NFT_META_NFPROTO, NFT_REG_1),
        e::cmp(NFT_CMP_EQ, &[fam.nfproto as u8]),
    ]
}

/// The rules of one family reading the data maps and sets:
/// - `ip saddr @pm4-src meta l4proto . th dport @pm4-snat meta mark set
///   mark | 0x2000`;
/// - `meta l4proto . th dport @pm4-masqall meta mark set mark | 0x2000`;
/// - `dnat ip to ip daddr . meta l4proto . th dport map @pm4-addr`;
/// - `dnat ip to meta l4proto . th dport map @pm4-any`.
fn static_rules(batch: &mut Batch, chain: &str, fam: &Family) {
    let addr = if fam.v4 { IPV4_DADDR } else { IPV6_DADDR };
    let saddr_field = if fam.v4 { (12, 4) } else { (8, 16) };

    let mut rule = local_head(fam);
    rule.push(e::payload(
        NFT_PAYLOAD_NETWORK_HEADER,
        saddr_field,
        NFT_REG_1,
    ));
    lookup(&mut rule, &fam.src, NFT_REG_1, None);
    load_proto_port(&mut rule, NFT_REG32_00);
    lookup(&mut rule, &fam.snat, NFT_REG32_00, None);
    set_mark(&mut rule);
    batch.add_rule(INET, chain, rule, None);

    let mut rule = local_head(fam);
    load_proto_port(&mut rule, NFT_REG32_00);
    lookup(&mut rule, &fam.masq_all, NFT_REG32_00, None);
    set_mark(&mut rule);
    batch.add_rule(INET, chain, rule, None);

    let addr_words = addr.1 / 4;
    let mut rule = local_head(fam);
    rule.push(e::payload(NFT_PAYLOAD_NETWORK_HEADER, addr, NFT_REG32_00));
    load_proto_port(&mut rule, NFT_REG32_00 + addr_words);
    lookup(&mut rule, &fam.addr, NFT_REG32_00, Some(NFT_REG32_00));
    rule.push(e::dnat(fam.nfproto as u32, NFT_REG32_00, fam.port_reg()));
    batch.add_rule(INET, chain, rule, None);

    let mut rule = local_head(fam);
    load_proto_port(&mut rule, NFT_REG32_00);
    lookup(&mut rule, &fam.any, NFT_REG32_00, Some(NFT_REG32_00));
    rule.push(e::dnat(fam.nfproto as u32, NFT_REG32_00, fam.port_reg()));
    batch.add_rule(INET, chain, rule, None);
}

/// `meta mark set mark | 0x2000`.
fn set_mark(exprs: &mut Vec<NftExpr>) {
    exprs.push(e::meta(NFT_META_MARK, NFT_REG_1));
    exprs.push(e::bitwise(
        &(!MASQ_MARK).to_ne_bytes(),
        &MASQ_MARK.to_ne_bytes(),
    ));
    exprs.push(e::meta_set(NFT_META_MARK, NFT_REG_1));
}

/// `meta l4proto . th dport` as a key: each part padded to 4 bytes.
fn proto_port(proto: Proto, port: u16) -> Vec<u8> {
    let p = port.to_be_bytes();
    vec![proto.number(), 0, 0, 0, p[0], p[1], 0, 0]
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

/// An element of a data map: the map, the key and the data.
type DataEntry = (&'static SetSpec, Vec<u8>, Vec<u8>);

/// A mapping's element in its family's data maps.
fn data_element(m: &Mapping) -> DataEntry {
    let fam = Family::of(m.container_ip);
    let mut data = octets(m.container_ip);
    let p = m.container_port.to_be_bytes();
    data.extend_from_slice(&[p[0], p[1], 0, 0]);
    match host_ip(m) {
        Some(h) => {
            let mut key = octets(h);
            key.extend(proto_port(m.proto, m.host_port));
            (&fam.addr, key, data)
        }
        None => (&fam.any, proto_port(m.proto, m.host_port), data),
    }
}

/// An element of a data map or set: its key, its data, its comment.
fn elem<'a>(key: &'a [u8], data: Option<&'a [u8]>, udata: Option<&'a [u8]>) -> Elem<'a> {
    Elem {
        data: data.map_or(ElemData::None, ElemData::Value),
        udata,
        ..Elem::key(key)
    }
}

/// The DNAT elements whose comment names the owner (a dump of each data
/// map: only when the owner's record is lost), with their data.
fn commented_elements(
    socket: &mut NfSocket,
    udata: &[u8],
    op: &'static str,
) -> Result<Vec<DataEntry>> {
    let mut found = Vec::new();
    for spec in [&V4.any, &V4.addr, &V6.any, &V6.addr] {
        let replies = match socket.dump(INET, nftables::get_elements(spec.name, None))? {
            Err(e) if owner_chain::is_enoent(&e) => continue,
            Err(e) => return Err(owner_chain::nft_error(op, spec.name, e)),
            Ok(replies) => replies,
        };
        for (_, _, elems) in replies.iter().filter_map(elements_of) {
            for e in elems.into_iter().filter(|e| e.udata == Some(udata)) {
                let data = e.data.unwrap_or_default().to_vec();
                found.push((spec, e.key.to_vec(), data));
            }
        }
    }
    Ok(found)
}

/// The data `key` maps to in `spec` now, if any (one GETSETELEM).
fn current_data(
    socket: &mut NfSocket,
    spec: &SetSpec,
    key: &[u8],
    op: &'static str,
) -> Result<Option<Vec<u8>>> {
    owner_chain::element_data(socket, INET, spec.name, key, op)
}

/// Whether `net`'s network address is in the source set already.
fn src_covered(
    socket: &mut NfSocket,
    spec: &SetSpec,
    net: &IpNetwork,
    op: &'static str,
) -> Result<bool> {
    Ok(current_data(socket, spec, &octets(net.network()), op)?.is_some())
}

/// Add the interval of `net` to the source set: its first address, and
/// the address after its last one as the interval's end (none past the
/// end of the address space).
fn add_src(batch: &mut Batch, spec: &SetSpec, net: &IpNetwork) {
    let start = octets(net.network());
    batch.add_element(INET, spec.name, &Elem::key(&start));
    let mut end = octets(net.broadcast());
    let mut carry = true;
    for b in end.iter_mut().rev() {
        if !carry {
            break;
        }
        let (v, c) = b.overflowing_add(1);
        *b = v;
        carry = c;
    }
    if !carry {
        let end = Elem {
            interval_end: true,
            ..Elem::key(&end)
        };
        batch.add_element(INET, spec.name, &end);
    }
}

/// Remove an element if it is there (adding an existing one is a no-op):
/// for a map, only if it still maps to `data`, else the batch fails.
fn remove_own(batch: &mut Batch, spec: &SetSpec, key: &[u8], data: Option<&[u8]>) {
    let e = elem(key, data, None);
    batch.add_element(INET, spec.name, &e);
    batch.del_element(INET, spec.name, &e);
}

/// Remove what a record mapping put in the data maps and sets: its DNAT
/// element while it still maps to its container, and its port in the
/// marking sets.
fn remove_mapping(
    socket: &mut NfSocket,
    batch: &mut Batch,
    m: &Mapping,
    op: &'static str,
) -> Result<bool> {
    let (spec, key, data) = data_element(m);
    if current_data(socket, spec, &key, op)?.as_deref() != Some(&data[..]) {
        // Another owner took the port over: its marking too.
        return Ok(false);
    }
    remove_own(batch, spec, &key, Some(&data));
    let fam = Family::of(m.container_ip);
    let pp = proto_port(m.proto, m.host_port);
    remove_own(batch, &fam.snat, &pp, None);
    remove_own(batch, &fam.masq_all, &pp, None);
    Ok(true)
}

/// The mappings of an owner chain's record rules (those in force through
/// the data maps), in rule order.
fn record_mappings(rules: &[RuleMessage]) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for r in rules.iter().filter(|r| is_record(r)) {
        if let Some(m) = mapping_of(r)
            && !out.contains(&m)
        {
            out.push(m);
        }
    }
    out
}

/// What marks a record rule: its comment.
const RECORD: &str = "cni-rs portmap record";

/// Whether a rule of an owner chain is a record of a mapping in force
/// through the data maps (its comment says so) rather than a rule reached
/// through the verdict maps.
fn is_record(rule: &RuleMessage) -> bool {
    nftables::rule_udata(rule)
        .is_some_and(|u| u.windows(RECORD.len()).any(|w| w == RECORD.as_bytes()))
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

/// What an interface name condition compares with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IfnameMatch {
    /// The name NUL-padded to IFNAMSIZ.
    Exact([u8; 16]),
    /// For `name*`, the bytes of `name`.
    Prefix(Vec<u8>),
}

impl IfnameMatch {
    fn bytes(&self) -> &[u8] {
        match self {
            IfnameMatch::Exact(p) => p,
            IfnameMatch::Prefix(p) => p,
        }
    }
}

/// What an interface name condition compares with: the name NUL-padded to
/// IFNAMSIZ (exact), or for `name*` the bytes of `name` (a prefix).
fn ifname_match(name: &str) -> Result<IfnameMatch> {
    const IFNAMSIZ: usize = 16;
    let bad = || KernelError::InvalidIfname(name.to_owned());
    if name.contains('\0') || name.len() >= IFNAMSIZ {
        return Err(bad());
    }
    match name.strip_suffix('*') {
        Some("") => Err(bad()),
        Some(prefix) => Ok(IfnameMatch::Prefix(prefix.as_bytes().to_vec())),
        None if name.is_empty() => Err(bad()),
        None => {
            let mut p = [0u8; IFNAMSIZ];
            p[..name.len()].copy_from_slice(name.as_bytes());
            Ok(IfnameMatch::Exact(p))
        }
    }
}

fn op(negate: bool) -> u32 {
    if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ }
}

/// `<field> [!=] <net>`: a load, a mask unless the prefix is full, and a
/// compare.
fn match_net(exprs: &mut Vec<NftExpr>, field: (u32, u32), net: &IpNetwork, negate: bool) {
    let (addr, mask) = (octets(net.network()), octets(net.mask()));
    exprs.push(e::payload(NFT_PAYLOAD_NETWORK_HEADER, field, NFT_REG_1));
    if mask.iter().any(|b| *b != 0xff) {
        exprs.push(e::bitwise(&mask, &vec![0u8; mask.len()]));
    }
    exprs.push(e::cmp(op(negate), &addr));
}

/// The source and destination address fields of the IPv4 or IPv6 header.
fn saddr(v4: bool) -> (u32, u32) {
    if v4 { (12, 4) } else { (8, 16) }
}

fn daddr(v4: bool) -> (u32, u32) {
    if v4 { IPV4_DADDR } else { IPV6_DADDR }
}

/// One condition (checked by [`plan`]).
fn condition(exprs: &mut Vec<NftExpr>, c: &Cond, v4: bool) {
    match c {
        Cond::Saddr { negate, net } => match_net(exprs, saddr(v4), net, *negate),
        Cond::Daddr { negate, net } => match_net(exprs, daddr(v4), net, *negate),
        Cond::Iifname { negate, name } | Cond::Oifname { negate, name } => {
            let Ok(name) = ifname_match(name) else { return };
            let key = match c {
                Cond::Iifname { .. } => NFT_META_IIFNAME,
                _ => NFT_META_OIFNAME,
            };
            exprs.push(e::meta(key, NFT_REG_1));
            exprs.push(e::cmp(op(*negate), name.bytes()));
        }
        Cond::Mark {
            negate,
            value,
            mask,
        } => {
            exprs.push(e::meta(NFT_META_MARK, NFT_REG_1));
            if *mask != u32::MAX {
                exprs.push(e::bitwise(&mask.to_ne_bytes(), &0u32.to_ne_bytes()));
            }
            exprs.push(e::cmp(op(*negate), &(value & mask).to_ne_bytes()));
        }
    }
}

/// What every rule of a mapping starts with: the family, the conditions of
/// that family, the protocol and host port (the map's key, repeated), and
/// the host address if the mapping has one.
fn head(m: &Mapping, conds: &[Cond]) -> Vec<NftExpr> {
    let v4 = m.container_ip.is_ipv4();
    let nfproto = if v4 {
        libc::NFPROTO_IPV4
    } else {
        libc::NFPROTO_IPV6
    };
    let mut rule = vec![
        e::meta(NFT_META_NFPROTO, NFT_REG_1),
        e::cmp(NFT_CMP_EQ, &[nfproto as u8]),
    ];
    for c in conds {
        condition(&mut rule, c, v4);
    }
    rule.push(e::meta(NFT_META_L4PROTO, NFT_REG_1));
    rule.push(e::cmp(NFT_CMP_EQ, &[m.proto.number()]));
    rule.push(dport(NFT_REG_1));
    rule.push(e::cmp(NFT_CMP_EQ, &m.host_port.to_be_bytes()));
    if let Some(ip) = host_ip(m) {
        rule.push(e::payload(NFT_PAYLOAD_NETWORK_HEADER, daddr(v4), NFT_REG_1));
        rule.push(e::cmp(NFT_CMP_EQ, &octets(ip)));
    }
    rule
}

/// `meta mark set mark | 0x2000` after `rule`.
fn mark(mut rule: Vec<NftExpr>) -> Vec<NftExpr> {
    set_mark(&mut rule);
    rule
}

/// The rules of one mapping, in order: the marking rules, then the DNAT
/// (which ends the chain for the packet).
fn mapping_rules(s: &Setup, m: &Mapping) -> Vec<Vec<NftExpr>> {
    let v4 = m.container_ip.is_ipv4();
    let conds = if v4 { s.conditions_v4 } else { s.conditions_v6 };
    let mut rules = Vec::new();
    if s.snat {
        if s.masq_all {
            rules.push(mark(head(m, conds)));
        } else {
            let localhost = IpNetwork::new(Ipv4Addr::LOCALHOST.into(), 8).expect("a valid prefix");
            let sources = s
                .hairpin_from
                .iter()
                .chain(v4.then_some(&localhost))
                .filter(|n| n.is_ipv4() == v4);
            for net in sources {
                let mut rule = head(m, conds);
                match_net(&mut rule, saddr(v4), net, false);
                rules.push(mark(rule));
            }
        }
    }
    let mut rule = head(m, conds);
    let nfproto = if v4 {
        libc::NFPROTO_IPV4
    } else {
        libc::NFPROTO_IPV6
    };
    rule.push(e::immediate(NFT_REG_1, &octets(m.container_ip)));
    rule.push(e::immediate(NFT_REG_2, &m.container_port.to_be_bytes()));
    rule.push(e::dnat(nfproto as u32, NFT_REG_1, NFT_REG_2));
    rules.push(rule);
    rules
}

/// Install or replace the owner's mappings in one transaction (with the
/// setup, the first time in a namespace): its chain, flushed and refilled
/// with the rules of each mapping (records, or, for mappings with
/// conditions, rules reached through the verdict maps), the data-map
/// elements of the recorded mappings, the verdict-map elements of the
/// others (taken over from another owner), and the removal of what it no
/// longer maps. With no mapping left (none given, or none of a usable
/// family) this is [`del`].
pub fn add(s: &Setup) -> Result<(), KernelError> {
    let mappings = plan(s)?;
    if mappings.is_empty() {
        return del(&s.owner).map(|_| ());
    }
    let op = "add portmap";
    owner_chain::transaction(op, |socket, batch| {
        stage_add(socket, batch, s, &mappings, op)
    })
}

fn stage_add(
    socket: &mut NfSocket,
    batch: &mut Batch,
    s: &Setup,
    mappings: &[&Mapping],
    op: &'static str,
) -> Result<()> {
    let chain = owner_chain::chain_name(PREFIX, WHAT, &s.owner)?;
    let comment = owner_chain::comment(WHAT, &s.owner);
    let udata = nftables::comment_udata(&comment);
    let conds = |m: &Mapping| {
        if m.container_ip.is_ipv4() {
            s.conditions_v4
        } else {
            s.conditions_v6
        }
    };
    // With conditions, a mapping keeps a jump from the verdict maps to the
    // owner's chain; without (the usual case), its rules in the chain are
    // only its record and the data maps do the work.
    let (jumped, recorded): (Vec<&Mapping>, Vec<&Mapping>) =
        mappings.iter().partition(|m| !conds(m).is_empty());
    let mut keys: Vec<MapKey> = Vec::new();
    for m in &jumped {
        let k = key(m.proto, m.host_port);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }

    setup(socket, batch, op)?;
    let now = chain_rules(socket, INET, &chain, op)?.unwrap_or_default();
    // Who holds each recorded mapping's port now. Taking a port over from
    // another owner is noted in the record, so that giving it up (DEL, or an
    // ADD without it) hands it back.
    let mut current = Vec::with_capacity(recorded.len());
    for m in &recorded {
        let (spec, key, _) = data_element(m);
        current.push(current_data(socket, spec, &key, op)?);
    }
    let flagged = took_over_mappings(&now);
    let takes_over = |m: &Mapping| {
        let i = recorded
            .iter()
            .position(|r| *r == m)
            .expect("a recorded mapping");
        match &current[i] {
            Some(d) if *d == data_element(m).2 => flagged.contains(m),
            Some(_) => true,
            None => false,
        }
    };
    batch.add_chain(INET, &chain, None, false);
    batch.flush_chain(INET, &chain);
    for m in mappings {
        let c = if jumped.contains(m) {
            comment.clone()
        } else {
            record_comment(&s.owner, takes_over(m))
        };
        for rule in mapping_rules(s, m) {
            batch.add_rule(INET, &chain, rule, Some(&c));
        }
    }

    // The recorded mappings: elements of the data maps and sets.
    let had = record_mappings(&now);
    let mut given_up = Vec::new();
    for old in &had {
        if !recorded.contains(&old)
            && remove_mapping(socket, batch, old, op)?
            && flagged.contains(old)
        {
            given_up.push(old.clone());
        }
    }
    reinstate(socket, batch, &chain, &given_up, op)?;
    for (m, cur) in recorded.iter().zip(&current) {
        let (spec, key, data) = data_element(m);
        match cur {
            Some(d) if *d == data => {}
            Some(_) => batch.del_element(INET, spec.name, &Elem::key(&key)),
            None => {}
        }
        batch.add_element(INET, spec.name, &elem(&key, Some(&data), Some(&udata)));
        let fam = Family::of(m.container_ip);
        let pp = proto_port(m.proto, m.host_port);
        let (want, other) = if s.masq_all {
            (&fam.masq_all, &fam.snat)
        } else {
            (&fam.snat, &fam.masq_all)
        };
        // Deleting what is not there frees an element (and costs the
        // kernel an RCU grace period): only for a port recorded before.
        let before = had.iter().any(|o| {
            o.proto == m.proto && o.host_port == m.host_port && o.container_ip.is_ipv4() == fam.v4
        });
        if s.snat {
            batch.add_element(INET, want.name, &Elem::key(&pp));
        }
        if before {
            remove_own(batch, other, &pp, None);
            if !s.snat {
                remove_own(batch, want, &pp, None);
            }
        }
        if s.snat && !s.masq_all {
            let localhost = IpNetwork::new(Ipv4Addr::LOCALHOST.into(), 8).expect("a valid prefix");
            let sources = s
                .hairpin_from
                .iter()
                .chain(fam.v4.then_some(&localhost))
                .filter(|n| n.is_ipv4() == fam.v4);
            for net in sources {
                if !src_covered(socket, &fam.src, net, op)? {
                    add_src(batch, &fam.src, net);
                }
            }
        }
    }

    // The mappings with conditions: verdict-map elements jumping to the
    // owner's chain, and no more elements for ports it no longer maps so.
    for stale in keys_of(&now).iter().filter(|k| !keys.contains(k)) {
        if holder(socket, stale, &chain, op)? == Holder::Owner {
            remove_jump(batch, stale, &chain);
        }
    }
    for k in &keys {
        let jump = jump_to(k, &chain);
        if holder(socket, k, &chain, op)? == Holder::Other {
            batch.del_element(INET, k.map, &Elem::key(&k.key));
        }
        batch.add_element(INET, k.map, &jump);
    }
    Ok(())
}

/// The table, the maps and sets, and whichever base chains are missing
/// (each created exclusively: of concurrent first ADDs, one succeeds and the
/// others are refused and built again). Nothing when all are there.
fn setup(socket: &mut NfSocket, batch: &mut Batch, op: &'static str) -> Result<()> {
    let mut missing = Vec::new();
    for base in &BASES {
        if owner_chain::chain(socket, INET, base.name, op)?.is_none() {
            missing.push(base);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    batch.add_table(INET);
    for map in &PORT_MAPS {
        batch.add_set(INET, map);
    }
    data_sets(batch);
    for base in missing {
        batch.add_chain(INET, base.name, Some(&base.hook), true);
        (base.rules)(batch, base.name);
    }
    Ok(())
}

/// Whether every base chain exists as a base chain.
fn bases_exist(socket: &mut NfSocket, op: &'static str) -> Result<bool> {
    for base in &BASES {
        if owner_chain::chain(socket, INET, base.name, op)? != Some(true) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Who a verdict-map key jumps to, seen from the owner of `chain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Nobody,
    Owner,
    Other,
}

fn holder(socket: &mut NfSocket, k: &MapKey, chain: &str, op: &'static str) -> Result<Holder> {
    let reply = match socket.get(INET, nftables::get_elements(k.map, Some(&k.key)))? {
        Err(e) if owner_chain::is_enoent(&e) => return Ok(Holder::Nobody),
        Err(e) => return Err(owner_chain::nft_error(op, k.map, e)),
        Ok(reply) => reply,
    };
    let Some((_, _, elems)) = reply.as_ref().and_then(elements_of) else {
        return Ok(Holder::Nobody);
    };
    Ok(
        match elems.into_iter().find(|e| e.key == k.key.as_slice()) {
            None => Holder::Nobody,
            Some(e) if e.jump == Some(chain) => Holder::Owner,
            Some(_) => Holder::Other,
        },
    )
}

fn jump_to<'a>(k: &'a MapKey, chain: &'a str) -> Elem<'a> {
    Elem {
        data: ElemData::Jump(chain),
        ..Elem::key(&k.key)
    }
}

/// Delete `k`'s element only while it jumps to `chain`: re-adding the same
/// jump is a no-op for the kernel, and is refused (failing the batch) if
/// the key jumps elsewhere now.
fn remove_jump(batch: &mut Batch, k: &MapKey, chain: &str) {
    let jump = jump_to(k, chain);
    batch.add_element(INET, k.map, &jump);
    batch.del_element(INET, k.map, &jump);
}

/// The verdict-map keys an owner chain's rules are reached by, each once.
fn keys_of(rules: &[RuleMessage]) -> Vec<MapKey> {
    let mut keys: Vec<MapKey> = Vec::new();
    for k in rules.iter().filter_map(rule_key) {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// Every verdict-map key that jumps to `chain` (a dump of each of the three
/// maps, which hold only the rare mappings with conditions).
fn keys_jumping_to(socket: &mut NfSocket, chain: &str, op: &'static str) -> Result<Vec<MapKey>> {
    let mut keys = Vec::new();
    for map in &PORT_MAPS {
        let replies = match socket.dump(INET, nftables::get_elements(map.name, None))? {
            Err(e) if owner_chain::is_enoent(&e) => continue,
            Err(e) => return Err(owner_chain::nft_error(op, map.name, e)),
            Ok(replies) => replies,
        };
        for (table, set, elems) in replies.iter().filter_map(elements_of) {
            if (table, set) != (TABLE, map.name) {
                continue;
            }
            keys.extend(
                elems
                    .into_iter()
                    .filter(|e| e.jump == Some(chain))
                    .map(|e| MapKey {
                        map: map.name,
                        key: e.key.to_vec(),
                    }),
            );
        }
    }
    Ok(keys)
}

/// The comment of an owner's record rules; `took_over` when the mapping took
/// its host port over from another owner, whose mapping DEL then reinstates.
fn record_comment(owner: &NftOwner, took_over: bool) -> String {
    let what = if took_over {
        TOOK_OVER_RECORD
    } else {
        "portmap record"
    };
    owner_chain::comment(what, owner)
}

const TOOK_OVER_RECORD: &str = "portmap record, took over";

/// The mappings an owner chain's records say took their port over.
fn took_over_mappings(rules: &[RuleMessage]) -> Vec<Mapping> {
    rules
        .iter()
        .filter(|r| is_record(r) && took_over(r))
        .filter_map(mapping_of)
        .collect()
}

/// Hand each host port in `given_up` (the owner of `chain` took it over and
/// now gives it up) back to the owner that held it before: the last other
/// owner whose record maps the same host port and address in that family
/// (each takeover pushes, each hand-back pops). Its element and its marking
/// come back as its own ADD made them. One dump of the table's rules, only
/// when a port that was taken over is given up.
fn reinstate(
    socket: &mut NfSocket,
    batch: &mut Batch,
    chain: &str,
    given_up: &[Mapping],
    op: &'static str,
) -> Result<()> {
    if given_up.is_empty() {
        return Ok(());
    }
    let replies = match socket.dump(INET, nftables::get_table_rules())? {
        Err(e) if owner_chain::is_enoent(&e) => return Ok(()),
        Err(e) => return Err(owner_chain::nft_error(op, TABLE, e)),
        Ok(replies) => replies,
    };
    let prefix = format!("{PREFIX}/");
    let records: Vec<(&str, &RuleMessage)> = replies
        .iter()
        .filter_map(nftables::rule_of)
        .filter(|(t, c, r)| *t == TABLE && *c != chain && c.starts_with(&prefix) && is_record(r))
        .map(|(_, c, r)| (c, r))
        .collect();
    for m in given_up {
        let (spec, key, _) = data_element(m);
        // The newest other claimant: the last in the dump (chains are
        // listed in the order they were made).
        let heir = records.iter().rev().find_map(|(c, r)| {
            let h = mapping_of(r)?;
            let (hs, hk, _) = data_element(&h);
            (hs.name == spec.name && hk == key).then_some((*c, *r, h))
        });
        let Some((heir_chain, heir_rule, heir)) = heir else {
            continue;
        };
        let (_, _, data) = data_element(&heir);
        let comment = nftables::rule_udata(heir_rule)
            .and_then(nftables::comment_of)
            .map(element_comment)
            .unwrap_or_default();
        let udata = nftables::comment_udata(&comment);
        batch.add_element(INET, spec.name, &elem(&key, Some(&data), Some(&udata)));
        // Its marking rules (no DNAT, same port) say how it was SNATed.
        let marks: Vec<Parsed> = records
            .iter()
            .filter(|(c, _)| *c == heir_chain)
            .map(|(_, r)| parse(r))
            .filter(|p| {
                p.dnat.is_none() && p.proto == Some(heir.proto) && p.port == Some(heir.host_port)
            })
            .collect();
        if !marks.is_empty() {
            let fam = Family::of(heir.container_ip);
            let set = if marks.iter().any(|p| p.from_saddr) {
                &fam.snat
            } else {
                &fam.masq_all
            };
            let pp = proto_port(heir.proto, heir.host_port);
            batch.add_element(INET, set.name, &Elem::key(&pp));
        }
    }
    Ok(())
}

/// The comment of an owner's data-map elements, from its record's comment.
fn element_comment(record: &str) -> String {
    let rest = record.split_once(": ").map_or("", |(_, rest)| rest);
    nftables::cut(&format!("cni-rs {WHAT}: {rest}"), nftables::COMMENT_MAX).to_owned()
}

/// Whether a record rule says its mapping took its port over.
fn took_over(rule: &RuleMessage) -> bool {
    nftables::rule_udata(rule)
        .and_then(nftables::comment_of)
        .is_some_and(|c| c.contains(TOOK_OVER_RECORD))
}

/// Remove the owner's mappings and chain in one transaction; what to remove
/// is read from the owner's chain, so no mapping needs to be known.
/// Elements of ports now mapped to another owner's chain or container are
/// left alone. Nothing to remove (no chain, no table) is success. Returns
/// the mappings removed (from the owner's record), e.g. to flush their
/// conntrack entries.
pub fn del(owner: &NftOwner) -> Result<Vec<Mapping>, KernelError> {
    let op = "delete portmap";
    let mut removed = Vec::new();
    owner_chain::transaction(op, |socket, batch| {
        // Built once per attempt: report what the last attempt removed.
        removed.clear();
        stage_del(socket, batch, owner, &mut removed, op)
    })?;
    Ok(removed)
}

fn stage_del(
    socket: &mut NfSocket,
    batch: &mut Batch,
    owner: &NftOwner,
    removed: &mut Vec<Mapping>,
    op: &'static str,
) -> Result<()> {
    // An owner `add` refuses never had a chain; its name could even be
    // another owner's, so touch nothing.
    let Ok(chain) = owner_chain::chain_name(PREFIX, WHAT, owner) else {
        return Ok(());
    };
    let Some(rules) = chain_rules(socket, INET, &chain, op)? else {
        return Ok(());
    };
    if rules.is_empty() {
        // The record was flushed behind our back: find the elements by
        // their comment.
        let udata = nftables::comment_udata(&owner_chain::comment(WHAT, owner));
        for (spec, key, data) in commented_elements(socket, &udata, op)? {
            remove_own(batch, spec, &key, Some(&data));
            let fam = if data.len() == 8 { &V4 } else { &V6 };
            let pp = &key[key.len() - 8..];
            remove_own(batch, &fam.snat, pp, None);
            remove_own(batch, &fam.masq_all, pp, None);
        }
    }
    let flagged = took_over_mappings(&rules);
    let mut given_up = Vec::new();
    for m in record_mappings(&rules) {
        if remove_mapping(socket, batch, &m, op)? && flagged.contains(&m) {
            given_up.push(m.clone());
        }
        removed.push(m);
    }
    reinstate(socket, batch, &chain, &given_up, op)?;
    // The verdict-map elements jumping to the chain: those its rules name,
    // and any other (the chain cannot be deleted while one is left).
    let mut keys = keys_of(&rules);
    if !keys.is_empty() || rules.is_empty() {
        for k in keys_jumping_to(socket, &chain, op)? {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    for k in &keys {
        if holder(socket, k, &chain, op)? == Holder::Owner {
            remove_jump(batch, k, &chain);
        }
    }
    batch.flush_chain(INET, &chain);
    batch.del_chain(INET, &chain);
    Ok(())
}

/// The mappings the owner's chain installs and that the kernel still
/// applies (while the base chains exist), in rule order; `None` if the
/// owner has no chain.
pub fn installed(owner: &NftOwner) -> Result<Option<Vec<Mapping>>, KernelError> {
    let op = "list portmap";
    let Ok(chain) = owner_chain::chain_name(PREFIX, WHAT, owner) else {
        return Ok(None);
    };
    let mut socket = NfSocket::open(op)?;
    let Some(all) = chain_rules(&mut socket, INET, &chain, op)? else {
        return Ok(None);
    };
    // Without the base chains nothing is in force.
    if !bases_exist(&mut socket, op)? {
        return Ok(Some(Vec::new()));
    }
    let mut out = Vec::new();
    for r in &all {
        let Some(m) = mapping_of(r) else {
            continue;
        };
        let in_force = if is_record(r) {
            let (spec, key, data) = data_element(&m);
            current_data(&mut socket, spec, &key, op)?.as_deref() == Some(&data[..])
        } else {
            holder(&mut socket, &key(m.proto, m.host_port), &chain, op)? == Holder::Owner
        };
        if in_force {
            out.push(m);
        }
    }
    Ok(Some(out))
}

/// Every `(container id, ifname)` with a portmap chain for `network` (read
/// from the chain names alone).
pub fn owners(network: &str) -> Result<Vec<(String, String)>, KernelError> {
    owner_chain::owners(INET, PREFIX, network, "list portmap chains")
}

/// Ok when nf_tables answers in this namespace (a table dump succeeds).
pub fn available() -> Result<(), KernelError> {
    owner_chain::available(INET, WHAT, "list tables")
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
    /// The rule matches source addresses (a hairpin marking rule).
    from_saddr: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Meta(u32),
    Payload(u32, (u32, u32)),
}

fn parse(rule: &RuleMessage) -> Parsed {
    let mut p = Parsed::default();
    let mut loaded = None;
    let mut regs: Vec<(u32, &[u8])> = Vec::new();
    for e in owner_chain::exprs(rule) {
        match e {
            Expr::Meta { key } => {
                loaded = Some(Load::Meta(key));
                continue;
            }
            Expr::Payload { base, offset, len } => {
                if base == NFT_PAYLOAD_NETWORK_HEADER
                    && [IPV4_SADDR, IPV6_SADDR].contains(&(offset, len))
                {
                    p.from_saddr = true;
                }
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
fn mapping_of(rule: &RuleMessage) -> Option<Mapping> {
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
    use cni_kernel::owner_chain::test_util::{cmp, expr, meta, payload, rule_attrs, rules};

    const CHAIN: &str = "pm/n/c/eth0";
    const NFT_META_NFPROTO: u32 = 15;

    /// The `meta nfproto` a rule matches: unused by the readers, which tell the
    /// family from the addresses, but kept for tests of the rules' shape.
    fn nfproto_of(rule: &RuleMessage) -> Option<u8> {
        let mut loaded = None;
        for e in owner_chain::exprs(rule) {
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
        let ids: Vec<u32> = PORT_MAPS.iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(PORT_MAPS.iter().all(|m| m.key.len == 2));
    }

    #[test]
    fn data_keys_and_elements_are_padded_concatenations() {
        assert_eq!(PROTO_PORT.datatype, (12 << 6) | 13);
        assert_eq!(V4.addr.key.datatype, (((7 << 6) | 12) << 6) | 13);
        assert_eq!(
            V6.any.data,
            SetData::Data(kt(concat(&[T_V6, T_SERVICE]), 20))
        );
        assert_eq!(
            proto_port(Proto::Udp, 8080),
            [17, 0, 0, 0, 0x1f, 0x90, 0, 0]
        );
        let (spec, key, data) = data_element(&tcp(8080, None, "10.66.0.2", 80));
        assert_eq!(spec.name, "pm4-any");
        assert_eq!(key, proto_port(Proto::Tcp, 8080));
        assert_eq!(data, [10, 66, 0, 2, 0, 80, 0, 0]);
        let (spec, key, data) = data_element(&tcp(8080, Some("fd99::1"), "fd66::2", 80));
        assert_eq!(spec.name, "pm6-addr");
        assert_eq!(key.len(), spec.key.len as usize);
        let SetData::Data(d) = spec.data else {
            panic!("a data map")
        };
        assert_eq!(data.len(), d.len as usize);
        // 0.0.0.0 is any address.
        let (spec, _, _) = data_element(&tcp(80, Some("0.0.0.0"), "10.66.0.2", 80));
        assert_eq!(spec.name, "pm4-any");
        assert_eq!((V4.port_reg(), V6.port_reg()), (9, 12));
        assert_eq!(nftables::comment_udata("ab"), [0, 3, b'a', b'b', 0]);
    }

    #[test]
    fn record_rules_name_no_verdict_map_key() {
        let ms = [tcp(8080, None, "10.66.0.2", 80)];
        let s = setup(&ms, &[], &[]);
        let comment = record_comment(&s.owner, false);
        assert_eq!(comment, "cni-rs portmap record: n c eth0");
        assert_eq!(
            element_comment(&comment),
            owner_chain::comment(WHAT, &s.owner)
        );
        let over = record_comment(&s.owner, true);
        assert_eq!(element_comment(&over), owner_chain::comment(WHAT, &s.owner));
        let written = |comment: &str| {
            let mut batch = Batch::new();
            for r in mapping_rules(&s, &ms[0]) {
                batch.add_rule(INET, CHAIN, r, Some(comment));
            }
            rules(&batch, CHAIN)
        };
        let records = written(&comment);
        assert!(records.iter().all(is_record));
        assert!(records.iter().all(|r| rule_key(r).is_none()));
        assert_eq!(record_mappings(&records), ms);
        let plain = written("cni-rs portmap: n c eth0");
        assert!(!is_record(&plain[0]));
    }

    #[test]
    fn names_and_comments() {
        let o = owner("net1", "ctr-1", "eth0");
        assert_eq!(
            owner_chain::chain_name(PREFIX, WHAT, &o).unwrap(),
            "pm/net1/ctr-1/eth0"
        );
        assert_eq!(
            owner_chain::comment(WHAT, &o),
            "cni-rs portmap: net1 ctr-1 eth0"
        );
        for base in &BASES {
            assert_eq!(
                owner_chain::parse_chain_name(PREFIX, base.name, "net1"),
                None
            );
        }
        assert_eq!(
            owner_chain::parse_chain_name(PREFIX, "masq/net1/ctr-1/eth0", "net1"),
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
            IfnameMatch::Prefix(n) if n == b"eth"
        ));
        assert!(matches!(
            ifname_match("eth0").unwrap(),
            IfnameMatch::Exact(n) if n[..5] == *b"eth0\0"
        ));
    }

    /// The rules of a setup as the kernel would dump them.
    fn built(s: &Setup) -> Vec<RuleMessage> {
        let mut batch = Batch::new();
        for m in plan(s).unwrap() {
            for r in mapping_rules(s, m) {
                batch.add_rule(INET, CHAIN, r, Some("cni-rs portmap: n c eth0"));
            }
        }
        rules(&batch, CHAIN)
    }

    /// What we write for our rules is what the parser reads back (the
    /// kernel dumps rules with the same attributes): every rule names its
    /// key, DNAT rules name their mapping, conditions are not mistaken for
    /// the host address.
    #[test]
    fn rules_we_write_parse_back() {
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
        let keys: Vec<MapKey> = rules.iter().map(|r| rule_key(r).unwrap()).collect();
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
        let mappings: Vec<Mapping> = rules.iter().filter_map(mapping_of).collect();
        let mut back = ms.to_vec();
        back[2].host_ip = None; // 0.0.0.0 is any address
        assert_eq!(mappings, back);
        let families: Vec<u8> = rules.iter().map(|r| nfproto_of(r).unwrap()).collect();
        assert_eq!(&families[..9], &[libc::NFPROTO_IPV4 as u8; 9]);
        assert_eq!(&families[9..], &[libc::NFPROTO_IPV6 as u8; 2]);
        // The marking rules are no mapping, but name the host address.
        let p = parse(&rules[3]);
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

    fn immediate(dreg: u32, value: &[u8]) -> NftExpr {
        e::immediate(dreg, value)
    }

    fn dnat(family: u8, addr_reg: u32, port_reg: u32) -> NftExpr {
        expr(
            "nat",
            &[
                (1, NFT_NAT_DNAT),
                (2, u32::from(family)),
                (3, addr_reg),
                (4, addr_reg),
                (5, port_reg),
                (6, port_reg),
                (7, 3),
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
            mapping_of(&rule),
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
        let m = mapping_of(&rule).unwrap();
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
            assert_eq!(mapping_of(&rule_attrs(CHAIN, &exprs)), None);
        }
        let empty = rule_attrs(CHAIN, &[]);
        assert_eq!(mapping_of(&empty), None);
        assert_eq!(rule_key(&empty), None);
    }
}
