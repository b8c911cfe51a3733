//! Masquerade (source NAT to the outgoing interface's address) for container
//! addresses, in our own nftables table `inet cni-rs`.
//!
//! Each attachment (owner = network name + container id + ifname) gets its
//! own nat base chain `masq/<network>/<container id>/<ifname>`, hooked at
//! postrouting with priority 100 (srcnat), holding one rule per container
//! address: `ip saddr <addr> ip daddr != <its subnet> ip daddr != 224.0.0.0/4
//! masquerade` (for IPv6 `ff00::/8`), each with a comment naming the owner.
//!
//! Why one base chain per owner rather than one shared chain: DEL removes
//! exactly the owner's rules by chain name, without listing the ruleset or
//! tracking rule handles, and so it works even when the container's netns and
//! addresses are gone (DEL with an empty `CNI_NETNS`). GC finds the owners from
//! the chain names alone. It costs nothing at packet time: nat chains are only
//! evaluated for the first packet of a connection, and evaluation stops at the
//! first masquerade, so N base chains cost what N rules in one chain cost.
//!
//! ADD and DEL are one nf_tables transaction each, so concurrent plugin runs
//! never see (or leave) a half-written chain; the table is created when
//! missing and never deleted (deleting it could race another ADD).
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there): run it inside [`crate::Netns::run`] to act
//! elsewhere.
//!
//! The separator is '/': it cannot occur in a network name, container id or
//! interface name, and unlike ':' the nft command line (1.0.6) accepts it, so
//! `nft list ruleset > f; nft -f f` and hand edits keep working.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Ipv4HeaderField, Ipv6HeaderField, Masquerade, Meta, NetworkHeaderField,
    Payload,
};
use nftnl::{Batch, Chain, ChainType, Hook, MsgType, Policy, ProtoFamily, Rule, Table};
use nix::errno::Errno;
use nix::libc;

use crate::error::{KernelError, Result};
use crate::nfnetlink::{
    Attrs, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE,
    NfSocket, put_attr, strz,
};

/// Our table (family inet); nothing else is ever touched.
pub const TABLE: &str = "cni-rs";
/// Chain names are `masq/<network>/<container id>/<ifname>`.
const CHAIN_PREFIX: &str = "masq";
const SEP: char = '/';
/// NFT_CHAIN_MAXNAMELEN (256) includes the terminating NUL.
const CHAIN_NAME_MAX: usize = 255;
/// srcnat
const NAT_PRIORITY: i32 = 100;
/// A rule comment is a udata TLV in a 128-byte buffer (NFTNL_UDATA_COMMENT_MAXLEN):
/// 2 bytes of header and the NUL leave 125 for the text.
const COMMENT_MAX: usize = 125;

// include/uapi/linux/netfilter/nf_tables.h
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
/// Offsets and lengths of the source address in the IPv4 and IPv6 headers.
const IPV4_SADDR: (u32, u32) = (12, 4);
const IPV6_SADDR: (u32, u32) = (8, 16);

/// Who a chain belongs to: one attachment of one container to one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasqOwner<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

