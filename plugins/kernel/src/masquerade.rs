//! Masquerade (source NAT to the outgoing interface's address) for container
//! addresses, in our own nftables table `inet cni-rs`.
//!
//! One nat base chain `masquerading`, hooked at postrouting with priority
//! 100 (srcnat), policy accept, dispatches on the source address through two
//! verdict maps: `meta nfproto ipv4 ip saddr vmap @masq4` and
//! `meta nfproto ipv6 ip6 saddr vmap @masq6` (`masq4 { type ipv4_addr :
//! verdict }`, `masq6 { type ipv6_addr : verdict }`). (Not `masquerade`: nft
//! 1.0.6 cannot parse a chain of that name, so `nft list ruleset` would no
//! longer load back.)
//!
//! Each attachment (owner = network name + container id + ifname) gets a
//! regular chain `masq/<network>/<container id>/<ifname>` holding one rule
//! per container address, `ip saddr <addr> ip daddr != <its subnet> ip daddr
//! != 224.0.0.0/4 masquerade` (for IPv6 `ff00::/8`), each with a comment
//! naming the owner, and one map element per address, `<addr> : jump
//! masq/...`. The `ip saddr` match repeats the map's key: it is how DEL and
//! CHECK recover the owner's keys from its own chain. Setup, the
//! one-transaction writes and the reads are shared with
//! the bridge's spoof check (see `owner_chain.rs`).
//!
//! At packet time: nat chains are only evaluated for the first packet of a
//! connection, and then the base chain costs one hash lookup whatever the
//! number of containers (a base chain per owner, as before, hit the kernel's
//! limit of 1024 hook entries per hook, and walked every owner).
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there): run it inside [`crate::Netns::run`] to act
//! elsewhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_netfilter::nftables::RuleMessage;
use nix::libc;

use crate::error::{KernelError, Result};
use crate::nft_expr::{
    self as e, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_META_NFPROTO, NFT_PAYLOAD_NETWORK_HEADER, NFT_REG_1,
    NFT_REG_VERDICT, NftExpr,
};
use crate::nftables::{
    BaseHook, Batch, Family, IPV4_ADDR, IPV6_ADDR, NF_INET_POST_ROUTING, SetSpec,
};
use crate::owner_chain::{self, BaseChain, ChainKind, Expr, MapKey};

pub use crate::owner_chain::{NftOwner, NftOwner as MasqOwner, TABLE};

const MASQ4: SetSpec = owner_chain::verdict_map("masq4", IPV4_ADDR, 1);
const MASQ6: SetSpec = owner_chain::verdict_map("masq6", IPV6_ADDR, 2);

/// Base chain `masquerading` in `inet cni-rs`, nat hooked at postrouting
/// with priority 100 (srcnat), dispatching to the regular chains
/// `masq/<network>/<container id>/<ifname>`.
const KIND: ChainKind = ChainKind {
    family: Family::Inet,
    prefix: "masq",
    what: "masquerade",
    bases: &[BaseChain {
        name: "masquerading",
        hook: BaseHook {
            chain_type: "nat",
            hook: NF_INET_POST_ROUTING,
            priority: 100,
        },
        rules: dispatch,
    }],
    maps: &[MASQ4, MASQ6],
    setup: |_| {},
    rule_key: |rule| rule_source(rule).map(|ip| key(&ip)),
};

/// The base chain's rules: `meta nfproto ipv4 ip saddr vmap @masq4` and
/// `meta nfproto ipv6 ip6 saddr vmap @masq6`.
fn dispatch(batch: &mut Batch, chain: &str) {
    for (nfproto, saddr, map) in [
        (libc::NFPROTO_IPV4, IPV4_SADDR, &MASQ4),
        (libc::NFPROTO_IPV6, IPV6_SADDR, &MASQ6),
    ] {
        let exprs = vec![
            e::meta(NFT_META_NFPROTO, NFT_REG_1),
            e::cmp(NFT_CMP_EQ, &[nfproto as u8]),
            e::payload(NFT_PAYLOAD_NETWORK_HEADER, saddr, NFT_REG_1),
            e::lookup(map.name, map.id, NFT_REG_1, Some(NFT_REG_VERDICT)),
        ];
        batch.add_rule(Family::Inet, chain, exprs, None);
    }
}

