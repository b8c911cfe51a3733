//! What the nftables modules ([`crate::masquerade`], [`crate::spoofcheck`])
//! share: our table, one base chain per owner, and the ways of writing and
//! reading such chains.
//!
//! Each attachment (owner = network name + container id + ifname) gets, per
//! kind of rule, its own base chain `<kind>/<network>/<container id>/<ifname>`
//! in our table `cni-rs` of the kind's family, its rules carrying a comment
//! that names the owner. DEL removes exactly the owner's rules by chain name,
//! without listing the ruleset or tracking rule handles, and so works even
//! when the container's netns is gone (DEL with an empty `CNI_NETNS`); GC
//! finds the owners from the chain names alone.
//!
//! Writing a chain (table, chain, flush, rules) and deleting one (flush,
//! delete) are one nf_tables transaction each, so concurrent plugin runs never
//! see (or leave) a half-written chain. A table is created when missing and
//! never deleted (deleting it could race another ADD).
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there).
//!
//! The separator is '/': it cannot occur in a network name, container id or
//! interface name, and unlike ':' the nft command line (1.0.6) accepts it, so
//! `nft list ruleset > f; nft -f f` and hand edits keep working.

use std::ffi::CString;
use std::io;

use nftnl::{Batch, Chain, ChainType, Hook, MsgType, Policy, ProtoFamily, Rule, Table};
use nix::errno::Errno;

use crate::error::{KernelError, Result};
use crate::nfnetlink::{
    Attrs, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE,
    NfSocket, Reply, put_attr, strz,
};

/// Our table, in each family we use; nothing else is ever touched.
pub const TABLE: &str = "cni-rs";
const SEP: char = '/';
/// NFT_CHAIN_MAXNAMELEN (256) includes the terminating NUL.
const CHAIN_NAME_MAX: usize = 255;
/// A rule comment is a udata TLV in a 128-byte buffer (NFTNL_UDATA_COMMENT_MAXLEN):
/// 2 bytes of header and the NUL leave 125 for the text.
pub(crate) const COMMENT_MAX: usize = 125;

// include/uapi/linux/netfilter/nf_tables.h
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_EXPR_NAME: u16 = 1;
pub(crate) const NFTA_EXPR_DATA: u16 = 2;
pub(crate) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(crate) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(crate) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(crate) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(crate) const NFTA_META_DREG: u16 = 1;
pub(crate) const NFTA_META_KEY: u16 = 2;
#[cfg(test)]
pub(crate) const NFTA_CMP_SREG: u16 = 1;
pub(crate) const NFTA_CMP_OP: u16 = 2;
pub(crate) const NFTA_CMP_DATA: u16 = 3;
pub(crate) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(crate) const NFTA_IMMEDIATE_DATA: u16 = 2;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
pub(crate) const NFTA_VERDICT_CODE: u16 = 1;
pub(crate) const NFT_REG_VERDICT: u32 = 0;
pub(crate) const NFT_PAYLOAD_LL_HEADER: u32 = 0;
pub(crate) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(crate) const NFT_CMP_EQ: u32 = 0;
pub(crate) const NFT_CMP_NEQ: u32 = 1;
pub(crate) const NFT_META_IIFNAME: u32 = 6;

/// Who a chain belongs to: one attachment of one container to one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftOwner<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

/// One kind of per-owner chain: the family of the `cni-rs` table it lives
/// in, how its base chain hooks in, the first part of its names, and what it
/// is called in comments and errors.
pub(crate) struct ChainKind {
    pub family: ProtoFamily,
    pub prefix: &'static str,
    pub what: &'static str,
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

impl ChainKind {
    /// The owner's chain name, or why it cannot have one. Writing refuses
    /// such an owner, so deleting and reading know there is nothing of it.
    pub fn chain_name(&self, owner: &NftOwner) -> Result<String> {
        let parts = [owner.network, owner.container_id, owner.ifname];
        if parts
            .iter()
            .any(|p| p.is_empty() || p.contains(SEP) || p.contains('\0'))
        {
            return Err(KernelError::NftOwner {
                what: self.what,
                owner: format!("{} {} {}", owner.network, owner.container_id, owner.ifname),
            });
        }
        let name = format!(
            "{}{SEP}{}{SEP}{}{SEP}{}",
            self.prefix, owner.network, owner.container_id, owner.ifname
        );
        if name.len() > CHAIN_NAME_MAX {
            return Err(KernelError::NftNameTooLong {
                what: self.what,
                network: owner.network.to_owned(),
                len: name.len(),
            });
        }
        Ok(name)
    }

