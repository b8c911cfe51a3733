//! MAC spoof check (the bridge's `macspoofchk`): frames entering a bridge
//! from a container's host-side veth with a source MAC other than the
//! container interface's are dropped. In our own table `bridge cni-rs`.
//!
//! Each attachment (owner = network name + container id + ifname) gets its
//! own filter base chain `spoof/<network>/<container id>/<ifname>`, hooked at
//! bridge prerouting with priority -300, policy accept, holding one rule:
//! `iifname "<host veth>" ether saddr != <container mac> counter drop`, with
//! a comment naming the owner. Chain naming, the one-transaction writes and
//! the reads are shared with [`crate::masquerade`] (see `nft.rs`).
//!
//! Like the reference plugin (`pkg/link/spoofcheck.go`), only the Ethernet
//! source is checked; ARP sender addresses are not. Unlike it, everything is
//! in one base chain per owner rather than a shared base chain jumping to two
//! regular chains per owner, so DEL is one transaction that needs no listing
//! of the shared chain, and works without the container's netns. The cost at
//! packet time is one `iifname` compare per attachment on the bridge, as in
//! the reference's shared chain.
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there): run it inside [`crate::Netns::run`] to act
//! elsewhere.

use nftnl::expr::{Cmp, CmpOp, Counter, LLHeaderField, Meta, Payload, Verdict};
use nftnl::{Chain, ChainType, Hook, MsgType, ProtoFamily, Rule};
use nix::libc;

use crate::error::{KernelError, Result};
use crate::nfnetlink::Attrs;
use crate::nft::{
    self, ChainKind, Expr, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_META_IIFNAME, NFT_PAYLOAD_LL_HEADER,
};

pub use crate::nft::{NftOwner, TABLE};

/// Chains `spoof/<network>/<container id>/<ifname>` in `bridge cni-rs`,
/// filter hooked at prerouting with priority -300 (as the reference).
const KIND: ChainKind = ChainKind {
    family: ProtoFamily::Bridge,
    prefix: "spoof",
    what: "macspoofchk",
    chain_type: ChainType::Filter,
    hook: Hook::PreRouting,
    priority: -300,
};
/// IFNAMSIZ: an interface name and its NUL; `meta iifname` loads this much.
const IFNAMSIZ: usize = 16;
/// Offset and length of the source address in the Ethernet header.
const ETHER_SADDR: (u32, u32) = (6, 6);

/// `iifname "<host_ifname>" ether saddr != <mac> counter drop`, in `chain`.
fn rule<'a>(chain: &'a Chain<'a>, host_ifname: &str, mac: [u8; 6], comment: &str) -> Rule<'a> {
    // The name NUL-padded to IFNAMSIZ, as nft writes it: an exact match.
    let mut name = [0u8; IFNAMSIZ];
    name[..host_ifname.len()].copy_from_slice(host_ifname.as_bytes());
    let mut rule = Rule::new(chain);
    rule.add_expr(&Meta::IifName);
    rule.add_expr(&Cmp::new(CmpOp::Eq, &name[..]));
    rule.add_expr(&Payload::LinkLayer(LLHeaderField::Saddr));
    rule.add_expr(&Cmp::new(CmpOp::Neq, &mac[..]));
    rule.add_expr(&Counter);
    rule.add_expr(&Verdict::Drop);
    nft::set_comment(&mut rule, comment);
    rule
}

/// Install or replace the owner's check in one transaction: create the
/// table and the chain if missing, flush the chain, add the rule dropping
/// frames from `host_ifname` whose source is not `mac`.
pub fn add(owner: &NftOwner, host_ifname: &str, mac: [u8; 6]) -> Result<(), KernelError> {
    if host_ifname.is_empty() || host_ifname.len() >= IFNAMSIZ || host_ifname.contains('\0') {
        return Err(KernelError::InvalidIfname(host_ifname.to_owned()));
    }
    KIND.replace(owner, "add macspoofchk", |batch, chain, comment| {
        batch.add(&rule(chain, host_ifname, mac, comment), MsgType::Add);
    })
}

/// Remove the owner's chain and its rule in one transaction. Nothing to
/// remove (no chain, no table) is success.
pub fn del(owner: &NftOwner) -> Result<(), KernelError> {
    KIND.delete(owner, "delete macspoofchk")
}

