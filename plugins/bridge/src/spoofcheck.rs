//! MAC spoof check (the bridge's `macspoofchk`): frames entering a bridge
//! from a container's host-side veth with a source MAC other than the
//! container interface's are dropped. In our own table `bridge cni-rs`, as
//! flat data: an ADD or DEL only adds or removes elements (and the owner's
//! record chain, which nothing jumps to).
//!
//! Once per namespace, in the first ADD's transaction:
//! - data map `spoof` (`type ifname : mark`): each checked host interface
//!   (NUL-padded to IFNAMSIZ, as `meta iifname` loads it), mapped to its
//!   owner's tag, with a comment naming the owner;
//! - set `spoof-ok` (`type ifname . ether_addr`): each checked interface
//!   with the one source address it may send from;
//! - the filter base chain `spoofcheck`, hooked at bridge prerouting with
//!   priority -300 (as the reference), policy accept: `iifname @spoof
//!   iifname . ether saddr != @spoof-ok counter drop`.
//!
//! Per attachment (owner = network name + container id + ifname): its
//! elements, and a regular chain `spoof/<network>/<container id>/<ifname>`
//! that nothing jumps to, holding its record: the reference's rule,
//! `iifname "<host veth>" ether saddr != <container mac> counter drop`, with
//! the comment `cni-rs macspoofchk record: ...`. DEL and CHECK read the
//! interface and address from it. Tags and takeovers work as for
//! masquerade (see [`cni_kernel::masquerade`]).
//!
//! Like the reference plugin (`pkg/link/spoofcheck.go`), only the Ethernet
//! source is checked; ARP sender addresses are not. At packet time the
//! check costs two hash lookups, not an `iifname` compare per attachment on
//! the bridge.
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there): run it inside [`cni_kernel::Netns::run`]
//! to act elsewhere.

use cni_kernel::error::{KernelError, Result};
use cni_kernel::nfnetlink::NfSocket;
use cni_kernel::nft_expr::{
    self as e, Expr, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_META_IIFNAME, NFT_PAYLOAD_LL_HEADER, NFT_REG_1,
    NFT_REG32_00, NftExpr,
};
use cni_kernel::nftables::{
    BaseHook, Batch, Elem, ElemData, Family, IFNAME, KeyType, NF_INET_PRE_ROUTING, SetData,
    SetSpec, comment_udata,
};
use cni_kernel::owner_chain::{self, OWNER_TAG, chain_rules, element_data};
use cni_kernel::packet_netfilter::nftables::RuleMessage;
use nix::libc;

pub use cni_kernel::owner_chain::NftOwner;

const BRIDGE: Family = Family::Bridge;
const PREFIX: &str = "spoof";
const WHAT: &str = "macspoofchk";
const BASE: &str = "spoofcheck";
const BASE_HOOK: BaseHook = BaseHook {
    chain_type: "filter",
    hook: NF_INET_PRE_ROUTING,
    priority: -300,
};
const SPOOF: SetSpec = SetSpec {
    name: "spoof",
    id: 1,
    key: IFNAME,
    data: SetData::Data(OWNER_TAG),
    interval: false,
    fields: &[],
};
/// `ifname . ether_addr`: 16 bytes, then 6 padded to 8.
const SPOOF_OK: SetSpec = SetSpec {
    name: "spoof-ok",
    id: 2,
    key: KeyType {
        datatype: (IFNAME.datatype << 6) | ETHER_ADDR,
        len: 24,
        byteorder: 1,
    },
    data: SetData::None,
    interval: false,
    fields: &[],
};
/// nftables' `ether_addr` datatype.
const ETHER_ADDR: u32 = 9;
/// IFNAMSIZ: an interface name and its NUL; `meta iifname` loads this much.
const IFNAMSIZ: usize = 16;
/// Offset and length of the source address in the Ethernet header.
const ETHER_SADDR: (u32, u32) = (6, 6);

