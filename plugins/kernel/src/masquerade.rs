//! Masquerade (source NAT to the outgoing interface's address) for container
//! addresses, in our own nftables table `inet cni-rs`.
//!
//! Each attachment (owner = network name + container id + ifname) gets its
//! own nat base chain `masq/<network>/<container id>/<ifname>`, hooked at
//! postrouting with priority 100 (srcnat), holding one rule per container
//! address: `ip saddr <addr> ip daddr != <its subnet> ip daddr != 224.0.0.0/4
//! masquerade` (for IPv6 `ff00::/8`), each with a comment naming the owner.
//! Chain naming, the one-transaction writes and the reads are shared with
//! [`crate::spoofcheck`] (see `nft.rs`).
//!
//! One base chain per owner costs nothing at packet time: nat chains are only
//! evaluated for the first packet of a connection, and evaluation stops at the
//! first masquerade, so N base chains cost what N rules in one chain cost.
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there): run it inside [`crate::Netns::run`] to act
//! elsewhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Ipv4HeaderField, Ipv6HeaderField, Masquerade, Meta, NetworkHeaderField,
    Payload,
};
use nftnl::{Chain, ChainType, Hook, MsgType, ProtoFamily, Rule};
use nix::libc;

use crate::error::{KernelError, Result};
use crate::nfnetlink::Attrs;
use crate::nft::{self, ChainKind, Expr, NFT_CMP_EQ, NFT_PAYLOAD_NETWORK_HEADER};

pub use crate::nft::{NftOwner, NftOwner as MasqOwner, TABLE};

/// Chains `masq/<network>/<container id>/<ifname>` in `inet cni-rs`, nat
/// hooked at postrouting with priority 100 (srcnat).
const KIND: ChainKind = ChainKind {
    family: ProtoFamily::Inet,
    prefix: "masq",
    what: "masquerade",
    chain_type: ChainType::Nat,
    hook: Hook::PostRouting,
    priority: 100,
};
/// Offsets and lengths of the source address in the IPv4 and IPv6 headers.
const IPV4_SADDR: (u32, u32) = (12, 4);
const IPV6_SADDR: (u32, u32) = (8, 16);

/// Load `field` and go on only when it lies outside `net`/`mask` (a prefix
/// match is a load, a mask and a compare; a full mask needs no bitwise).
fn not_in(rule: &mut Rule, field: NetworkHeaderField, net: &[u8], mask: &[u8]) {
    rule.add_expr(&Payload::Network(field));
    if mask.iter().any(|b| *b != 0xff) {
        let net: Vec<u8> = net.iter().zip(mask).map(|(n, m)| n & m).collect();
        rule.add_expr(&Bitwise::new(mask, &vec![0u8; mask.len()][..]));
        rule.add_expr(&Cmp::new(CmpOp::Neq, &net[..]));
    } else {
        rule.add_expr(&Cmp::new(CmpOp::Neq, net));
    }
}

/// The masquerade rule for one container address, in `chain`.
fn rule<'a>(chain: &'a Chain<'a>, addr: &IpNetwork, comment: &str) -> Rule<'a> {
    let mut rule = Rule::new(chain);
    rule.add_expr(&Meta::NfProto);
    match addr {
        IpNetwork::V4(n) => {
            use Ipv4HeaderField::{Daddr, Saddr};
            rule.add_expr(&Cmp::new(CmpOp::Eq, libc::NFPROTO_IPV4 as u8));
            rule.add_expr(&Payload::Network(NetworkHeaderField::Ipv4(Saddr)));
            rule.add_expr(&Cmp::new(CmpOp::Eq, n.ip()));
            let daddr = NetworkHeaderField::Ipv4(Daddr);
            not_in(&mut rule, daddr, &n.network().octets(), &n.mask().octets());
            let multicast = Ipv4Addr::new(224, 0, 0, 0).octets();
            not_in(
                &mut rule,
                daddr,
                &multicast,
                &Ipv4Addr::new(240, 0, 0, 0).octets(),
            );
        }
        IpNetwork::V6(n) => {
            use Ipv6HeaderField::{Daddr, Saddr};
            rule.add_expr(&Cmp::new(CmpOp::Eq, libc::NFPROTO_IPV6 as u8));
            rule.add_expr(&Payload::Network(NetworkHeaderField::Ipv6(Saddr)));
            rule.add_expr(&Cmp::new(CmpOp::Eq, n.ip()));
            let daddr = NetworkHeaderField::Ipv6(Daddr);
            not_in(&mut rule, daddr, &n.network().octets(), &n.mask().octets());
            let multicast = Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0).octets();
            not_in(&mut rule, daddr, &multicast, &multicast);
        }
    }
    rule.add_expr(&Masquerade);
    nft::set_comment(&mut rule, comment);
    rule
}

