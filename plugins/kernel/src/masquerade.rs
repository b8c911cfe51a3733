//! Masquerade (source NAT to the outgoing interface's address) for container
//! addresses, in our own nftables table `inet cni-rs`, as flat data maps: an
//! ADD or DEL only adds or removes elements (and the owner's record chain,
//! which nothing jumps to), so the kernel has no jump graph to validate on
//! commit and the cost stays flat however many containers are masqueraded.
//! Shared by the plugins that masquerade (bridge, ptp).
//!
//! Once per namespace, in the first ADD's transaction:
//! - data maps `masq4` (`type ipv4_addr : mark`) and `masq6`: each
//!   masqueraded container address, mapped to its owner's tag (see
//!   [`owner_chain::owner_tag`]), with a comment naming the owner;
//! - sets `masq4-local` (`type ipv4_addr . ipv4_addr`, flags interval) and
//!   `masq6-local`: `<address> . <its subnet>` for each masqueraded address,
//!   the traffic that stays on the container's own network;
//! - the nat base chain `masquerading` (postrouting, priority 100, srcnat;
//!   not `masquerade`, which nft 1.0.6 cannot parse as a chain name), with
//!   `meta nfproto ipv4 ip saddr @masq4 ip saddr . ip daddr != @masq4-local
//!   ip daddr != 224.0.0.0/4 masquerade` and the same for IPv6 (`ff00::/8`):
//!   what the reference writes per container (`ip saddr <addr> ip daddr !=
//!   <its subnet> ...`), as three lookups.
//!
//! Per attachment (owner = network name + container id + ifname): its
//! elements in `masq4`/`masq6`, and a regular chain
//! `masq/<network>/<container id>/<ifname>` that nothing jumps to, holding
//! the owner's *record*: one rule per address in the reference's form, with
//! the comment `cni-rs masquerade record: ...`. DEL, CHECK and GC read the
//! owner's addresses from it, with no dump of the maps; if it was flushed by
//! hand, DEL finds the owner's elements by their tag.
//!
//! An address whose element has another owner's tag (left by a missed DEL
//! before the address was handed out again) is taken over by ADD; that
//! owner's later DEL leaves it alone. Every write is one transaction built
//! from what the kernel holds, and built again when the kernel refuses it
//! because a concurrent run changed the same elements
//! ([`owner_chain::transact`]).
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there): run it inside [`crate::Netns::run`] to act
//! elsewhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_netfilter::nftables::RuleMessage;
use nix::libc;

use crate::error::{KernelError, Result};
use crate::nfnetlink::NfSocket;
use crate::nft_expr::{
    self as e, Expr, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_META_NFPROTO, NFT_PAYLOAD_NETWORK_HEADER,
    NFT_REG_1, NFT_REG32_00, NftExpr, exprs,
};
use crate::nftables::{
    BaseHook, Batch, Elem, ElemData, Family, IPV4_ADDR, IPV6_ADDR, KeyType, NF_INET_POST_ROUTING,
    SetData, SetSpec, comment_udata,
};
use crate::owner_chain::{self, OWNER_TAG, chain_rules, element_data};

pub use crate::nftables::TABLE;
pub use crate::owner_chain::{NftOwner, NftOwner as MasqOwner};

const INET: Family = Family::Inet;
const PREFIX: &str = "masq";
const WHAT: &str = "masquerade";
const BASE: &str = "masquerading";
const BASE_HOOK: BaseHook = BaseHook {
    chain_type: "nat",
    hook: NF_INET_POST_ROUTING,
    priority: 100,
};

/// What differs between IPv4 and IPv6.
struct Fam {
    nfproto: i32,
    /// Container address to owner tag.
    map: SetSpec,
    /// `<subnet> . <subnet>` ranges.
    local: SetSpec,
    saddr: (u32, u32),
    daddr: (u32, u32),
    /// Multicast: never masqueraded.
    multicast: IpNetwork,
}

