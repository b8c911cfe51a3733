//! Per-owner state in our nftables tables, the mechanism masquerade (here)
//! and the plugins' own rules (the bridge's spoof check, portmap's mappings)
//! share. An owner is one attachment of one container to one network
//! (network name + container id + ifname). What it installed is:
//! - elements of data maps that static base-chain rules read, each carrying
//!   the owner's tag ([`owner_tag`]) as its data and a comment naming the
//!   owner, so that a deletion can be made conditional on the element still
//!   being the owner's ("add it with my tag, then delete it", in one batch);
//! - a regular chain `<kind>/<network>/<container id>/<ifname>` holding the
//!   owner's *record*: rules that say what it installed, which DEL, CHECK
//!   and GC read back (so DEL needs neither the container's namespace nor a
//!   listing of the maps) and GC finds owners by (the chain names). Nothing
//!   jumps to a record chain, so it costs the kernel nothing on commit.
//!
//! Every write is one transaction built from what the kernel holds, and
//! built again when the kernel refuses it because a concurrent run changed
//! the same objects meanwhile ([`transact`]). The table is created when
//! missing and never deleted (deleting it could race another ADD).
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there).
//!
//! The separator is '/': it cannot occur in a network name, container id or
//! interface name, and unlike ':' the nft command line (1.0.6) accepts it, so
//! `nft list ruleset > f; nft -f f` and hand edits keep working (for the
//! same reason no chain is named after an nft keyword such as `masquerade`).

use std::io;

use netlink_packet_netfilter::nftables::RuleMessage;
use nix::errno::Errno;

use crate::error::{KernelError, Result};
use crate::nfnetlink::NfSocket;
pub use crate::nft_expr::{Expr, exprs};
pub use crate::nftables::COMMENT_MAX;
pub use crate::nftables::TABLE;
use crate::nftables::{self, Batch, Family, chain_of, elements_of, rule_of};

const SEP: char = '/';
/// NFT_CHAIN_MAXNAMELEN (256) includes the terminating NUL.
const CHAIN_NAME_MAX: usize = 255;
/// Batches refused because others changed the maps meanwhile are built
/// again from what the kernel holds then, this many times in all.
const ATTEMPTS: usize = 4;

/// Who a chain belongs to: one attachment of one container to one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftOwner<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

/// The chain name of `owner` for rules of kind `prefix` (`what` names the
/// kind in errors), or why it cannot have one: writing refuses such an
/// owner, so deleting and reading know there is nothing of it.
///
/// `<prefix>/<network>/<container id>/<ifname>`; when that passes the
/// kernel's 255 bytes (a long network name), the network is replaced by its
/// digest after an empty segment, `<prefix>//<digest>/<id>/<ifname>`, which
/// no plain name can look like (a network name is never empty).
pub fn chain_name(prefix: &str, what: &'static str, owner: &NftOwner) -> Result<String> {
    let parts = [owner.network, owner.container_id, owner.ifname];
    if parts
        .iter()
        .any(|p| p.is_empty() || p.contains(SEP) || p.contains('\0'))
    {
        return Err(KernelError::NftOwner {
            what,
            owner: format!("{} {} {}", owner.network, owner.container_id, owner.ifname),
        });
    }
    let name = format!(
        "{prefix}{SEP}{}{SEP}{}{SEP}{}",
        owner.network, owner.container_id, owner.ifname
    );
    if name.len() <= CHAIN_NAME_MAX {
        return Ok(name);
    }
    let name = format!(
        "{prefix}{SEP}{}{SEP}{}{SEP}{}",
        network_digest(owner.network),
        owner.container_id,
        owner.ifname
    );
    if name.len() > CHAIN_NAME_MAX {
        return Err(KernelError::NftNameTooLong {
            what,
            network: owner.network.to_owned(),
            len: name.len(),
        });
    }
    Ok(name)
}

/// How a long network name appears in chain names: an empty segment, then
/// 64 bits of its SHA-256.
fn network_digest(network: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(network.as_bytes());
    let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{SEP}{hex}")
}