impl MasqOwner<'_> {
    /// The owner's chain name, or why it cannot have one. `add` refuses such
    /// an owner, so `del` and `installed` know there is nothing of it.
    fn chain_name(&self) -> Result<String> {
        let parts = [self.network, self.container_id, self.ifname];
        if parts
            .iter()
            .any(|p| p.is_empty() || p.contains(SEP) || p.contains('\0'))
        {
            return Err(KernelError::MasqueradeOwner(format!(
                "{} {} {}",
                self.network, self.container_id, self.ifname
            )));
        }
        let name = format!(
            "{CHAIN_PREFIX}{SEP}{}{SEP}{}{SEP}{}",
            self.network, self.container_id, self.ifname
        );
        if name.len() > CHAIN_NAME_MAX {
            return Err(KernelError::MasqueradeNameTooLong {
                network: self.network.to_owned(),
                len: name.len(),
            });
        }
        Ok(name)
    }

    /// The comment on each rule, cut to what a rule comment can hold.
    fn comment(&self) -> String {
        let mut c = format!(
            "cni-rs masquerade: {} {} {}",
            self.network, self.container_id, self.ifname
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
}

/// The `(container id, ifname)` a chain name of `network` belongs to.
fn parse_chain_name(name: &str, network: &str) -> Option<(String, String)> {
    let rest = name
        .strip_prefix(CHAIN_PREFIX)?
        .strip_prefix(SEP)?
        .strip_prefix(network)?
        .strip_prefix(SEP)?;
    let (cid, ifname) = rest.split_once(SEP)?;
    (!cid.is_empty() && !ifname.is_empty() && !ifname.contains(SEP))
        .then(|| (cid.to_owned(), ifname.to_owned()))
}

fn cstring(s: &str) -> CString {
    // Callers checked for NUL (chain names) or build the string themselves.
    CString::new(s.replace('\0', "")).expect("no NUL left")
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
fn commit(op: &'static str, object: &str, batch: Batch) -> Result<(), KernelError> {
    let batch = batch.finalize();
    let bytes: Vec<u8> = batch.iter().flatten().copied().collect();
    let mut socket = NfSocket::open(op)?;
    socket
        .send_batch(&bytes, batch.sequence_numbers())?
        .map_err(|e| nft_error(op, object, e))
}

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
    // Only a comment longer than COMMENT_MAX is refused, and it was cut.
    let _ = rule.set_comment(cstring(comment));
    rule
}

/// Install or replace the owner's rules for `addrs` in one transaction:
/// create the table and the chain if missing, flush the chain, add one rule
/// per address. With no addresses this is [`del`].
pub fn add(owner: &MasqOwner, addrs: &[IpNetwork]) -> Result<(), KernelError> {
    if addrs.is_empty() {
        return del(owner);
    }
    let name = owner.chain_name()?;
    let table = Table::new(cstring(TABLE), ProtoFamily::Inet);
    let mut chain = Chain::new(cstring(&name), &table);
    chain.set_hook(Hook::PostRouting, NAT_PRIORITY);
    chain.set_type(ChainType::Nat);
    chain.set_policy(Policy::Accept);
    let comment = owner.comment();

    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&chain, MsgType::Add);
    // A rule deletion without a handle flushes the chain.
    batch.add(&Rule::new(&chain), MsgType::Del);
    for addr in addrs {
        batch.add(&rule(&chain, addr, &comment), MsgType::Add);
    }
    commit("add masquerade", &name, batch)
}

/// Remove the owner's chain and its rules in one transaction (flush, then
/// delete the chain). Nothing to remove (no chain, no table) is success.
pub fn del(owner: &MasqOwner) -> Result<(), KernelError> {
    // An owner `add` refuses never had a chain; its name could even be
    // another owner's, so touch nothing.
    let Ok(name) = owner.chain_name() else {
        return Ok(());
    };
    let table = Table::new(cstring(TABLE), ProtoFamily::Inet);
    let chain = Chain::new(cstring(&name), &table);
    let mut batch = Batch::new();
    batch.add(&Rule::new(&chain), MsgType::Del);
    batch.add(&chain, MsgType::Del);
    match commit("delete masquerade", &name, batch) {
        Err(KernelError::Nftables { source, .. }) if is_enoent(&source) => Ok(()),
        other => other,
    }
}

/// The container addresses the owner's chain masquerades, as the kernel has
/// them, or `None` when the chain does not exist.
pub fn installed(owner: &MasqOwner) -> Result<Option<Vec<IpAddr>>, KernelError> {
    let Ok(name) = owner.chain_name() else {
        return Ok(None);
    };
    const OP: &str = "list masquerade";
    let mut socket = NfSocket::open(OP)?;
    let mut attrs = Vec::new();
    put_attr(&mut attrs, NFTA_CHAIN_TABLE, &strz(TABLE));
    put_attr(&mut attrs, NFTA_CHAIN_NAME, &strz(&name));
    match socket.get(NFT_MSG_GETCHAIN, &attrs)? {
        Err(e) if is_enoent(&e) => return Ok(None),
        Err(e) => return Err(nft_error(OP, &name, e)),
        Ok(_) => {}
    }
    let mut attrs = Vec::new();
    put_attr(&mut attrs, NFTA_RULE_TABLE, &strz(TABLE));
    put_attr(&mut attrs, NFTA_RULE_CHAIN, &strz(&name));
    let rules = match socket.dump(NFT_MSG_GETRULE, &attrs)? {
        Err(e) if is_enoent(&e) => return Ok(None),
        Err(e) => return Err(nft_error(OP, &name, e)),
        Ok(rules) => rules,
    };
    Ok(Some(
        rules
            .iter()
            .filter(|r| r.msg_type == NFT_MSG_NEWRULE)
            .filter(|r| {
                r.attrs().get_str(NFTA_RULE_TABLE) == Some(TABLE)
                    && r.attrs().get_str(NFTA_RULE_CHAIN) == Some(name.as_str())
            })
            .filter_map(|r| rule_source(r.attrs()))
            .collect(),
    ))
}