/// The name NUL-padded to IFNAMSIZ, as nft writes it: an exact match (a
/// valid name is shorter than IFNAMSIZ).
fn padded(ifname: &str) -> [u8; IFNAMSIZ] {
    let mut name = [0u8; IFNAMSIZ];
    let len = ifname.len().min(IFNAMSIZ - 1);
    name[..len].copy_from_slice(&ifname.as_bytes()[..len]);
    name
}

/// The key of `spoof-ok` for an interface and its address.
fn allowed(ifname: &str, mac: [u8; 6]) -> Vec<u8> {
    let mut key = padded(ifname).to_vec();
    key.extend_from_slice(&mac);
    key.extend_from_slice(&[0, 0]);
    key
}

/// The base chain's rule.
fn dispatch() -> Vec<NftExpr> {
    vec![
        e::meta(NFT_META_IIFNAME, NFT_REG_1),
        e::lookup(SPOOF.name, SPOOF.id, NFT_REG_1, None),
        e::meta(NFT_META_IIFNAME, NFT_REG32_00),
        e::payload(NFT_PAYLOAD_LL_HEADER, ETHER_SADDR, NFT_REG32_00 + 4),
        e::lookup_not(SPOOF_OK.name, SPOOF_OK.id, NFT_REG32_00),
        e::counter(),
        e::verdict(libc::NF_DROP),
    ]
}

/// The table, the map and set, and the base chain with its rule (the base
/// chain exclusively, as for masquerade).
fn setup(batch: &mut Batch) {
    batch.add_table(BRIDGE);
    batch.add_set(BRIDGE, &SPOOF);
    batch.add_set(BRIDGE, &SPOOF_OK);
    batch.add_chain(BRIDGE, BASE, Some(&BASE_HOOK), true);
    batch.add_rule(BRIDGE, BASE, dispatch(), None);
}

/// The record: `iifname "<host_ifname>" ether saddr != <mac> counter drop`.
fn record(host_ifname: &str, mac: [u8; 6]) -> Vec<NftExpr> {
    vec![
        e::meta(NFT_META_IIFNAME, NFT_REG_1),
        e::cmp(NFT_CMP_EQ, &padded(host_ifname)),
        e::payload(NFT_PAYLOAD_LL_HEADER, ETHER_SADDR, NFT_REG_1),
        e::cmp(NFT_CMP_NEQ, &mac),
        e::counter(),
        e::verdict(libc::NF_DROP),
    ]
}

/// Remove the elements of `(ifname, mac)` while the interface's element
/// still carries `tag`.
fn remove_own(
    socket: &mut NfSocket,
    batch: &mut Batch,
    (ifname, mac): &(String, [u8; 6]),
    tag: &[u8],
    op: &'static str,
) -> Result<()> {
    let key = padded(ifname);
    if owner_chain::remove_if_owned(socket, batch, BRIDGE, SPOOF.name, &key, tag, op)? {
        let ok = allowed(ifname, *mac);
        if element_data(socket, BRIDGE, SPOOF_OK.name, &ok, op)?.is_some() {
            batch.del_element(BRIDGE, SPOOF_OK.name, &Elem::key(&ok));
        }
    }
    Ok(())
}

/// Install or replace the owner's check in one transaction (with the
/// setup, the first time in a namespace): frames from `host_ifname` whose
/// source is not `mac` are dropped.
pub fn add(owner: &NftOwner, host_ifname: &str, mac: [u8; 6]) -> Result<(), KernelError> {
    let op = "add macspoofchk";
    owner_chain::transaction(op, |s, batch| {
        stage_add(s, batch, owner, host_ifname, mac, op)
    })
}