/// The comment naming `owner` on rules and elements of kind `what`, cut to
/// what a comment can hold.
pub fn comment(what: &str, owner: &NftOwner) -> String {
    let c = format!(
        "cni-rs {what}: {} {} {}",
        owner.network, owner.container_id, owner.ifname
    );
    nftables::cut(&c, COMMENT_MAX).to_owned()
}

/// The `(container id, ifname)` a chain name of kind `prefix` and of
/// `network` belongs to (in either form [`chain_name`] writes).
pub fn parse_chain_name(prefix: &str, name: &str, network: &str) -> Option<(String, String)> {
    let after_prefix = name.strip_prefix(prefix)?.strip_prefix(SEP)?;
    let rest = after_prefix
        .strip_prefix(network)
        .or_else(|| after_prefix.strip_prefix(network_digest(network).as_str()))?
        .strip_prefix(SEP)?;
    let (cid, ifname) = rest.split_once(SEP)?;
    (!cid.is_empty() && !ifname.is_empty() && !ifname.contains(SEP))
        .then(|| (cid.to_owned(), ifname.to_owned()))
}

/// GC of one kind of owner chains: delete, through `del`, every owner of
/// `network` among `owners` (as `owners()` lists them) that `keep` does not
/// name. Goes on past failures and returns the first.
pub fn collect(
    network: &str,
    keep: &[cni_types::Attachment],
    owners: Result<Vec<(String, String)>>,
    del: fn(&NftOwner) -> Result<()>,
) -> Result<()> {
    let mut first = None;
    for (id, ifname) in owners? {
        if keep
            .iter()
            .any(|a| a.container_id == id && a.ifname == ifname)
        {
            continue;
        }
        let o = NftOwner {
            network,
            container_id: &id,
            ifname: &ifname,
        };
        if let Err(e) = del(&o) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// An owner's tag: the data of its elements in a kind's data maps (32 bits
/// of the SHA-256 of its chain name, a `mark` to nft).
/// Adding an element with the same key and tag is a no-op for the kernel and
/// with another tag is refused, so "add it with my tag, then delete it" in
/// one batch deletes an element only while it is still the owner's.
pub fn owner_tag(chain: &str) -> [u8; 4] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(chain.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]).to_ne_bytes()
}

/// The nft datatype of an owner tag (`mark`: 32 bits in host byte order),
/// for a data map's [`SetData::Data`].
pub const OWNER_TAG: nftables::KeyType = nftables::KeyType {
    datatype: 19,
    len: 4,
    byteorder: 1,
};

/// Whether chain `name` of our table of `family` exists: `Some(true)` for a
/// base chain, `Some(false)` for a regular one.
pub fn chain(
    socket: &mut NfSocket,
    family: Family,
    name: &str,
    op: &'static str,
) -> Result<Option<bool>> {
    match socket.get(family, nftables::get_chain(Some(name)))? {
        Err(e) if is_enoent(&e) => Ok(None),
        Err(e) => Err(nft_error(op, name, e)),
        Ok(reply) => Ok(Some(
            reply
                .as_ref()
                .and_then(chain_of)
                .is_some_and(|(_, _, base)| base),
        )),
    }
}

/// The rules of chain `name` (as the kernel dumps them, in chain order), or
/// `None` when it does not exist.
pub fn chain_rules(
    socket: &mut NfSocket,
    family: Family,
    name: &str,
    op: &'static str,
) -> Result<Option<Vec<RuleMessage>>> {
    if chain(socket, family, name, op)?.is_none() {
        return Ok(None);
    }
    let rules = match socket.dump(family, nftables::get_rules(name))? {
        Err(e) if is_enoent(&e) => return Ok(None),
        Err(e) => return Err(nft_error(op, name, e)),
        Ok(rules) => rules,
    };
    Ok(Some(
        rules
            .iter()
            .filter_map(rule_of)
            .filter(|(table, chain, _)| *table == TABLE && *chain == name)
            .map(|(_, _, rule)| rule.clone())
            .collect(),
    ))
}