/// Install or replace the owner's rules for `addrs` in one transaction:
/// create the table and the chain if missing, flush the chain, add one rule
/// per address. With no addresses this is [`del`].
pub fn add(owner: &NftOwner, addrs: &[IpNetwork]) -> Result<(), KernelError> {
    if addrs.is_empty() {
        return del(owner);
    }
    KIND.replace(owner, "add masquerade", |batch, chain, comment| {
        for addr in addrs {
            batch.add(&rule(chain, addr, comment), MsgType::Add);
        }
    })
}

/// Remove the owner's chain and its rules in one transaction (flush, then
/// delete the chain). Nothing to remove (no chain, no table) is success.
pub fn del(owner: &NftOwner) -> Result<(), KernelError> {
    KIND.delete(owner, "delete masquerade")
}

/// The container addresses the owner's chain masquerades, as the kernel has
/// them, or `None` when the chain does not exist.
pub fn installed(owner: &NftOwner) -> Result<Option<Vec<IpAddr>>, KernelError> {
    let rules = KIND.rules(owner, "list masquerade")?;
    Ok(rules.map(|rules| {
        rules
            .iter()
            .filter_map(|r| rule_source(r.attrs()))
            .collect()
    }))
}

/// The source address a masquerade rule matches: the value of the first
/// `cmp eq` on the IPv4 or IPv6 source address loaded by a payload expression.
fn rule_source(rule: Attrs) -> Option<IpAddr> {
    let mut loaded = None; // (offset, len) of the last network-header load
    for e in nft::exprs(rule) {
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

/// Every `(container id, ifname)` with a masquerade chain for `network`.
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
    use crate::nft::test_util::{cmp, expr, rule_attrs, written};
    use crate::nft::{NFT_CMP_NEQ, TABLE, cstring};
    use nftnl::Table;

    fn owner<'a>(network: &'a str, cid: &'a str, ifname: &'a str) -> MasqOwner<'a> {
        MasqOwner {
            network,
            container_id: cid,
            ifname,
        }
    }

    #[test]
    fn names_and_comments() {
        let o = owner("net1", "ctr-1", "eth0");
        assert_eq!(KIND.chain_name(&o).unwrap(), "masq/net1/ctr-1/eth0");
        assert_eq!(KIND.comment(&o), "cni-rs masquerade: net1 ctr-1 eth0");
        let long = "n".repeat(250);
        let e = KIND.chain_name(&owner(&long, "c", "eth0")).unwrap_err();
        assert!(e.to_string().contains("too long for masquerade"), "{e}");
    }

    fn payload(offset: u32, len: u32) -> Vec<u8> {
        crate::nft::test_util::payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len)
    }

    fn rule_of(exprs: &[Vec<u8>]) -> Vec<u8> {
        rule_attrs("masq/n/c/eth0", exprs)
    }

    #[test]
    fn the_source_address_is_read_from_kernel_shaped_rules() {
        let meta = crate::nft::test_util::meta(15);
        let v4 = rule_of(&[
            meta.clone(),
            cmp(NFT_CMP_EQ, &[2]),
            payload(12, 4),
            cmp(NFT_CMP_EQ, &[10, 1, 0, 5]),
            payload(16, 4),
            cmp(NFT_CMP_NEQ, &[10, 1, 0, 0]),
            expr("masq", &[]),
        ]);
        assert_eq!(rule_source(Attrs(&v4)), Some("10.1.0.5".parse().unwrap()));

        let ip6: Ipv6Addr = "fd00::5".parse().unwrap();
        let v6 = rule_of(&[
            meta.clone(),
            cmp(NFT_CMP_EQ, &[10]),
            payload(8, 16),
            cmp(NFT_CMP_EQ, &ip6.octets()),
            expr("masq", &[]),
        ]);
        assert_eq!(rule_source(Attrs(&v6)), Some(IpAddr::V6(ip6)));

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
        assert_eq!(rule_source(Attrs(&none)), None);
        assert_eq!(rule_source(Attrs(&rule_of(&[]))), None);
        assert_eq!(rule_source(Attrs(&[])), None);
    }

    /// What nftnl writes for our rules is what the parser reads back (the
    /// kernel dumps rules with the same attributes).
    #[test]
    fn rules_built_with_nftnl_parse_back() {
        let table = Table::new(cstring(TABLE), ProtoFamily::Inet);
        let chain = Chain::new(c"masq/n/c/eth0", &table);
        for (addr, ip) in [
            ("10.1.0.5/16", "10.1.0.5"),
            ("10.1.0.5/32", "10.1.0.5"),
            ("fd00:1::5/64", "fd00:1::5"),
            ("fd00:1::5/128", "fd00:1::5"),
        ] {
            let rule = rule(
                &chain,
                &addr.parse().unwrap(),
                "cni-rs masquerade: n c eth0",
            );
            let attrs = written(&rule, "masq/n/c/eth0");
            assert_eq!(
                rule_source(Attrs(&attrs)),
                Some(ip.parse().unwrap()),
                "{addr}"
            );
        }
    }
}