/// The host interface and the MAC the owner's chain enforces, as the kernel
/// has them, or `None` when there is no chain or no such rule in it.
pub fn installed(owner: &NftOwner) -> Result<Option<(String, [u8; 6])>, KernelError> {
    let rules = KIND.rules(owner, "list macspoofchk")?;
    Ok(rules.and_then(|rules| rules.iter().find_map(|r| rule_check(r.attrs()))))
}

/// What a spoof check rule enforces: the name an `iifname ==` compares with
/// exactly, and the address an `ether saddr !=` compares with, in a rule that
/// drops.
fn rule_check(rule: Attrs) -> Option<(String, [u8; 6])> {
    let (mut ifname, mut mac, mut drops) = (None, None, false);
    let mut loaded = None;
    for e in nft::exprs(rule) {
        match e {
            Expr::Meta { key } => {
                loaded = Some(Expr::Meta { key });
                continue;
            }
            Expr::Payload { .. } => {
                loaded = Some(e);
                continue;
            }
            Expr::Cmp {
                op: NFT_CMP_EQ,
                value,
            } if loaded
                == Some(Expr::Meta {
                    key: NFT_META_IIFNAME,
                }) =>
            {
                // Exact only when the NUL is compared too; else a prefix.
                let end = value.iter().position(|b| *b == 0)?;
                ifname = Some(String::from_utf8(value[..end].to_vec()).ok()?);
            }
            Expr::Cmp {
                op: NFT_CMP_NEQ,
                value,
            } if loaded
                == Some(Expr::Payload {
                    base: NFT_PAYLOAD_LL_HEADER,
                    offset: ETHER_SADDR.0,
                    len: ETHER_SADDR.1,
                }) =>
            {
                mac = Some(<[u8; 6]>::try_from(value).ok()?);
            }
            Expr::Verdict(libc::NF_DROP) => drops = true,
            _ => {}
        }
        loaded = None;
    }
    ifname.zip(mac).filter(|(i, _)| drops && !i.is_empty())
}

/// Every `(container id, ifname)` with a spoof check chain for `network`.
pub fn owners(network: &str) -> Result<Vec<(String, String)>, KernelError> {
    KIND.owners(network, "list macspoofchk chains")
}