/// The element of `set` that holds `key` now (one GETSETELEM; in a set of
/// ranges, the range containing it): its key, its range's last key and its
/// data; `None` when there is none (or the set is missing).
pub fn element(
    socket: &mut NfSocket,
    family: Family,
    set: &str,
    key: &[u8],
    op: &'static str,
) -> Result<Option<OwnedElem>> {
    let reply = match socket.get(family, nftables::get_elements(set, Some(key)))? {
        Err(e) if is_enoent(&e) => return Ok(None),
        Err(e) => return Err(nft_error(op, set, e)),
        Ok(reply) => reply,
    };
    Ok(reply
        .as_ref()
        .and_then(elements_of)
        .and_then(|(_, _, elems)| {
            elems.into_iter().next().map(|e| OwnedElem {
                key: e.key.to_vec(),
                key_end: e.key_end,
                data: e.data.unwrap_or_default().to_vec(),
            })
        }))
}

/// A set element read back: key, range end, data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedElem {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Vec<u8>,
}

/// The data `key` maps to in data map `set` now (one GETSETELEM), or
/// `None` when it is not there (or the map is missing). For a plain set, an
/// element that is there has empty data.
pub fn element_data(
    socket: &mut NfSocket,
    family: Family,
    set: &str,
    key: &[u8],
    op: &'static str,
) -> Result<Option<Vec<u8>>> {
    Ok(element(socket, family, set, key, op)?.map(|e| e.data))
}

/// The keys of every element of data map `set` whose data is `data` (a
/// dump of the whole map).
pub fn keys_with_data(
    socket: &mut NfSocket,
    family: Family,
    set: &str,
    data: &[u8],
    op: &'static str,
) -> Result<Vec<Vec<u8>>> {
    keys_where(socket, family, set, op, |e| e.data == Some(data))
}

/// The keys of every element of `set` that start with `prefix` (a dump of
/// the whole set).
pub fn keys_with_prefix(
    socket: &mut NfSocket,
    family: Family,
    set: &str,
    prefix: &[u8],
    op: &'static str,
) -> Result<Vec<Vec<u8>>> {
    keys_where(socket, family, set, op, |e| e.key.starts_with(prefix))
}

fn keys_where(
    socket: &mut NfSocket,
    family: Family,
    set: &str,
    op: &'static str,
    keep: impl Fn(&nftables::SetElem) -> bool,
) -> Result<Vec<Vec<u8>>> {
    let replies = match socket.dump(family, nftables::get_elements(set, None))? {
        Err(e) if is_enoent(&e) => return Ok(Vec::new()),
        Err(e) => return Err(nft_error(op, set, e)),
        Ok(replies) => replies,
    };
    Ok(replies
        .iter()
        .filter_map(elements_of)
        .filter(|(table, s, _)| (*table, *s) == (TABLE, set))
        .flat_map(|(_, _, elems)| elems)
        .filter(|e| keep(e))
        .map(|e| e.key.to_vec())
        .collect())
}

/// Every `(container id, ifname)` with a chain of kind `prefix` for
/// `network` in our table of `family` (read from the chain names alone).
pub fn owners(
    family: Family,
    prefix: &str,
    network: &str,
    op: &'static str,
) -> Result<Vec<(String, String)>> {
    let mut socket = NfSocket::open(op)?;
    let chains = match socket.dump(family, nftables::get_chain(None))? {
        Err(e) if is_enoent(&e) => return Ok(Vec::new()),
        Err(e) => return Err(nft_error(op, TABLE, e)),
        Ok(chains) => chains,
    };
    let mut owners: Vec<(String, String)> = chains
        .iter()
        .filter_map(chain_of)
        .filter(|(table, _, _)| *table == TABLE)
        .filter_map(|(_, name, _)| parse_chain_name(prefix, name, network))
        .collect();
    owners.sort();
    owners.dedup();
    Ok(owners)
}