    /// The comment on each rule, cut to what a rule comment can hold.
    pub fn comment(&self, owner: &NftOwner) -> String {
        let mut c = format!(
            "cni-rs {}: {} {} {}",
            self.what, owner.network, owner.container_id, owner.ifname
        );
        if c.len() > COMMENT_MAX {
            let mut end = COMMENT_MAX;
            while !c.is_char_boundary(end) {
                end -= 1;
            }
            c.truncate(end);
        }
        c
    }

    /// The `(container id, ifname)` a chain name of `network` belongs to.
    pub fn parse_chain_name(&self, name: &str, network: &str) -> Option<(String, String)> {
        let rest = name
            .strip_prefix(self.prefix)?
            .strip_prefix(SEP)?
            .strip_prefix(network)?
            .strip_prefix(SEP)?;
        let (cid, ifname) = rest.split_once(SEP)?;
        (!cid.is_empty() && !ifname.is_empty() && !ifname.contains(SEP))
            .then(|| (cid.to_owned(), ifname.to_owned()))
    }

    fn nfproto(&self) -> u8 {
        self.family as u8
    }

    /// Install or replace the owner's rules in one transaction: create the
    /// table and the base chain if missing, flush the chain, then let
    /// `rules` add the rules (each with the comment it is given).
    pub fn replace(
        &self,
        owner: &NftOwner,
        op: &'static str,
        rules: impl FnOnce(&mut Batch, &Chain, &str),
    ) -> Result<()> {
        let name = self.chain_name(owner)?;
        let table = Table::new(cstring(TABLE), self.family);
        let mut chain = Chain::new(cstring(&name), &table);
        chain.set_hook(self.hook, self.priority);
        chain.set_type(self.chain_type);
        chain.set_policy(Policy::Accept);

        let mut batch = Batch::new();
        batch.add(&table, MsgType::Add);
        batch.add(&chain, MsgType::Add);
        // A rule deletion without a handle flushes the chain.
        batch.add(&Rule::new(&chain), MsgType::Del);
        rules(&mut batch, &chain, &self.comment(owner));
        commit(op, &name, batch)
    }

    /// Remove the owner's chain and its rules in one transaction (flush,
    /// then delete the chain). Nothing to remove (no chain, no table) is
    /// success.
    pub fn delete(&self, owner: &NftOwner, op: &'static str) -> Result<()> {
        // An owner `replace` refuses never had a chain; its name could even
        // be another owner's, so touch nothing.
        let Ok(name) = self.chain_name(owner) else {
            return Ok(());
        };
        let table = Table::new(cstring(TABLE), self.family);
        let chain = Chain::new(cstring(&name), &table);
        let mut batch = Batch::new();
        batch.add(&Rule::new(&chain), MsgType::Del);
        batch.add(&chain, MsgType::Del);
        match commit(op, &name, batch) {
            Err(KernelError::Nftables { source, .. }) if is_enoent(&source) => Ok(()),
            other => other,
        }
    }

    /// The rules of the owner's chain as the kernel has them (NEWRULE
    /// replies, in chain order), or `None` when the chain does not exist.
    pub fn rules(&self, owner: &NftOwner, op: &'static str) -> Result<Option<Vec<Reply>>> {
        let Ok(name) = self.chain_name(owner) else {
            return Ok(None);
        };
        let mut socket = NfSocket::open(op)?;
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NFTA_CHAIN_TABLE, &strz(TABLE));
        put_attr(&mut attrs, NFTA_CHAIN_NAME, &strz(&name));
        match socket.get(self.nfproto(), NFT_MSG_GETCHAIN, &attrs)? {
            Err(e) if is_enoent(&e) => return Ok(None),
            Err(e) => return Err(nft_error(op, &name, e)),
            Ok(_) => {}
        }
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NFTA_RULE_TABLE, &strz(TABLE));
        put_attr(&mut attrs, NFTA_RULE_CHAIN, &strz(&name));
        let rules = match socket.dump(self.nfproto(), NFT_MSG_GETRULE, &attrs)? {
            Err(e) if is_enoent(&e) => return Ok(None),
            Err(e) => return Err(nft_error(op, &name, e)),
            Ok(rules) => rules,
        };
        Ok(Some(
            rules
                .into_iter()
                .filter(|r| r.msg_type == NFT_MSG_NEWRULE)
                .filter(|r| {
                    r.attrs().get_str(NFTA_RULE_TABLE) == Some(TABLE)
                        && r.attrs().get_str(NFTA_RULE_CHAIN) == Some(name.as_str())
                })
                .collect(),
        ))
    }

    /// Every `(container id, ifname)` with a chain of this kind for `network`.
    pub fn owners(&self, network: &str, op: &'static str) -> Result<Vec<(String, String)>> {
        let mut socket = NfSocket::open(op)?;
        let chains = match socket.dump(self.nfproto(), NFT_MSG_GETCHAIN, &[])? {
            Err(e) if is_enoent(&e) => return Ok(Vec::new()),
            Err(e) => return Err(nft_error(op, TABLE, e)),
            Ok(chains) => chains,
        };
        let mut owners: Vec<(String, String)> = chains
            .iter()
            .filter(|c| c.msg_type == NFT_MSG_NEWCHAIN)
            .filter(|c| c.attrs().get_str(NFTA_CHAIN_TABLE) == Some(TABLE))
            .filter_map(|c| self.parse_chain_name(c.attrs().get_str(NFTA_CHAIN_NAME)?, network))
            .collect();
        owners.sort();
        owners.dedup();
        Ok(owners)
    }

    /// Ok when nf_tables answers in this namespace (a table dump of this
    /// kind's family succeeds).
    pub fn available(&self, op: &'static str) -> Result<()> {
        let mut socket = NfSocket::open(op)?;
        socket
            .dump(self.nfproto(), NFT_MSG_GETTABLE, &[])?
            .map(|_| ())
            .map_err(|e| nft_error(op, self.what, e))
    }
}