const fn tagged(name: &'static str, id: u32, key: KeyType) -> SetSpec {
    SetSpec {
        name,
        id,
        key,
        data: SetData::Data(OWNER_TAG),
        interval: false,
        fields: &[],
    }
}

/// A concatenation of two addresses of `len` bytes (datatype `(t << 6) | t`).
const fn ranges(name: &'static str, id: u32, t: u32, len: u32, fields: &'static [u32]) -> SetSpec {
    SetSpec {
        name,
        id,
        key: KeyType {
            datatype: (t << 6) | t,
            len: 2 * len,
            byteorder: 2,
        },
        data: SetData::None,
        interval: true,
        fields,
    }
}

fn fam(ip: &IpAddr) -> Fam {
    match ip {
        IpAddr::V4(_) => Fam {
            nfproto: libc::NFPROTO_IPV4,
            map: tagged("masq4", 1, IPV4_ADDR),
            local: ranges("masq4-local", 2, IPV4_ADDR.datatype, 4, &[4, 4]),
            saddr: (12, 4),
            daddr: (16, 4),
            multicast: IpNetwork::new(Ipv4Addr::new(224, 0, 0, 0).into(), 4).expect("a prefix"),
        },
        IpAddr::V6(_) => Fam {
            nfproto: libc::NFPROTO_IPV6,
            map: tagged("masq6", 3, IPV6_ADDR),
            local: ranges("masq6-local", 4, IPV6_ADDR.datatype, 16, &[16, 16]),
            saddr: (8, 16),
            daddr: (24, 16),
            multicast: IpNetwork::new(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0).into(), 8)
                .expect("a prefix"),
        },
    }
}

