//! MAC spoof check (the bridge's `macspoofchk`): frames entering a bridge
//! from a container's host-side veth with a source MAC other than the
//! container interface's are dropped. In our own table `bridge cni-rs`.
//!
//! One filter base chain `spoofcheck`, hooked at bridge prerouting with
//! priority -300 (as the reference), policy accept, dispatches on the input
//! interface through a verdict map: `iifname vmap @spoof` (`spoof { type
//! ifname : verdict }`, keys NUL-padded to IFNAMSIZ as `meta iifname` loads
//! them).
//!
//! Each attachment (owner = network name + container id + ifname) gets a
//! regular chain `spoof/<network>/<container id>/<ifname>` holding one rule,
//! `iifname "<host veth>" ether saddr != <container mac> counter drop`, with
//! a comment naming the owner, and one map element `"<host veth>" : jump
//! spoof/...`. The `iifname` match repeats the map's key: it is how DEL and
//! CHECK recover the key from the owner's own chain. Setup, the
//! one-transaction writes and the reads are shared with
//! [`cni_kernel::masquerade`] (see `cni_kernel::owner_chain`).
//!
//! Like the reference plugin (`pkg/link/spoofcheck.go`), only the Ethernet
//! source is checked; ARP sender addresses are not. Like it, a shared base
//! chain jumps to per-owner chains, but through a map: the cost at packet
//! time is one hash lookup, not an `iifname` compare per attachment on the
//! bridge, and a base chain per owner would hit the
//! kernel's limit of 1024 hook entries per hook. DEL is one transaction that
//! needs no listing of the shared chain and works without the container's
//! netns.
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there): run it inside [`cni_kernel::Netns::run`] to act
//! elsewhere.

use cni_kernel::packet_netfilter::nftables::RuleMessage;
use nix::libc;

use cni_kernel::error::{KernelError, Result};
use cni_kernel::nft_expr::{
    self as e, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_META_IIFNAME, NFT_PAYLOAD_LL_HEADER, NFT_REG_1,
    NFT_REG_VERDICT, NftExpr,
};
use cni_kernel::nftables::{BaseHook, Batch, Family, IFNAME, NF_INET_PRE_ROUTING, SetSpec};
use cni_kernel::owner_chain::{self, BaseChain, ChainKind, Expr, MapKey};

pub use cni_kernel::owner_chain::{NftOwner, TABLE};

const SPOOF: SetSpec = owner_chain::verdict_map("spoof", IFNAME, 1);

/// Base chain `spoofcheck` in `bridge cni-rs`, filter hooked at prerouting
/// with priority -300 (as the reference), dispatching to the regular chains
/// `spoof/<network>/<container id>/<ifname>`.
const KIND: ChainKind = ChainKind {
    family: Family::Bridge,
    prefix: "spoof",
    what: "macspoofchk",
    bases: &[BaseChain {
        name: "spoofcheck",
        hook: BaseHook {
            chain_type: "filter",
            hook: NF_INET_PRE_ROUTING,
            priority: -300,
        },
        rules: dispatch,
    }],
    maps: &[SPOOF],
    setup: |_| {},
    rule_key: |rule| rule_check(rule).map(|(ifname, _)| key(&ifname)),
};
/// IFNAMSIZ: an interface name and its NUL; `meta iifname` loads this much.
const IFNAMSIZ: usize = 16;

/// The base chain's rule: `iifname vmap @spoof`.
fn dispatch(batch: &mut Batch, chain: &str) {
    let exprs = vec![
        e::meta(NFT_META_IIFNAME, NFT_REG_1),
        e::lookup(SPOOF.name, SPOOF.id, NFT_REG_1, Some(NFT_REG_VERDICT)),
    ];
    batch.add_rule(Family::Bridge, chain, exprs, None);
}

/// The name NUL-padded to IFNAMSIZ, as nft writes it: an exact match (a
/// valid name is shorter than IFNAMSIZ).
fn padded(ifname: &str) -> [u8; IFNAMSIZ] {
    let mut name = [0u8; IFNAMSIZ];
    let len = ifname.len().min(IFNAMSIZ - 1);
    name[..len].copy_from_slice(&ifname.as_bytes()[..len]);
    name
}

/// A host interface's key in `spoof`.
fn key(ifname: &str) -> MapKey {
    MapKey {
        map: SPOOF.name,
        key: padded(ifname).to_vec(),
    }
}
/// Offset and length of the source address in the Ethernet header.
const ETHER_SADDR: (u32, u32) = (6, 6);