pub(crate) fn cstring(s: &str) -> CString {
    // Callers checked for NUL (chain names) or build the string themselves.
    CString::new(s.replace('\0', "")).expect("no NUL left")
}

/// Put the owner's comment on a rule. Only a comment longer than
/// COMMENT_MAX is refused, and [`ChainKind::comment`] cut it to fit.
pub(crate) fn set_comment(rule: &mut Rule, comment: &str) {
    let _ = rule.set_comment(cstring(comment));
}

fn nft_error(op: &'static str, object: &str, source: io::Error) -> KernelError {
    KernelError::Nftables {
        op,
        object: object.to_owned(),
        source,
    }
}

fn is_enoent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::ENOENT as i32)
}

/// Send a batch over a fresh socket in the calling thread's namespace.
fn commit(op: &'static str, object: &str, batch: Batch) -> Result<()> {
    let batch = batch.finalize();
    let bytes: Vec<u8> = batch.iter().flatten().copied().collect();
    let mut socket = NfSocket::open(op)?;
    socket
        .send_batch(&bytes, batch.sequence_numbers())?
        .map_err(|e| nft_error(op, object, e))
}

/// One expression of a rule as the kernel dumps it, reduced to what our
/// readers look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expr<'a> {
    /// Load `len` bytes at `offset` of header `base` into a register.
    Payload { base: u32, offset: u32, len: u32 },
    /// Load the meta key `key` into a register.
    Meta { key: u32 },
    /// Compare the register with `value`.
    Cmp { op: u32, value: &'a [u8] },
    /// A verdict (NF_DROP, NF_ACCEPT, NFT_JUMP, ...).
    Verdict(i32),
    /// Anything else (a counter, masquerade, a meta set, ...).
    Other,
}

/// The expressions of a rule (its NFTA_RULE_* attributes), in order.
pub(crate) fn exprs(rule: Attrs<'_>) -> impl Iterator<Item = Expr<'_>> {
    Attrs(rule.get(NFTA_RULE_EXPRESSIONS).unwrap_or_default())
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .map(|(_, elem)| {
            let elem = Attrs(elem);
            let data = Attrs(elem.get(NFTA_EXPR_DATA).unwrap_or_default());
            parse_expr(elem.get_str(NFTA_EXPR_NAME), data).unwrap_or(Expr::Other)
        })
}

fn parse_expr<'a>(name: Option<&str>, data: Attrs<'a>) -> Option<Expr<'a>> {
    Some(match name? {
        "payload" if data.get(NFTA_PAYLOAD_DREG).is_some() => Expr::Payload {
            base: data.get_be32(NFTA_PAYLOAD_BASE)?,
            offset: data.get_be32(NFTA_PAYLOAD_OFFSET)?,
            len: data.get_be32(NFTA_PAYLOAD_LEN)?,
        },
        "meta" if data.get(NFTA_META_DREG).is_some() => Expr::Meta {
            key: data.get_be32(NFTA_META_KEY)?,
        },
        "cmp" => Expr::Cmp {
            op: data.get_be32(NFTA_CMP_OP)?,
            value: Attrs(data.get(NFTA_CMP_DATA)?).get(NFTA_DATA_VALUE)?,
        },
        "immediate" if data.get_be32(NFTA_IMMEDIATE_DREG) == Some(NFT_REG_VERDICT) => {
            let verdict = Attrs(data.get(NFTA_IMMEDIATE_DATA)?).get(NFTA_DATA_VERDICT)?;
            Expr::Verdict(Attrs(verdict).get_be32(NFTA_VERDICT_CODE)? as i32)
        }
        _ => return None,
    })
}