/// [`add`]'s changes, added to `batch` (read through `socket`), for a
/// caller that commits them together with others in one transaction.
pub fn stage_add(
    socket: &mut NfSocket,
    batch: &mut Batch,
    owner: &NftOwner,
    host_ifname: &str,
    mac: [u8; 6],
    op: &'static str,
) -> Result<()> {
    if host_ifname.is_empty() || host_ifname.len() >= IFNAMSIZ || host_ifname.contains('\0') {
        return Err(KernelError::InvalidIfname(host_ifname.to_owned()));
    }
    let chain = owner_chain::chain_name(PREFIX, WHAT, owner)?;
    let tag = owner_chain::owner_tag(&chain);
    let comment = comment_udata(&owner_chain::comment(WHAT, owner));
    if owner_chain::chain(socket, BRIDGE, BASE, op)? != Some(true) {
        setup(batch);
    }
    let had = recorded(socket, &chain, op)?;
    batch.add_chain(BRIDGE, &chain, None, false);
    batch.flush_chain(BRIDGE, &chain);
    let record_comment = owner_chain::comment("macspoofchk record", owner);
    batch.add_rule(
        BRIDGE,
        &chain,
        record(host_ifname, mac),
        Some(&record_comment),
    );
    if let Some(old) = had.filter(|(i, m)| (i.as_str(), *m) != (host_ifname, mac)) {
        remove_own(socket, batch, &old, &tag, op)?;
    }
    let key = padded(host_ifname);
    match element_data(socket, BRIDGE, SPOOF.name, &key, op)? {
        Some(t) if t == tag => {}
        // A stale owner's interface of the same name: its address goes too.
        Some(_) => {
            batch.del_element(BRIDGE, SPOOF.name, &Elem::key(&key));
            for stale in owner_chain::keys_with_prefix(socket, BRIDGE, SPOOF_OK.name, &key, op)? {
                batch.del_element(BRIDGE, SPOOF_OK.name, &Elem::key(&stale));
            }
        }
        None => {}
    }
    let elem = Elem {
        data: ElemData::Value(&tag),
        udata: Some(&comment),
        ..Elem::key(&key)
    };
    batch.add_element(BRIDGE, SPOOF.name, &elem);
    batch.add_element(
        BRIDGE,
        SPOOF_OK.name,
        &Elem::key(&allowed(host_ifname, mac)),
    );
    Ok(())
}

/// Remove the owner's elements and record in one transaction (an
/// interface another owner took over is left alone). Nothing to remove is
/// success.
pub fn del(owner: &NftOwner) -> Result<(), KernelError> {
    let op = "delete macspoofchk";
    owner_chain::transaction(op, |s, batch| stage_del(s, batch, owner, op))
}

/// [`del`]'s changes, added to `batch` (read through `socket`).
pub fn stage_del(
    socket: &mut NfSocket,
    batch: &mut Batch,
    owner: &NftOwner,
    op: &'static str,
) -> Result<()> {
    let Ok(chain) = owner_chain::chain_name(PREFIX, WHAT, owner) else {
        return Ok(());
    };
    let tag = owner_chain::owner_tag(&chain);
    let Some(rules) = chain_rules(socket, BRIDGE, &chain, op)? else {
        return Ok(());
    };
    match rules.iter().find_map(rule_check) {
        Some(check) => remove_own(socket, batch, &check, &tag, op)?,
        None => {
            // The record was flushed behind our back: find the interface by
            // the tag, and its address by the interface.
            for key in owner_chain::keys_with_data(socket, BRIDGE, SPOOF.name, &tag, op)? {
                if !owner_chain::remove_if_owned(socket, batch, BRIDGE, SPOOF.name, &key, &tag, op)?
                {
                    continue;
                }
                for ok in owner_chain::keys_with_prefix(socket, BRIDGE, SPOOF_OK.name, &key, op)? {
                    batch.del_element(BRIDGE, SPOOF_OK.name, &Elem::key(&ok));
                }
            }
        }
    }
    batch.flush_chain(BRIDGE, &chain);
    batch.del_chain(BRIDGE, &chain);
    Ok(())
}