/// Both families, IPv4 first.
fn families() -> [Fam; 2] {
    [
        fam(&Ipv4Addr::UNSPECIFIED.into()),
        fam(&Ipv6Addr::UNSPECIFIED.into()),
    ]
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

/// Load `field` and go on only when it lies outside `net` (a prefix match
/// is a load, a mask and a compare; a full mask needs no bitwise).
fn not_in(exprs: &mut Vec<NftExpr>, field: (u32, u32), net: &IpNetwork) {
    let (addr, mask) = (octets(net.network()), octets(net.mask()));
    exprs.push(e::payload(NFT_PAYLOAD_NETWORK_HEADER, field, NFT_REG_1));
    if mask.iter().any(|b| *b != 0xff) {
        exprs.push(e::bitwise(&mask, &vec![0u8; mask.len()]));
    }
    exprs.push(e::cmp(NFT_CMP_NEQ, &addr));
}

/// The base chain's rule for one family.
fn dispatch(f: &Fam) -> Vec<NftExpr> {
    let words = f.saddr.1 / 4;
    let mut rule = vec![
        e::meta(NFT_META_NFPROTO, NFT_REG_1),
        e::cmp(NFT_CMP_EQ, &[f.nfproto as u8]),
        e::payload(NFT_PAYLOAD_NETWORK_HEADER, f.saddr, NFT_REG_1),
        e::lookup(f.map.name, f.map.id, NFT_REG_1, None),
        e::payload(NFT_PAYLOAD_NETWORK_HEADER, f.saddr, NFT_REG32_00),
        e::payload(NFT_PAYLOAD_NETWORK_HEADER, f.daddr, NFT_REG32_00 + words),
        e::lookup_not(f.local.name, f.local.id, NFT_REG32_00),
    ];
    not_in(&mut rule, f.daddr, &f.multicast);
    rule.push(e::masquerade());
    rule
}

/// The table, the maps and sets, and the base chain with its rules. The
/// base chain is created exclusively: of concurrent first ADDs one succeeds
/// and the others are refused (EEXIST) and built again without this.
fn setup(batch: &mut Batch) {
    batch.add_table(INET);
    for f in families() {
        batch.add_set(INET, &f.map);
        batch.add_set(INET, &f.local);
    }
    batch.add_chain(INET, BASE, Some(&BASE_HOOK), true);
    for f in families() {
        batch.add_rule(INET, BASE, dispatch(&f), None);
    }
}

/// The record of one container address: the rule the reference writes for
/// it, `ip saddr <addr> ip daddr != <its subnet> ip daddr != <multicast>
/// masquerade`, in a chain nothing jumps to.
fn record(addr: &IpNetwork) -> Vec<NftExpr> {
    let f = fam(&addr.ip());
    let mut rule = vec![
        e::meta(NFT_META_NFPROTO, NFT_REG_1),
        e::cmp(NFT_CMP_EQ, &[f.nfproto as u8]),
        e::payload(NFT_PAYLOAD_NETWORK_HEADER, f.saddr, NFT_REG_1),
        e::cmp(NFT_CMP_EQ, &octets(addr.ip())),
    ];
    not_in(
        &mut rule,
        f.daddr,
        &IpNetwork::new(addr.network(), addr.prefix()).expect("a prefix"),
    );
    not_in(&mut rule, f.daddr, &f.multicast);
    rule.push(e::masquerade());
    rule
}

/// The `<address> . <its subnet>` range of a container address: its first
/// and last keys.
fn local_range(addr: &IpNetwork) -> (Vec<u8>, Vec<u8>) {
    let ip = octets(addr.ip());
    let (first, last) = (octets(addr.network()), octets(addr.broadcast()));
    ([ip.clone(), first].concat(), [ip, last].concat())
}

fn range<'a>(first: &'a [u8], last: &'a [u8]) -> Elem<'a> {
    Elem {
        key_end: Some(last),
        ..Elem::key(first)
    }
}

/// The range of `masqN-local` for address `ip` now, if any: the one holding
/// `ip . ip` (an address is in its own subnet).
fn local_of(
    socket: &mut NfSocket,
    ip: IpAddr,
    op: &'static str,
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let local = fam(&ip).local;
    let point = [octets(ip), octets(ip)].concat();
    Ok(owner_chain::element(socket, INET, local.name, &point, op)?
        .and_then(|e| Some((e.key, e.key_end?))))
}

/// Remove the element of `ip` while it still carries `tag` (see
/// [`owner_chain::owner_tag`]).
fn remove_own(
    socket: &mut NfSocket,
    batch: &mut Batch,
    ip: IpAddr,
    tag: &[u8],
    op: &'static str,
) -> Result<()> {
    let f = fam(&ip);
    let key = octets(ip);
    if owner_chain::remove_if_owned(socket, batch, INET, f.map.name, &key, tag, op)? {
        // The address is the owner's (the batch fails otherwise), so its
        // range is too.
        if let Some((first, last)) = local_of(socket, ip, op)? {
            batch.del_element(INET, f.local.name, &range(&first, &last));
        }
    }
    Ok(())
}

/// Install or replace the owner's masquerade for `addrs` in one
/// transaction (with the setup, the first time in a namespace): its record,
/// its elements (taking an address over from a stale owner), their
/// networks' ranges, and the removal of the elements of addresses it no
/// longer has. With no addresses this is [`del`].
pub fn add(owner: &NftOwner, addrs: &[IpNetwork]) -> Result<(), KernelError> {
    let op = "add masquerade";
    owner_chain::transaction(op, |s, batch| stage_add(s, batch, owner, addrs, op))
}

/// [`add`]'s changes, added to `batch` (read through `socket`), for a
/// caller that commits them together with others in one transaction.
pub fn stage_add(
    socket: &mut NfSocket,
    batch: &mut Batch,
    owner: &NftOwner,
    addrs: &[IpNetwork],
    op: &'static str,
) -> Result<()> {
    if addrs.is_empty() {
        return stage_del(socket, batch, owner, op);
    }
    let chain = owner_chain::chain_name(PREFIX, WHAT, owner)?;
    let tag = owner_chain::owner_tag(&chain);
    let comment = comment_udata(&owner_chain::comment(WHAT, owner));
    let record_comment = owner_chain::comment("masquerade record", owner);
    if owner_chain::chain(socket, INET, BASE, op)? != Some(true) {
        setup(batch);
    }
    let had = recorded(socket, &chain, op)?.unwrap_or_default();
    let mine = |ip: &IpAddr| addrs.iter().any(|a| a.ip() == *ip);
    batch.add_chain(INET, &chain, None, false);
    batch.flush_chain(INET, &chain);
    for addr in addrs {
        batch.add_rule(INET, &chain, record(addr), Some(&record_comment));
    }
    for old in had.iter().filter(|ip| !mine(ip)) {
        remove_own(socket, batch, *old, &tag, op)?;
    }
    for addr in addrs {
        let f = fam(&addr.ip());
        let key = octets(addr.ip());
        match element_data(socket, INET, f.map.name, &key, op)? {
            Some(t) if t == tag => {}
            Some(_) => batch.del_element(INET, f.map.name, &Elem::key(&key)),
            None => {}
        }
        let elem = Elem {
            data: ElemData::Value(&tag),
            udata: Some(&comment),
            ..Elem::key(&key)
        };
        batch.add_element(INET, f.map.name, &elem);
        // Its own network's range, replacing one of another subnet (a
        // stale owner's) for the same address.
        let (first, last) = local_range(addr);
        match local_of(socket, addr.ip(), op)? {
            Some((k, e)) if k == first && e == last => {}
            Some((k, e)) => batch.del_element(INET, f.local.name, &range(&k, &e)),
            None => {}
        }
        batch.add_element(INET, f.local.name, &range(&first, &last));
    }
    Ok(())
}

/// Remove the owner's elements and record in one transaction. Elements of
/// its addresses that another owner took over are left alone. Nothing to
/// remove is success.
pub fn del(owner: &NftOwner) -> Result<(), KernelError> {
    let op = "delete masquerade";
    owner_chain::transaction(op, |s, batch| stage_del(s, batch, owner, op))
}

/// [`del`]'s changes, added to `batch` (read through `socket`).
pub fn stage_del(
    socket: &mut NfSocket,
    batch: &mut Batch,
    owner: &NftOwner,
    op: &'static str,
) -> Result<()> {
    // An owner `add` refuses never had a record; its name could even be
    // another owner's, so touch nothing.
    let Ok(chain) = owner_chain::chain_name(PREFIX, WHAT, owner) else {
        return Ok(());
    };
    let tag = owner_chain::owner_tag(&chain);
    let Some(mut addrs) = recorded(socket, &chain, op)? else {
        return Ok(());
    };
    if addrs.is_empty() {
        // The record was flushed behind our back: find the elements by
        // their tag.
        for f in families() {
            let keys = owner_chain::keys_with_data(socket, INET, f.map.name, &tag, op)?;
            addrs.extend(keys.iter().filter_map(|k| ip_of(k)));
        }
    }
    for ip in addrs {
        remove_own(socket, batch, ip, &tag, op)?;
    }
    batch.flush_chain(INET, &chain);
    batch.del_chain(INET, &chain);
    Ok(())
}

fn ip_of(key: &[u8]) -> Option<IpAddr> {
    match key.len() {
        4 => <[u8; 4]>::try_from(key).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(key).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The addresses of the owner's record, each once, or `None` when it has
/// no record chain.
fn recorded(socket: &mut NfSocket, chain: &str, op: &'static str) -> Result<Option<Vec<IpAddr>>> {
    Ok(chain_rules(socket, INET, chain, op)?.map(|rules| {
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in rules.iter().filter_map(rule_source) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        ips
    }))
}

/// The container addresses the owner masquerades, as the kernel has them:
/// those of its record whose element carries its tag, while the base chain
/// exists; `None` when it has no record chain.
pub fn installed(owner: &NftOwner) -> Result<Option<Vec<IpAddr>>, KernelError> {
    let op = "list masquerade";
    let Ok(chain) = owner_chain::chain_name(PREFIX, WHAT, owner) else {
        return Ok(None);
    };
    let tag = owner_chain::owner_tag(&chain);
    let mut socket = NfSocket::open(op)?;
    let Some(addrs) = recorded(&mut socket, &chain, op)? else {
        return Ok(None);
    };
    if owner_chain::chain(&mut socket, INET, BASE, op)? != Some(true) {
        return Ok(Some(Vec::new()));
    }
    let mut out = Vec::new();
    for ip in addrs {
        let map = fam(&ip).map;
        if element_data(&mut socket, INET, map.name, &octets(ip), op)?.as_deref() == Some(&tag[..])
        {
            out.push(ip);
        }
    }
    Ok(Some(out))
}

/// The source address a masquerade record matches: the value of the first
/// `cmp eq` on the IPv4 or IPv6 source address loaded by a payload expression.
fn rule_source(rule: &RuleMessage) -> Option<IpAddr> {
    let mut loaded = None; // (offset, len) of the last network-header load
    for e in exprs(rule) {
        match e {
            Expr::Payload {
                base: NFT_PAYLOAD_NETWORK_HEADER,
                offset,
                len,
            } => loaded = Some((offset, len)),
            Expr::Cmp {
                op: NFT_CMP_EQ,
                value,
            } => {
                let addr = match loaded {
                    Some((12, 4)) => <[u8; 4]>::try_from(value).ok().map(IpAddr::from),
                    Some((8, 16)) => <[u8; 16]>::try_from(value).ok().map(IpAddr::from),
                    _ => None,
                };
                if addr.is_some() {
                    return addr;
                }
                loaded = None;
            }
            _ => loaded = None,
        }
    }
    None
}

/// Every `(container id, ifname)` with a masquerade record for `network`
/// (read from the chain names alone).
pub fn owners(network: &str) -> Result<Vec<(String, String)>, KernelError> {
    owner_chain::owners(INET, PREFIX, network, "list masquerade chains")
}

/// Ok when nf_tables answers in this namespace (a table dump succeeds).
pub fn available() -> Result<(), KernelError> {
    owner_chain::available(INET, WHAT, "list tables")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner_chain::test_util::{cmp, expr, rule_attrs, rules};

    fn owner<'a>(network: &'a str, cid: &'a str, ifname: &'a str) -> MasqOwner<'a> {
        MasqOwner {
            network,
            container_id: cid,
            ifname,
        }
    }

    #[test]
    fn keys_are_addresses_in_the_map_of_their_family() {
        let [v4, v6] = families();
        assert_eq!((v4.map.name, v4.map.key.len), ("masq4", 4));
        assert_eq!((v6.map.name, v6.map.key.len), ("masq6", 16));
        assert_eq!(v4.map.data, SetData::Data(OWNER_TAG));
        assert_eq!((v4.local.key.len, v4.local.fields), (8, &[4, 4][..]));
        assert_eq!((v6.local.key.len, v6.local.fields), (32, &[16, 16][..]));
        let ids = [v4.map.id, v4.local.id, v6.map.id, v6.local.id];
        assert!(
            ids.iter()
                .all(|i| ids.iter().filter(|j| *j == i).count() == 1)
        );
        let (first, last) = local_range(&"10.1.0.5/16".parse().unwrap());
        assert_eq!(first, [10, 1, 0, 5, 10, 1, 0, 0]);
        assert_eq!(last, [10, 1, 0, 5, 10, 1, 255, 255]);
        assert_eq!(ip_of(&[10, 1, 0, 5]), Some("10.1.0.5".parse().unwrap()));
        assert_eq!(ip_of(&[10, 1, 0]), None);
    }

    #[test]
    fn names_comments_and_tags() {
        let o = owner("net1", "ctr-1", "eth0");
        let chain = owner_chain::chain_name(PREFIX, WHAT, &o).unwrap();
        assert_eq!(chain, "masq/net1/ctr-1/eth0");
        assert_eq!(owner_chain::parse_chain_name(PREFIX, BASE, "net1"), None);
        assert_eq!(
            owner_chain::comment(WHAT, &o),
            "cni-rs masquerade: net1 ctr-1 eth0"
        );
        let long = "n".repeat(250);
        let long_id = "c".repeat(250);
        let e = owner_chain::chain_name(PREFIX, WHAT, &owner(&long, &long_id, "eth0")).unwrap_err();
        assert!(e.to_string().contains("too long for masquerade"), "{e}");
        // Tags: one per chain name.
        let tag = owner_chain::owner_tag(&chain);
        assert_ne!(tag, owner_chain::owner_tag("masq/net1/ctr-2/eth0"));
        assert_eq!(tag, owner_chain::owner_tag(&chain));
    }

    fn payload(offset: u32, len: u32) -> NftExpr {
        crate::owner_chain::test_util::payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len)
    }

    fn rule_of(exprs: &[NftExpr]) -> RuleMessage {
        rule_attrs("masq/n/c/eth0", exprs)
    }

    #[test]
    fn the_source_address_is_read_from_kernel_shaped_rules() {
        let meta = crate::owner_chain::test_util::meta(15);
        let v4 = rule_of(&[
            meta.clone(),
            cmp(NFT_CMP_EQ, &[2]),
            payload(12, 4),
            cmp(NFT_CMP_EQ, &[10, 1, 0, 5]),
            payload(16, 4),
            cmp(NFT_CMP_NEQ, &[10, 1, 0, 0]),
            expr("masq", &[]),
        ]);
        assert_eq!(rule_source(&v4), Some("10.1.0.5".parse().unwrap()));

        let ip6: Ipv6Addr = "fd00::5".parse().unwrap();
        let v6 = rule_of(&[
            meta.clone(),
            cmp(NFT_CMP_EQ, &[10]),
            payload(8, 16),
            cmp(NFT_CMP_EQ, &ip6.octets()),
            expr("masq", &[]),
        ]);
        assert_eq!(rule_source(&v6), Some(IpAddr::V6(ip6)));

        // A destination match, a `!=` on the source, or a compare not right
        // after the load is no source address.
        let none = rule_of(&[
            payload(16, 4),
            cmp(NFT_CMP_EQ, &[10, 1, 0, 5]),
            payload(12, 4),
            cmp(NFT_CMP_NEQ, &[10, 1, 0, 6]),
            payload(12, 4),
            expr("bitwise", &[]),
            cmp(NFT_CMP_EQ, &[10, 1, 0, 7]),
            expr("masq", &[]),
        ]);
        assert_eq!(rule_source(&none), None);
        assert_eq!(rule_source(&rule_of(&[])), None);
    }

    /// What we write for our records is what the parser reads back (the
    /// kernel dumps rules with the same attributes), and a record is never
    /// mistaken for another address.
    #[test]
    fn records_we_write_parse_back() {
        for (addr, ip) in [
            ("10.1.0.5/16", "10.1.0.5"),
            ("10.1.0.5/32", "10.1.0.5"),
            ("fd00:1::5/64", "fd00:1::5"),
            ("fd00:1::5/128", "fd00:1::5"),
        ] {
            let mut batch = Batch::new();
            let chain = "masq/n/c/eth0";
            batch.add_rule(INET, chain, record(&addr.parse().unwrap()), Some("c"));
            let written = rules(&batch, chain).remove(0);
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(rule_source(&written), Some(ip), "{addr}");
        }
        // The base chain's rules name no address.
        let mut batch = Batch::new();
        setup(&mut batch);
        let base = rules(&batch, BASE);
        assert_eq!(base.len(), 2);
        assert!(base.iter().all(|r| rule_source(r).is_none()));
    }
}