/// Builders of kernel-shaped attributes for the readers' unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use crate::nfnetlink::{messages, nft_attrs};

    pub fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_attr(&mut v, kind, payload);
        v
    }

    pub fn expr(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
        let mut e = nla(NFTA_EXPR_NAME, &strz(name));
        e.extend(nla(NFTA_EXPR_DATA | 0x8000, &data.concat()));
        nla(NFTA_LIST_ELEM | 0x8000, &e)
    }

    pub fn payload(base: u32, offset: u32, len: u32) -> Vec<u8> {
        expr(
            "payload",
            &[
                nla(NFTA_PAYLOAD_DREG, &1u32.to_be_bytes()),
                nla(NFTA_PAYLOAD_BASE, &base.to_be_bytes()),
                nla(NFTA_PAYLOAD_OFFSET, &offset.to_be_bytes()),
                nla(NFTA_PAYLOAD_LEN, &len.to_be_bytes()),
            ],
        )
    }

    pub fn meta(key: u32) -> Vec<u8> {
        expr(
            "meta",
            &[
                nla(NFTA_META_DREG, &1u32.to_be_bytes()),
                nla(NFTA_META_KEY, &key.to_be_bytes()),
            ],
        )
    }

    pub fn cmp(op: u32, value: &[u8]) -> Vec<u8> {
        expr(
            "cmp",
            &[
                nla(NFTA_CMP_SREG, &1u32.to_be_bytes()),
                nla(NFTA_CMP_OP, &op.to_be_bytes()),
                nla(NFTA_CMP_DATA | 0x8000, &nla(NFTA_DATA_VALUE, value)),
            ],
        )
    }

    pub fn verdict(code: i32) -> Vec<u8> {
        let verdict = nla(NFTA_VERDICT_CODE, &code.to_be_bytes());
        expr(
            "immediate",
            &[
                nla(NFTA_IMMEDIATE_DREG, &NFT_REG_VERDICT.to_be_bytes()),
                nla(
                    NFTA_IMMEDIATE_DATA | 0x8000,
                    &nla(NFTA_DATA_VERDICT | 0x8000, &verdict),
                ),
            ],
        )
    }

    pub fn rule_attrs(chain: &str, exprs: &[Vec<u8>]) -> Vec<u8> {
        let mut r = nla(NFTA_RULE_TABLE, &strz(TABLE));
        r.extend(nla(NFTA_RULE_CHAIN, &strz(chain)));
        r.extend(nla(NFTA_RULE_EXPRESSIONS | 0x8000, &exprs.concat()));
        r
    }

    /// The attributes nftnl writes for `rule` (the kernel dumps rules with
    /// the same attributes), checked to be one NEWRULE in `chain`.
    pub fn written(rule: &Rule, chain: &str) -> Vec<u8> {
        let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
        // SAFETY: the buffer has the size nftnl requires.
        unsafe { nftnl::NlMsg::write(rule, buf.as_mut_ptr().cast(), 1, MsgType::Add) };
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        let msgs = messages(&buf[..len]).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].msg_type & 0xff, NFT_MSG_NEWRULE);
        let attrs = nft_attrs(msgs[0].payload);
        assert_eq!(attrs.clone().get_str(NFTA_RULE_CHAIN), Some(chain));
        attrs.0.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    const KIND: ChainKind = ChainKind {
        family: ProtoFamily::Inet,
        prefix: "test",
        what: "testing",
        chain_type: ChainType::Filter,
        hook: Hook::In,
        priority: 0,
    };

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
        let long = format!("{fits}n");
        let e = KIND.chain_name(&owner(&long, cid, ifname)).unwrap_err();
        assert!(matches!(
            e,
            KernelError::NftNameTooLong {
                len: 256,
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
        let table = Table::new(cstring(TABLE), ProtoFamily::Inet);
        let chain = Chain::new(c"x", &table);
        let mut rule = Rule::new(&chain);
        assert!(rule.set_comment(cstring(&c)).is_ok());
        assert!(rule.set_comment(cstring(&"x".repeat(126))).is_err());
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
                expr(
                    "meta",
                    &[nla(2, &3u32.to_be_bytes()), nla(3, &1u32.to_be_bytes())],
                ),
                // A truncated cmp is nothing we understand.
                expr("cmp", &[nla(NFTA_CMP_OP, &0u32.to_be_bytes())]),
                verdict(0),
            ],
        );
        let all: Vec<Expr> = exprs(Attrs(&rule)).collect();
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
        assert_eq!(exprs(Attrs(&rule_attrs("x", &[]))).count(), 0);
        assert_eq!(exprs(Attrs(&[])).count(), 0);
    }
}