/// Ok when nf_tables answers for `family` in this namespace (a table dump
/// succeeds).
pub fn available(family: Family, what: &str, op: &'static str) -> Result<()> {
    let mut socket = NfSocket::open(op)?;
    socket
        .dump(family, nftables::get_tables())?
        .map(|_| ())
        .map_err(|e| nft_error(op, what, e))
}

/// One transaction, built from what the kernel holds: `build` reads what it
/// needs through the socket and returns the batch, which is committed. When
/// the kernel refuses it because others changed the same objects meanwhile
/// (EEXIST, ENOENT, EBUSY), it is built again from what is there then, a few
/// times. An empty batch is nothing to do.
pub fn transact(
    socket: &mut NfSocket,
    mut build: impl FnMut(&mut NfSocket) -> Result<Batch>,
) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let batch = build(socket)?;
        match socket.commit(&batch) {
            Err(e @ KernelError::Nftables { .. })
                if attempt < ATTEMPTS
                    && matches!(
                        e.errno(),
                        Some(Errno::EEXIST | Errno::ENOENT | Errno::EBUSY)
                    ) => {}
            other => return other,
        }
    }
}

/// Remove `key`'s element of data map `set` while it still carries the
/// owner's `tag`: "add it with my tag, then delete it" in the batch, which
/// the kernel refuses (failing the batch, to be built again) if another
/// owner took the key over meanwhile. Returns whether it was the owner's.
pub fn remove_if_owned(
    socket: &mut NfSocket,
    batch: &mut Batch,
    family: Family,
    set: &str,
    key: &[u8],
    tag: &[u8],
    op: &'static str,
) -> Result<bool> {
    if element_data(socket, family, set, key, op)?.as_deref() != Some(tag) {
        return Ok(false);
    }
    let own = nftables::Elem {
        data: nftables::ElemData::Value(tag),
        ..nftables::Elem::key(key)
    };
    batch.add_element(family, set, &own);
    batch.del_element(family, set, &own);
    Ok(true)
}

/// One transaction on a socket of its own: `stage` adds its changes to the
/// batch, reading what it needs through the socket (see [`transact`]).
pub fn transaction(
    op: &'static str,
    mut stage: impl FnMut(&mut NfSocket, &mut Batch) -> Result<()>,
) -> Result<()> {
    let mut socket = NfSocket::open(op)?;
    transact(&mut socket, |socket| {
        let mut batch = Batch::new();
        stage(socket, &mut batch)?;
        Ok(batch)
    })
}

pub fn nft_error(op: &'static str, object: &str, source: io::Error) -> KernelError {
    KernelError::Nftables {
        op,
        object: object.to_owned(),
        source,
    }
}

fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

pub fn is_enoent(e: &io::Error) -> bool {
    errno(e) == Some(Errno::ENOENT)
}

/// Rules as the kernel dumps them, for the readers' unit tests (here and in
/// the plugins): built with the codec, written to bytes and parsed back.
pub mod test_util {
    use super::*;
    use crate::nft_expr::{self as e, NFT_REG_1, NftExpr};
    use netlink_packet_core::{DefaultNla, Emitable, Parseable};
    use netlink_packet_netfilter::nftables::{Expressions, NfTablesMessage, RuleAttribute};

    pub use crate::nft_expr::{cmp, verdict};

    /// An expression the codec has no type for, with raw attributes.
    pub fn expr(name: &str, attrs: &[(u16, u32)]) -> NftExpr {
        Expressions::Other {
            expression_type: name.to_owned(),
            attributes: attrs
                .iter()
                .map(|(k, v)| DefaultNla::new(*k, v.to_be_bytes().to_vec()))
                .collect(),
        }
        .into()
    }

    pub fn payload(base: u32, offset: u32, len: u32) -> NftExpr {
        e::payload(base, (offset, len), NFT_REG_1)
    }

    pub fn meta(key: u32) -> NftExpr {
        e::meta(key, NFT_REG_1)
    }