/// An address's key: in `masq4` or `masq6`.
fn key(ip: &IpAddr) -> MapKey {
    match ip {
        IpAddr::V4(ip) => MapKey {
            map: MASQ4.name,
            key: ip.octets().to_vec(),
        },
        IpAddr::V6(ip) => MapKey {
            map: MASQ6.name,
            key: ip.octets().to_vec(),
        },
    }
}
/// Offsets and lengths of the source and destination addresses in the IPv4
/// and IPv6 headers.
const IPV4_SADDR: (u32, u32) = (12, 4);
const IPV6_SADDR: (u32, u32) = (8, 16);
const IPV4_DADDR: (u32, u32) = (16, 4);
const IPV6_DADDR: (u32, u32) = (24, 16);

/// Load `field` and go on only when it lies outside `net`/`mask` (a prefix
/// match is a load, a mask and a compare; a full mask needs no bitwise).
fn not_in(exprs: &mut Vec<NftExpr>, field: (u32, u32), net: &[u8], mask: &[u8]) {
    exprs.push(e::payload(NFT_PAYLOAD_NETWORK_HEADER, field, NFT_REG_1));
    if mask.iter().any(|b| *b != 0xff) {
        let net: Vec<u8> = net.iter().zip(mask).map(|(n, m)| n & m).collect();
        exprs.push(e::bitwise(mask, &vec![0u8; mask.len()]));
        exprs.push(e::cmp(NFT_CMP_NEQ, &net));
    } else {
        exprs.push(e::cmp(NFT_CMP_NEQ, net));
    }
}

/// The masquerade rule for one container address.
fn rule(addr: &IpNetwork) -> Vec<NftExpr> {
    let mut exprs = vec![e::meta(NFT_META_NFPROTO, NFT_REG_1)];
    match addr {
        IpNetwork::V4(n) => {
            exprs.push(e::cmp(NFT_CMP_EQ, &[libc::NFPROTO_IPV4 as u8]));
            exprs.push(e::payload(
                NFT_PAYLOAD_NETWORK_HEADER,
                IPV4_SADDR,
                NFT_REG_1,
            ));
            exprs.push(e::cmp(NFT_CMP_EQ, &n.ip().octets()));
            not_in(
                &mut exprs,
                IPV4_DADDR,
                &n.network().octets(),
                &n.mask().octets(),
            );
            let multicast = Ipv4Addr::new(224, 0, 0, 0).octets();
            let mask = Ipv4Addr::new(240, 0, 0, 0).octets();
            not_in(&mut exprs, IPV4_DADDR, &multicast, &mask);
        }
        IpNetwork::V6(n) => {
            exprs.push(e::cmp(NFT_CMP_EQ, &[libc::NFPROTO_IPV6 as u8]));
            exprs.push(e::payload(
                NFT_PAYLOAD_NETWORK_HEADER,
                IPV6_SADDR,
                NFT_REG_1,
            ));
            exprs.push(e::cmp(NFT_CMP_EQ, &n.ip().octets()));
            not_in(
                &mut exprs,
                IPV6_DADDR,
                &n.network().octets(),
                &n.mask().octets(),
            );
            let multicast = Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0).octets();
            not_in(&mut exprs, IPV6_DADDR, &multicast, &multicast);
        }
    }
    exprs.push(e::masquerade());
    exprs
}

/// Install or replace the owner's rules for `addrs` in one transaction
/// (after setting up the base chain and maps once per namespace): create
/// the owner's chain if missing, flush it, add one rule per address, and
/// map each address to the chain (taking the address over from another
/// owner's chain it may still map to, and dropping the owner's elements of
/// addresses it no longer has). With no addresses this is [`del`].
pub fn add(owner: &NftOwner, addrs: &[IpNetwork]) -> Result<(), KernelError> {
    if addrs.is_empty() {
        return del(owner);
    }
    let keys: Vec<MapKey> = addrs.iter().map(|a| key(&a.ip())).collect();
    KIND.replace(owner, "add masquerade", &keys, |batch, chain, comment| {
        for addr in addrs {
            batch.add_rule(Family::Inet, chain, rule(addr), Some(comment));
        }
    })
}