/// Ok when nf_tables answers for the bridge family in this namespace.
pub fn available() -> Result<(), KernelError> {
    KIND.available("list bridge tables")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::test_util::{cmp, expr, meta, payload, rule_attrs, verdict, written};
    use crate::nft::{TABLE, cstring};
    use nftnl::Table;

    const MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0, 0, 5];
    const CHAIN: &str = "spoof/n/c/eth0";

    fn owner<'a>(network: &'a str, cid: &'a str, ifname: &'a str) -> NftOwner<'a> {
        NftOwner {
            network,
            container_id: cid,
            ifname,
        }
    }

    #[test]
    fn names_and_comments() {
        let o = owner("net1", "ctr-1", "eth0");
        assert_eq!(KIND.chain_name(&o).unwrap(), "spoof/net1/ctr-1/eth0");
        assert_eq!(KIND.comment(&o), "cni-rs macspoofchk: net1 ctr-1 eth0");
        assert_eq!(
            KIND.parse_chain_name("spoof/net1/ctr-1/eth0", "net1"),
            Some(("ctr-1".into(), "eth0".into()))
        );
        assert_eq!(KIND.parse_chain_name("masq/net1/ctr-1/eth0", "net1"), None);
        let long = "n".repeat(250);
        let e = KIND.chain_name(&owner(&long, "c", "eth0")).unwrap_err();
        assert!(e.to_string().contains("too long for macspoofchk"), "{e}");
    }

    /// Refused before anything is sent, so no kernel is needed.
    #[test]
    fn unusable_host_interface_names_are_refused() {
        let o = owner("net1", "ctr-1", "eth0");
        for bad in ["", "0123456789abcdef", "veth\0x"] {
            assert!(
                matches!(add(&o, bad, MAC), Err(KernelError::InvalidIfname(_))),
                "{bad:?}"
            );
        }
    }

    fn ll_saddr() -> Vec<u8> {
        payload(NFT_PAYLOAD_LL_HEADER, 6, 6)
    }

    fn padded(name: &str) -> Vec<u8> {
        let mut v = name.as_bytes().to_vec();
        v.resize(IFNAMSIZ, 0);
        v
    }

    #[test]
    fn the_check_is_read_from_kernel_shaped_rules() {
        let iif = meta(NFT_META_IIFNAME);
        let drop = verdict(libc::NF_DROP);
        let good = rule_attrs(
            CHAIN,
            &[
                iif.clone(),
                cmp(NFT_CMP_EQ, &padded("veth1234")),
                ll_saddr(),
                cmp(NFT_CMP_NEQ, &MAC),
                expr("counter", &[]),
                drop.clone(),
            ],
        );
        assert_eq!(rule_check(Attrs(&good)), Some(("veth1234".to_owned(), MAC)));
        // The shortest exact form (name and NUL) reads the same.
        let short = rule_attrs(
            CHAIN,
            &[
                iif.clone(),
                cmp(NFT_CMP_EQ, b"veth1234\0"),
                ll_saddr(),
                cmp(NFT_CMP_NEQ, &MAC),
                drop.clone(),
            ],
        );
        assert_eq!(
            rule_check(Attrs(&short)),
            Some(("veth1234".to_owned(), MAC))
        );

        let not_a_check = [
            // A prefix match (`iifname "veth*"`) is not one interface.
            vec![
                iif.clone(),
                cmp(NFT_CMP_EQ, b"veth"),
                ll_saddr(),
                cmp(NFT_CMP_NEQ, &MAC),
                drop.clone(),
            ],
            // Accepting instead of dropping.
            vec![
                iif.clone(),
                cmp(NFT_CMP_EQ, &padded("veth1234")),
                ll_saddr(),
                cmp(NFT_CMP_NEQ, &MAC),
                verdict(libc::NF_ACCEPT),
            ],
            // `==` on the source, or the destination address.
            vec![
                iif.clone(),
                cmp(NFT_CMP_EQ, &padded("veth1234")),
                ll_saddr(),
                cmp(NFT_CMP_EQ, &MAC),
                drop.clone(),
            ],
            vec![
                iif.clone(),
                cmp(NFT_CMP_EQ, &padded("veth1234")),
                payload(NFT_PAYLOAD_LL_HEADER, 0, 6),
                cmp(NFT_CMP_NEQ, &MAC),
                drop.clone(),
            ],
            // oifname, not iifname.
            vec![
                meta(7),
                cmp(NFT_CMP_EQ, &padded("veth1234")),
                ll_saddr(),
                cmp(NFT_CMP_NEQ, &MAC),
                drop.clone(),
            ],
            // A compare not right after its load.
            vec![
                iif.clone(),
                expr("counter", &[]),
                cmp(NFT_CMP_EQ, &padded("veth1234")),
                ll_saddr(),
                cmp(NFT_CMP_NEQ, &MAC),
                drop.clone(),
            ],
            // No interface at all (a flushed chain's rule would not exist;
            // a hand-written one without iifname checks every port).
            vec![ll_saddr(), cmp(NFT_CMP_NEQ, &MAC), drop.clone()],
            vec![],
        ];
        for exprs in not_a_check {
            let r = rule_attrs(CHAIN, &exprs);
            assert_eq!(rule_check(Attrs(&r)), None);
        }
        assert_eq!(rule_check(Attrs(&[])), None);
    }

    /// What nftnl writes for our rule is what the parser reads back (the
    /// kernel dumps rules with the same attributes).
    #[test]
    fn the_rule_built_with_nftnl_parses_back() {
        let table = Table::new(cstring(TABLE), ProtoFamily::Bridge);
        let chain = Chain::new(cstring(CHAIN), &table);
        for name in ["v", "veth0a1b2c3d", "fifteen-bytes-x"] {
            let rule = rule(&chain, name, MAC, "cni-rs macspoofchk: n c eth0");
            let attrs = written(&rule, CHAIN);
            assert_eq!(rule_check(Attrs(&attrs)), Some((name.to_owned(), MAC)));
        }
    }
}