/// `iifname "<host_ifname>" ether saddr != <mac> counter drop`.
fn rule(host_ifname: &str, mac: [u8; 6]) -> Vec<NftExpr> {
    vec![
        e::meta(NFT_META_IIFNAME, NFT_REG_1),
        e::cmp(NFT_CMP_EQ, &padded(host_ifname)),
        e::payload(NFT_PAYLOAD_LL_HEADER, ETHER_SADDR, NFT_REG_1),
        e::cmp(NFT_CMP_NEQ, &mac),
        e::counter(),
        e::verdict(libc::NF_DROP),
    ]
}

/// Install or replace the owner's check in one transaction (after setting
/// up the base chain and map once per namespace): create the owner's chain
/// if missing, flush it, add the rule dropping frames from `host_ifname`
/// whose source is not `mac`, and map `host_ifname` to the chain (taking
/// the name over from another owner's chain it may still map to).
pub fn add(owner: &NftOwner, host_ifname: &str, mac: [u8; 6]) -> Result<(), KernelError> {
    if host_ifname.is_empty() || host_ifname.len() >= IFNAMSIZ || host_ifname.contains('\0') {
        return Err(KernelError::InvalidIfname(host_ifname.to_owned()));
    }
    let keys = [key(host_ifname)];
    KIND.replace(owner, "add macspoofchk", &keys, |batch, chain, comment| {
        batch.add_rule(Family::Bridge, chain, rule(host_ifname, mac), Some(comment));
    })
}

/// Remove the owner's map element and chain in one transaction (an element
/// that now maps to another owner's chain is left alone). Nothing to remove
/// (no chain, no table) is success.
pub fn del(owner: &NftOwner) -> Result<(), KernelError> {
    KIND.delete(owner, "delete macspoofchk")
}

/// The host interface and the MAC the owner's check enforces, as the kernel
/// has them: a rule of the owner's chain whose interface maps to the chain;
/// `None` when there is no chain, no such rule, or no such element.
pub fn installed(owner: &NftOwner) -> Result<Option<(String, [u8; 6])>, KernelError> {
    let rules = KIND.rules(owner, "list macspoofchk")?;
    Ok(rules.and_then(|rules| rules.iter().find_map(rule_check)))
}

/// What a spoof check rule enforces: the name an `iifname ==` compares with
/// exactly, and the address an `ether saddr !=` compares with, in a rule that
/// drops.
fn rule_check(rule: &RuleMessage) -> Option<(String, [u8; 6])> {
    let (mut ifname, mut mac, mut drops) = (None, None, false);
    let mut loaded = None;
    for e in owner_chain::exprs(rule) {
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

/// Every `(container id, ifname)` with a spoof check chain for `network`
/// (read from the chain names alone).
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
    use cni_kernel::owner_chain::test_util::{
        cmp, expr, meta, payload, rule_attrs, rules, verdict,
    };

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

    #[test]
    fn keys_are_names_padded_to_ifnamsiz() {
        let k = key("veth0a");
        assert_eq!(k.map, "spoof");
        assert_eq!(k.key, padded("veth0a"));
        assert_eq!(&k.key[..7], b"veth0a\0");
        assert_eq!(k.key.len(), SPOOF.key.len as usize);
        assert_eq!(padded("fifteen-bytes-x")[15], 0);
        assert_eq!(KIND.parse_chain_name(KIND.bases[0].name, "net1"), None);
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

    fn ll_saddr() -> NftExpr {
        payload(NFT_PAYLOAD_LL_HEADER, 6, 6)
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
        assert_eq!(rule_check(&good), Some(("veth1234".to_owned(), MAC)));
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
        assert_eq!(rule_check(&short), Some(("veth1234".to_owned(), MAC)));

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
            assert_eq!(rule_check(&r), None);
        }
    }

    /// What we write for our rule is what the parser reads back (the
    /// kernel dumps rules with the same attributes).
    #[test]
    fn the_rule_we_write_parses_back() {
        for name in ["v", "veth0a1b2c3d", "fifteen-bytes-x"] {
            let mut batch = Batch::new();
            batch.add_rule(Family::Bridge, CHAIN, rule(name, MAC), Some("c"));
            let written = rules(&batch, CHAIN).remove(0);
            assert_eq!(rule_check(&written), Some((name.to_owned(), MAC)));
            // The key DEL and CHECK look up is the element ADD writes.
            assert_eq!((KIND.rule_key)(&written), Some(key(name)));
        }
    }
}