/// Remove the owner's map elements and chain in one transaction. Elements
/// of its addresses that now map to another owner's chain are left alone.
/// Nothing to remove (no chain, no table) is success.
pub fn del(owner: &NftOwner) -> Result<(), KernelError> {
    KIND.delete(owner, "delete masquerade")
}

/// The container addresses the owner masquerades, as the kernel has them:
/// those with a rule in the owner's chain and a map element jumping to it;
/// `None` when the chain does not exist.
pub fn installed(owner: &NftOwner) -> Result<Option<Vec<IpAddr>>, KernelError> {
    let rules = KIND.rules(owner, "list masquerade")?;
    Ok(rules.map(|rules| rules.iter().filter_map(rule_source).collect()))
}

/// The source address a masquerade rule matches: the value of the first
/// `cmp eq` on the IPv4 or IPv6 source address loaded by a payload expression.
fn rule_source(rule: &RuleMessage) -> Option<IpAddr> {
    let mut loaded = None; // (offset, len) of the last network-header load
    for e in owner_chain::exprs(rule) {
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
                    Some(IPV4_SADDR) => <[u8; 4]>::try_from(value).ok().map(IpAddr::from),
                    Some(IPV6_SADDR) => <[u8; 16]>::try_from(value).ok().map(IpAddr::from),
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

/// Every `(container id, ifname)` with a masquerade chain for `network`
/// (read from the chain names alone).
pub fn owners(network: &str) -> Result<Vec<(String, String)>, KernelError> {
    KIND.owners(network, "list masquerade chains")
}

/// Ok when nf_tables answers in this namespace (a table dump succeeds).
pub fn available() -> Result<(), KernelError> {
    KIND.available("list tables")
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
        let v4 = key(&"10.1.0.5".parse().unwrap());
        assert_eq!((v4.map, v4.key.as_slice()), ("masq4", &[10u8, 1, 0, 5][..]));
        let v6 = key(&"fd00::5".parse().unwrap());
        assert_eq!(v6.map, "masq6");
        assert_eq!(v6.key.len(), 16);
        assert_eq!(KIND.maps.len(), 2);
        assert_eq!(KIND.maps[0].key.len, 4);
        assert_eq!(KIND.maps[1].key.len, 16);
        assert_ne!(MASQ4.id, MASQ6.id);
    }

    #[test]
    fn names_and_comments() {
        let o = owner("net1", "ctr-1", "eth0");
        assert_eq!(KIND.chain_name(&o).unwrap(), "masq/net1/ctr-1/eth0");
        assert_eq!(KIND.parse_chain_name(KIND.bases[0].name, "net1"), None);
        assert_eq!(KIND.comment(&o), "cni-rs masquerade: net1 ctr-1 eth0");
        let long = "n".repeat(250);
        let e = KIND.chain_name(&owner(&long, "c", "eth0")).unwrap_err();
        assert!(e.to_string().contains("too long for masquerade"), "{e}");
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

    /// What we write for our rules is what the parser reads back (the
    /// kernel dumps rules with the same attributes).
    #[test]
    fn rules_we_write_parse_back() {
        for (addr, ip) in [
            ("10.1.0.5/16", "10.1.0.5"),
            ("10.1.0.5/32", "10.1.0.5"),
            ("fd00:1::5/64", "fd00:1::5"),
            ("fd00:1::5/128", "fd00:1::5"),
        ] {
            let mut batch = Batch::new();
            let chain = "masq/n/c/eth0";
            batch.add_rule(Family::Inet, chain, rule(&addr.parse().unwrap()), Some("c"));
            let written = rules(&batch, chain).remove(0);
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(rule_source(&written), Some(ip), "{addr}");
            // The key DEL and CHECK look up is the element ADD writes.
            assert_eq!((KIND.rule_key)(&written), Some(key(&ip)), "{addr}");
        }
    }
}