/// The interface and address of the owner's record, if it has one.
fn recorded(
    socket: &mut NfSocket,
    chain: &str,
    op: &'static str,
) -> Result<Option<(String, [u8; 6])>> {
    Ok(chain_rules(socket, BRIDGE, chain, op)?.and_then(|rules| rules.iter().find_map(rule_check)))
}

/// The host interface and the MAC the owner's check enforces, as the kernel
/// has them: its record, while the interface's element carries its tag,
/// the pair is allowed and the base chain exists; `None` when there is no
/// record.
pub fn installed(owner: &NftOwner) -> Result<Option<(String, [u8; 6])>, KernelError> {
    let op = "list macspoofchk";
    let Ok(chain) = owner_chain::chain_name(PREFIX, WHAT, owner) else {
        return Ok(None);
    };
    let tag = owner_chain::owner_tag(&chain);
    let mut socket = NfSocket::open(op)?;
    let Some((ifname, mac)) = recorded(&mut socket, &chain, op)? else {
        return Ok(None);
    };
    let s = &mut socket;
    let in_force = owner_chain::chain(s, BRIDGE, BASE, op)? == Some(true)
        && element_data(s, BRIDGE, SPOOF.name, &padded(&ifname), op)?.as_deref() == Some(&tag[..])
        && element_data(s, BRIDGE, SPOOF_OK.name, &allowed(&ifname, mac), op)?.is_some();
    Ok(in_force.then_some((ifname, mac)))
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

/// Every `(container id, ifname)` with a spoof check record for `network`
/// (read from the chain names alone).
pub fn owners(network: &str) -> Result<Vec<(String, String)>, KernelError> {
    owner_chain::owners(BRIDGE, PREFIX, network, "list macspoofchk chains")
}

/// Ok when nf_tables answers for the bridge family in this namespace.
pub fn available() -> Result<(), KernelError> {
    owner_chain::available(BRIDGE, WHAT, "list bridge tables")
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
        let name = |o: &NftOwner| owner_chain::chain_name(PREFIX, WHAT, o);
        let parse = |n: &str| owner_chain::parse_chain_name(PREFIX, n, "net1");
        assert_eq!(name(&o).unwrap(), "spoof/net1/ctr-1/eth0");
        assert_eq!(
            owner_chain::comment(WHAT, &o),
            "cni-rs macspoofchk: net1 ctr-1 eth0"
        );
        assert_eq!(
            parse("spoof/net1/ctr-1/eth0"),
            Some(("ctr-1".into(), "eth0".into()))
        );
        assert_eq!(parse("masq/net1/ctr-1/eth0"), None);
        // A long network is named by its digest; an id too long still fails.
        let long = "n".repeat(250);
        assert!(
            name(&owner(&long, "c", "eth0"))
                .unwrap()
                .starts_with("spoof//")
        );
        let long_id = "c".repeat(250);
        let e = name(&owner(&long, &long_id, "eth0")).unwrap_err();
        assert!(e.to_string().contains("too long for macspoofchk"), "{e}");
    }

    #[test]
    fn keys_are_names_padded_to_ifnamsiz() {
        let k = padded("veth0a");
        assert_eq!(&k[..7], b"veth0a\0");
        assert_eq!(k.len(), SPOOF.key.len as usize);
        assert_eq!(padded("fifteen-bytes-x")[15], 0);
        assert_eq!(owner_chain::parse_chain_name(PREFIX, BASE, "net1"), None);
        // `ifname . ether_addr`: the name, the address, two bytes of padding.
        let ok = allowed("veth0a", MAC);
        assert_eq!(ok.len(), SPOOF_OK.key.len as usize);
        assert_eq!(&ok[16..22], &MAC);
        assert_eq!(&ok[22..], &[0, 0]);
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
            batch.add_rule(Family::Bridge, CHAIN, record(name, MAC), Some("c"));
            let written = rules(&batch, CHAIN).remove(0);
            assert_eq!(rule_check(&written), Some((name.to_owned(), MAC)));
        }
    }
}