/// The source address a masquerade rule matches: the value of the first
/// `cmp eq` on the IPv4 or IPv6 source address loaded by a payload expression.
fn rule_source(rule: Attrs) -> Option<IpAddr> {
    let exprs = rule.get(NFTA_RULE_EXPRESSIONS)?;
    let mut loaded = None; // (offset, len) of the last network-header load
    for (kind, elem) in Attrs(exprs) {
        if kind != NFTA_LIST_ELEM {
            continue;
        }
        let elem = Attrs(elem);
        let data = Attrs(elem.get(NFTA_EXPR_DATA).unwrap_or_default());
        match elem.get_str(NFTA_EXPR_NAME) {
            Some("payload")
                if data.get_be32(NFTA_PAYLOAD_BASE) == Some(NFT_PAYLOAD_NETWORK_HEADER) =>
            {
                loaded = data
                    .get_be32(NFTA_PAYLOAD_OFFSET)
                    .zip(data.get_be32(NFTA_PAYLOAD_LEN));
            }
            Some("cmp") if data.get_be32(NFTA_CMP_OP) == Some(NFT_CMP_EQ) => {
                let value = data
                    .get(NFTA_CMP_DATA)
                    .and_then(|d| Attrs(d).get(NFTA_DATA_VALUE));
                let addr = match (loaded, value) {
                    (Some(IPV4_SADDR), Some(v)) => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
                    (Some(IPV6_SADDR), Some(v)) => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
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
    const OP: &str = "list masquerade chains";
    let mut socket = NfSocket::open(OP)?;
    let chains = match socket.dump(NFT_MSG_GETCHAIN, &[])? {
        Err(e) if is_enoent(&e) => return Ok(Vec::new()),
        Err(e) => return Err(nft_error(OP, TABLE, e)),
        Ok(chains) => chains,
    };
    let mut owners: Vec<(String, String)> = chains
        .iter()
        .filter(|c| c.msg_type == NFT_MSG_NEWCHAIN)
        .filter(|c| c.attrs().get_str(NFTA_CHAIN_TABLE) == Some(TABLE))
        .filter_map(|c| parse_chain_name(c.attrs().get_str(NFTA_CHAIN_NAME)?, network))
        .collect();
    owners.sort();
    owners.dedup();
    Ok(owners)
}

/// Ok when nf_tables answers in this namespace (a table dump succeeds).
pub fn available() -> Result<(), KernelError> {
    const OP: &str = "list tables";
    let mut socket = NfSocket::open(OP)?;
    socket
        .dump(NFT_MSG_GETTABLE, &[])?
        .map(|_| ())
        .map_err(|e| nft_error(OP, "inet", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnetlink::{messages, nft_attrs};
    use nftnl::NlMsg;

    fn owner<'a>(network: &'a str, cid: &'a str, ifname: &'a str) -> MasqOwner<'a> {
        MasqOwner {
            network,
            container_id: cid,
            ifname,
        }
    }

    #[test]
    fn chain_names_and_their_limits() {
        assert_eq!(
            owner("net1", "ctr-1", "eth0").chain_name().unwrap(),
            "masq/net1/ctr-1/eth0"
        );
        // 5 + 1 + 1 + 1 + 15 bytes of frame around the network name.
        let cid = "c";
        let ifname = "eth0";
        let fits = "n".repeat(255 - "masq:".len() - 1 - cid.len() - 1 - ifname.len());
        assert_eq!(owner(&fits, cid, ifname).chain_name().unwrap().len(), 255);
        let long = format!("{fits}n");
        let e = owner(&long, cid, ifname).chain_name().unwrap_err();
        assert!(matches!(
            e,
            KernelError::MasqueradeNameTooLong { len: 256, .. }
        ));
        assert!(e.to_string().contains("too long for masquerade"), "{e}");
        let code = cni_types::CniError::from(e).code;
        assert_eq!(code, cni_types::Code::INVALID_CONFIG);

        for bad in [
            owner("a/b", "c", "eth0"),
            owner("a", "b/c", "eth0"),
            owner("a", "c", "e/0"),
            owner("", "c", "eth0"),
            owner("a", "c\0", "eth0"),
        ] {
            assert!(
                matches!(bad.chain_name(), Err(KernelError::MasqueradeOwner(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn chain_names_parse_back_to_their_owner() {
        let name = owner("net1", "ctr-1", "eth0").chain_name().unwrap();
        assert_eq!(
            parse_chain_name(&name, "net1"),
            Some(("ctr-1".into(), "eth0".into()))
        );
        assert_eq!(parse_chain_name(&name, "net"), None);
        assert_eq!(parse_chain_name(&name, "net11"), None);
        assert_eq!(parse_chain_name("masq/net1/ctr-1", "net1"), None);
        assert_eq!(parse_chain_name("masq/net1//eth0", "net1"), None);
        assert_eq!(parse_chain_name("postrouting", "net1"), None);
        assert_eq!(parse_chain_name("masq/net1/a/b/c", "net1"), None);
    }

    #[test]
    fn comments_are_cut_to_fit() {
        assert_eq!(
            owner("net1", "ctr-1", "eth0").comment(),
            "cni-rs masquerade: net1 ctr-1 eth0"
        );
        let long = "é".repeat(100);
        let c = owner(&long, "c", "eth0").comment();
        assert!(c.len() <= COMMENT_MAX && c.starts_with("cni-rs masquerade: é"));
        let table = Table::new(cstring(TABLE), ProtoFamily::Inet);
        let chain = Chain::new(c"x", &table);
        let mut rule = Rule::new(&chain);
        assert!(rule.set_comment(cstring(&c)).is_ok());
        assert!(rule.set_comment(cstring(&"x".repeat(126))).is_err());
    }

    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_attr(&mut v, kind, payload);
        v
    }

    fn expr(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
        let mut e = nla(NFTA_EXPR_NAME, &strz(name));
        e.extend(nla(NFTA_EXPR_DATA | 0x8000, &data.concat()));
        nla(NFTA_LIST_ELEM | 0x8000, &e)
    }

    fn payload(offset: u32, len: u32) -> Vec<u8> {
        expr(
            "payload",
            &[
                nla(1, &1u32.to_be_bytes()), // dreg
                nla(NFTA_PAYLOAD_BASE, &NFT_PAYLOAD_NETWORK_HEADER.to_be_bytes()),
                nla(NFTA_PAYLOAD_OFFSET, &offset.to_be_bytes()),
                nla(NFTA_PAYLOAD_LEN, &len.to_be_bytes()),
            ],
        )
    }

    fn cmp(op: u32, value: &[u8]) -> Vec<u8> {
        expr(
            "cmp",
            &[
                nla(1, &1u32.to_be_bytes()), // sreg
                nla(NFTA_CMP_OP, &op.to_be_bytes()),
                nla(NFTA_CMP_DATA | 0x8000, &nla(NFTA_DATA_VALUE, value)),
            ],
        )
    }

    fn rule_attrs(exprs: &[Vec<u8>]) -> Vec<u8> {
        let mut r = nla(NFTA_RULE_TABLE, &strz(TABLE));
        r.extend(nla(NFTA_RULE_CHAIN, &strz("masq/n/c/eth0")));
        r.extend(nla(NFTA_RULE_EXPRESSIONS | 0x8000, &exprs.concat()));
        r
    }

    #[test]
    fn the_source_address_is_read_from_kernel_shaped_rules() {
        let meta = expr("meta", &[nla(2, &15u32.to_be_bytes())]);
        let v4 = rule_attrs(&[
            meta.clone(),
            cmp(NFT_CMP_EQ, &[2]),
            payload(12, 4),
            cmp(NFT_CMP_EQ, &[10, 1, 0, 5]),
            payload(16, 4),
            cmp(1, &[10, 1, 0, 0]),
            expr("masq", &[]),
        ]);
        assert_eq!(rule_source(Attrs(&v4)), Some("10.1.0.5".parse().unwrap()));

        let ip6: Ipv6Addr = "fd00::5".parse().unwrap();
        let v6 = rule_attrs(&[
            meta.clone(),
            cmp(NFT_CMP_EQ, &[10]),
            payload(8, 16),
            cmp(NFT_CMP_EQ, &ip6.octets()),
            expr("masq", &[]),
        ]);
        assert_eq!(rule_source(Attrs(&v6)), Some(IpAddr::V6(ip6)));

        // A destination match, a `!=` on the source, or a compare not right
        // after the load is no source address.
        let none = rule_attrs(&[
            payload(16, 4),
            cmp(NFT_CMP_EQ, &[10, 1, 0, 5]),
            payload(12, 4),
            cmp(1, &[10, 1, 0, 6]),
            payload(12, 4),
            expr("bitwise", &[]),
            cmp(NFT_CMP_EQ, &[10, 1, 0, 7]),
            expr("masq", &[]),
        ]);
        assert_eq!(rule_source(Attrs(&none)), None);
        assert_eq!(rule_source(Attrs(&rule_attrs(&[]))), None);
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
            let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
            // SAFETY: the buffer has the size nftnl requires.
            unsafe { rule.write(buf.as_mut_ptr().cast(), 1, MsgType::Add) };
            let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
            let msgs = messages(&buf[..len]).unwrap();
            assert_eq!(msgs.len(), 1);
            assert_eq!(msgs[0].msg_type & 0xff, NFT_MSG_NEWRULE);
            let attrs = nft_attrs(msgs[0].payload);
            assert_eq!(
                attrs.clone().get_str(NFTA_RULE_CHAIN),
                Some("masq/n/c/eth0")
            );
            assert_eq!(rule_source(attrs), Some(ip.parse().unwrap()), "{addr}");
        }
    }
}