    /// Every message of `batch`, written and parsed back.
    pub fn written(batch: &Batch) -> Vec<NfTablesMessage> {
        batch
            .messages()
            .iter()
            .map(|m| {
                let netlink_packet_netfilter::NetfilterMessageInner::NfTables(msg) =
                    &m.message.inner
                else {
                    panic!("not nf_tables");
                };
                let mut buf = vec![0u8; msg.buffer_len()];
                msg.emit(&mut buf);
                let ty = u8::from(msg.message_type());
                <NfTablesMessage as netlink_packet_core::ParseableParametrized<[u8], u8>>::parse_with_param(&buf, ty)
                    .unwrap()
            })
            .collect()
    }

    /// The rules `batch` adds, as the kernel would dump them.
    pub fn rules(batch: &Batch, chain: &str) -> Vec<RuleMessage> {
        written(batch)
            .iter()
            .filter_map(rule_of)
            .filter(|(_, c, _)| *c == chain)
            .map(|(_, _, r)| r.clone())
            .collect()
    }

    /// A rule of `exprs` in `chain`, as the kernel would dump it.
    pub fn rule_attrs(chain: &str, exprs: &[NftExpr]) -> RuleMessage {
        let mut batch = Batch::new();
        batch.add_rule(Family::Inet, chain, exprs.to_vec(), None);
        let rule = rules(&batch, chain).remove(0);
        assert!(
            rule.attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::Expressions(_)))
                || exprs.is_empty()
        );
        let _ = <RuleMessage as Parseable<[u8]>>::parse;
        rule
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    use crate::nft_expr::{
        NFT_CMP_EQ, NFT_CMP_NEQ, NFT_META_IIFNAME, NFT_META_MARK, NFT_PAYLOAD_LL_HEADER,
    };

    /// A kind of rules named "test" ("testing" in comments and errors).
    struct Kind;

    impl Kind {
        fn chain_name(&self, o: &NftOwner) -> Result<String> {
            chain_name("test", "testing", o)
        }

        fn parse_chain_name(&self, name: &str, network: &str) -> Option<(String, String)> {
            parse_chain_name("test", name, network)
        }

        fn comment(&self, o: &NftOwner) -> String {
            comment("testing", o)
        }
    }

    const KIND: Kind = Kind;

    fn owner<'a>(network: &'a str, cid: &'a str, ifname: &'a str) -> NftOwner<'a> {
        NftOwner {
            network,
            container_id: cid,
            ifname,
        }
    }

    #[test]
    fn chain_names_and_their_limits() {
        assert_eq!(
            KIND.chain_name(&owner("net1", "ctr-1", "eth0")).unwrap(),
            "test/net1/ctr-1/eth0"
        );
        let cid = "c";
        let ifname = "eth0";
        let fits = "n".repeat(255 - "test/".len() - 1 - cid.len() - 1 - ifname.len());
        let name = KIND.chain_name(&owner(&fits, cid, ifname)).unwrap();
        assert_eq!(name.len(), 255);
        // One byte more: the network is named by its digest, and parses back.
        let long = format!("{fits}n");
        let name = KIND.chain_name(&owner(&long, cid, ifname)).unwrap();
        assert!(name.starts_with("test//") && name.len() < 255, "{name}");
        assert_eq!(
            KIND.parse_chain_name(&name, &long),
            Some((cid.into(), ifname.into()))
        );
        assert_eq!(KIND.parse_chain_name(&name, &fits), None);
        // The reference's worst case: a 185-byte network, 64-byte ids.
        let id = "f".repeat(64);
        let name = KIND
            .chain_name(&owner(&"n".repeat(185), &id, "eth0"))
            .unwrap();
        assert!(name.len() <= 255);
        // An id too long even then is refused.
        let huge = "c".repeat(250);
        let e = KIND.chain_name(&owner(&long, &huge, ifname)).unwrap_err();
        assert!(matches!(
            e,
            KernelError::NftNameTooLong {
                what: "testing",
                ..
            }
        ));
        assert!(e.to_string().contains("too long for testing"), "{e}");
        let code = cni_types::CniError::from(e).code;
        assert_eq!(code, cni_types::Code::INVALID_CONFIG);

        for bad in [
            owner("a/b", "c", "eth0"),
            owner("a", "b/c", "eth0"),
            owner("a", "c", "e/0"),
            owner("", "c", "eth0"),
            owner("a", "c\0", "eth0"),
        ] {
            let e = KIND.chain_name(&bad).unwrap_err();
            assert!(matches!(e, KernelError::NftOwner { .. }), "{bad:?}");
            assert!(e.to_string().contains("'/'"), "{e}");
            let code = cni_types::CniError::from(e).code;
            assert_eq!(code, cni_types::Code::INVALID_CONFIG);
        }
    }

    #[test]
    fn chain_names_parse_back_to_their_owner() {
        let name = KIND.chain_name(&owner("net1", "ctr-1", "eth0")).unwrap();
        let parse = |n| KIND.parse_chain_name(n, "net1");
        assert_eq!(parse(&name), Some(("ctr-1".into(), "eth0".into())));
        assert_eq!(KIND.parse_chain_name(&name, "net"), None);
        assert_eq!(KIND.parse_chain_name(&name, "net11"), None);
        assert_eq!(parse("test/net1/ctr-1"), None);
        assert_eq!(parse("test/net1//eth0"), None);
        assert_eq!(parse("testx/net1/ctr-1/eth0"), None);
        assert_eq!(parse("masq/net1/ctr-1/eth0"), None);
        assert_eq!(parse("postrouting"), None);
        assert_eq!(parse("test/net1/a/b/c"), None);
    }

    #[test]
    fn comments_are_cut_to_fit() {
        assert_eq!(
            KIND.comment(&owner("net1", "ctr-1", "eth0")),
            "cni-rs testing: net1 ctr-1 eth0"
        );
        let long = "é".repeat(100);
        let c = KIND.comment(&owner(&long, "c", "eth0"));
        assert!(c.len() <= COMMENT_MAX && c.starts_with("cni-rs testing: é"));
        // As userdata: a TLV of type 0 holding the text and its NUL, which
        // fits nft's 128-byte comment buffer even for a longer text.
        let u = nftables::comment_udata(&c);
        assert_eq!(&u[..2], &[0, c.len() as u8 + 1]);
        assert_eq!(&u[2..u.len() - 1], c.as_bytes());
        assert_eq!(nftables::comment_udata(&"x".repeat(300)).len(), 128);
    }

    #[test]
    fn expressions_are_read_from_kernel_shaped_rules() {
        let rule = rule_attrs(
            "test/n/c/eth0",
            &[
                meta(NFT_META_IIFNAME),
                cmp(NFT_CMP_EQ, b"veth0\0"),
                payload(NFT_PAYLOAD_LL_HEADER, 6, 6),
                cmp(NFT_CMP_NEQ, &[2, 0, 0, 0, 0, 1]),
                expr("counter", &[]),
                // A meta set (sreg, no dreg) is no load.
                crate::nft_expr::meta_set(NFT_META_MARK, 1),
                // A nat without its family is nothing we understand.
                expr("nat", &[(1, 1)]),
                verdict(0),
            ],
        );
        let all: Vec<Expr> = exprs(&rule).collect();
        assert_eq!(
            all,
            [
                Expr::Meta {
                    key: NFT_META_IIFNAME
                },
                Expr::Cmp {
                    op: NFT_CMP_EQ,
                    value: b"veth0\0"
                },
                Expr::Payload {
                    base: NFT_PAYLOAD_LL_HEADER,
                    offset: 6,
                    len: 6
                },
                Expr::Cmp {
                    op: NFT_CMP_NEQ,
                    value: &[2, 0, 0, 0, 0, 1]
                },
                Expr::Other,
                Expr::Other,
                Expr::Other,
                Expr::Verdict(0),
            ]
        );
        assert_eq!(exprs(&rule_attrs("x", &[])).count(), 0);
    }
}
