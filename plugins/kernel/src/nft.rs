//! What the nftables modules ([`crate::masquerade`], [`crate::spoofcheck`])
//! share: our table, one base chain per kind dispatching through verdict
//! maps to one regular chain per owner, and the ways of writing and reading
//! them.
//!
//! Per kind of rule, our table `cni-rs` of the kind's family holds:
//! - one base chain (e.g. `masquerading`; [`crate::portmap`] has three, one
//!   per hook it needs) whose rules look the packet's key (source address,
//!   input interface, destination port) up in the kind's verdict maps
//!   (`vmap`), created once per namespace;
//! - per attachment (owner = network name + container id + ifname), one
//!   regular chain `<kind>/<network>/<container id>/<ifname>` holding the
//!   owner's rules (each with a comment naming the owner), and one map
//!   element per key, `<key> : jump <owner chain>`.
//!
//! Why a map: the kernel allows at most 1024 hook entries per hook in a
//! namespace (MAX_HOOK_COUNT), so one base chain per owner failed with E2BIG
//! past about a thousand containers. Why one chain per owner: DEL removes the
//! owner's rules by chain name, without listing the ruleset or tracking rule
//! handles, so it works when the container's netns is gone (DEL with an empty
//! `CNI_NETNS`), and it recovers the owner's map keys from the owner's own
//! rules (each rule still matches its key, redundantly) with one small dump;
//! GC finds the owners from the chain names alone. At packet time a base
//! chain costs one hash lookup per map instead of a walk over every owner.
//!
//! Transactions: the setup (table, maps, base chain and its rules) is one
//! batch whose base chain is created with NLM_F_EXCL, so of concurrent first
//! ADDs one creates it and the others get EEXIST (and nothing is
//! duplicated). Writing an owner (its chain, flushed and refilled, and its
//! elements) and deleting one (its elements, its chain) are one batch each,
//! so concurrent plugin runs never see or leave a half-written owner. A map
//! element is created without NLM_F_EXCL: the kernel accepts it when the key
//! is free or already maps to the same chain and refuses it with EEXIST when
//! it maps to another one. So an owner deletes its own element as "add it
//! mapping to my chain, then delete it" in one batch, which fails instead of
//! deleting the element of an owner who took the key over (an address
//! reused after a missed DEL); on such a refusal the holders of the keys are
//! asked (GETSETELEM) and the batch is built again. The table is created
//! when missing and never deleted (deleting it could race another ADD).
//!
//! Chains of the layout before the maps (a base chain per owner, under the
//! same names) are still read, deleted, and replaced on ADD.
//!
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there).
//!
//! The separator is '/': it cannot occur in a network name, container id or
//! interface name, and unlike ':' the nft command line (1.0.6) accepts it, so
//! `nft list ruleset > f; nft -f f` and hand edits keep working (for the
//! same reason no chain is named after an nft keyword such as `masquerade`).

use std::collections::HashMap;
use std::ffi::CString;
use std::io;

use nftnl::{Batch, Chain, ChainType, Hook, MsgType, Policy, ProtoFamily, Rule, Table};
use nix::errno::Errno;

use crate::error::{KernelError, Result};
use crate::nfnetlink::{
    Attrs, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSETELEM, NFT_MSG_GETTABLE,
    NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWSETELEM, NFTA_DATA_VALUE, NFTA_DATA_VERDICT,
    NFTA_LIST_ELEM, NFTA_VERDICT_CODE, NfSocket, Reply, put_attr, set_elem_owner, set_elem_request,
    set_elements, strz,
};
use crate::nft_ffi::{Exclusive, KeyType, NftSet, SetElement};

/// Our table, in each family we use; nothing else is ever touched.
pub const TABLE: &str = "cni-rs";
const SEP: char = '/';
/// NFT_CHAIN_MAXNAMELEN (256) includes the terminating NUL.
const CHAIN_NAME_MAX: usize = 255;
/// A rule comment is a udata TLV in a 128-byte buffer (NFTNL_UDATA_COMMENT_MAXLEN):
/// 2 bytes of header and the NUL leave 125 for the text.
pub(crate) const COMMENT_MAX: usize = 125;
/// Batches refused because others changed the maps meanwhile are built
/// again from what the kernel holds then, this many times in all.
const ATTEMPTS: usize = 4;

// include/uapi/linux/netfilter/nf_tables.h
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;
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
pub(crate) const NFT_REG_VERDICT: u32 = 0;
pub(crate) const NFT_PAYLOAD_LL_HEADER: u32 = 0;
pub(crate) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(crate) const NFT_CMP_EQ: u32 = 0;
pub(crate) const NFT_CMP_NEQ: u32 = 1;
pub(crate) const NFT_META_IIFNAME: u32 = 6;
pub(crate) const NFTA_NAT_TYPE: u16 = 1;
pub(crate) const NFTA_NAT_FAMILY: u16 = 2;
pub(crate) const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
pub(crate) const NFTA_NAT_REG_PROTO_MIN: u16 = 5;

/// Who a chain belongs to: one attachment of one container to one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftOwner<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

/// One verdict map of a kind: its name in our table, its key, and the id
/// the base chain's rule refers to it by in the setup batch.
pub(crate) struct MapSpec {
    pub name: &'static str,
    pub key: KeyType,
    pub id: u32,
}

/// A key in one of a kind's maps (an owner has one per rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MapKey {
    pub map: &'static str,
    pub key: Vec<u8>,
}

/// Who a key maps to, as far as an owner is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Nobody,
    /// `jump` to the owner's chain.
    Owner,
    /// Any other verdict (another owner's chain, most likely).
    Other,
}

/// A base chain of a kind: its name, how it hooks in, and its rules (the
/// `vmap` lookups dispatching to the owner chains, or anything else the
/// kind needs once per namespace).
pub(crate) struct BaseChain {
    pub name: &'static str,
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
    /// Add the base chain's rules.
    pub rules: fn(&mut Batch, &Chain),
}

/// One kind of per-owner chain: the family of the `cni-rs` table it lives
/// in, its base chains (one for most kinds) with their rules looking the
/// maps up, its maps, the first part of its owner chains' names, how a rule
/// of an owner chain names its key, and what it is called in comments and
/// errors.
pub(crate) struct ChainKind {
    pub family: ProtoFamily,
    pub prefix: &'static str,
    pub what: &'static str,
    /// Created together, once per namespace; all of them must exist for an
    /// owner's rules to be in force.
    pub bases: &'static [BaseChain],
    pub maps: &'static [MapSpec],
    /// Anything else the setup batch creates before the base chains (sets
    /// and data maps their rules read).
    pub setup: fn(&mut Batch),
    /// The map key a rule of an owner chain matches.
    pub rule_key: fn(Attrs) -> Option<MapKey>,
}

/// An owner's chain as the kernel has it.
struct OwnerChain {
    /// A base chain of the layout before the maps (no elements jump to it).
    legacy: bool,
    /// Its rules (NEWRULE replies, in chain order).
    rules: Vec<Reply>,
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

    fn table(&self) -> Table {
        Table::new(cstring(TABLE), self.family)
    }

    /// Create the table, the maps and the base chains with their rules,
    /// unless the base chains exist. One batch; each base chain is created
    /// exclusively, so a concurrent creator makes it fail as a whole with
    /// EEXIST, which means the work is done. Only missing base chains are
    /// created (one deleted by hand comes back on the next write).
    fn ensure_setup(&self, socket: &mut NfSocket, op: &'static str) -> Result<()> {
        let mut missing = Vec::new();
        for base in self.bases {
            if self.chain(socket, base.name, op)?.is_none() {
                missing.push(base);
            }
        }
        let Some(first) = missing.first() else {
            return Ok(());
        };
        let table = self.table();
        let mut batch = Batch::new();
        batch.add(&table, MsgType::Add);
        for map in self.maps {
            let name = cstring(map.name);
            let map = NftSet::verdict_map(c"cni-rs", self.family, &name, map.key, map.id);
            batch.add(&map, MsgType::Add);
        }
        (self.setup)(&mut batch);
        for base in &missing {
            let mut chain = Chain::new(cstring(base.name), &table);
            chain.set_hook(base.hook, base.priority);
            chain.set_type(base.chain_type);
            chain.set_policy(Policy::Accept);
            batch.add(&Exclusive(&chain), MsgType::Add);
            (base.rules)(&mut batch, &chain);
        }
        match commit(socket, op, first.name, batch) {
            Err(KernelError::Nftables { source, .. })
                if errno(&source) == Some(Errno::EEXIST) && self.has_bases(socket, op)? =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Whether every base chain exists as a base chain (a socket of its own).
    pub fn bases_exist(&self, op: &'static str) -> Result<bool> {
        let mut socket = NfSocket::open(op)?;
        self.has_bases(&mut socket, op)
    }

    /// Whether every base chain exists as a base chain.
    fn has_bases(&self, socket: &mut NfSocket, op: &'static str) -> Result<bool> {
        for base in self.bases {
            if self.chain(socket, base.name, op)? != Some(true) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether chain `name` of our table exists: `Some(true)` for a base
    /// chain, `Some(false)` for a regular one.
    fn chain(&self, socket: &mut NfSocket, name: &str, op: &'static str) -> Result<Option<bool>> {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NFTA_CHAIN_TABLE, &strz(TABLE));
        put_attr(&mut attrs, NFTA_CHAIN_NAME, &strz(name));
        match socket.get(self.nfproto(), NFT_MSG_GETCHAIN, &attrs)? {
            Err(e) if is_enoent(&e) => Ok(None),
            Err(e) => Err(nft_error(op, name, e)),
            Ok(reply) => Ok(Some(
                reply.is_some_and(|r| r.attrs().get(NFTA_CHAIN_HOOK).is_some()),
            )),
        }
    }

    /// The owner's chain `name` and its rules, or `None` when it does not
    /// exist.
    fn owner_chain(
        &self,
        socket: &mut NfSocket,
        name: &str,
        op: &'static str,
    ) -> Result<Option<OwnerChain>> {
        let Some(legacy) = self.chain(socket, name, op)? else {
            return Ok(None);
        };
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NFTA_RULE_TABLE, &strz(TABLE));
        put_attr(&mut attrs, NFTA_RULE_CHAIN, &strz(name));
        let rules = match socket.dump(self.nfproto(), NFT_MSG_GETRULE, &attrs)? {
            Err(e) if is_enoent(&e) => return Ok(None),
            Err(e) => return Err(nft_error(op, name, e)),
            Ok(rules) => rules,
        };
        let rules = rules
            .into_iter()
            .filter(|r| r.msg_type == NFT_MSG_NEWRULE)
            .filter(|r| {
                r.attrs().get_str(NFTA_RULE_TABLE) == Some(TABLE)
                    && r.attrs().get_str(NFTA_RULE_CHAIN) == Some(name)
            })
            .collect();
        Ok(Some(OwnerChain { legacy, rules }))
    }

    /// The keys an owner chain's rules match, each once, in rule order.
    fn keys_of(&self, rules: &[Reply]) -> Vec<MapKey> {
        let mut keys: Vec<MapKey> = Vec::new();
        for key in rules.iter().filter_map(|r| (self.rule_key)(r.attrs())) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }

    /// Who `key` maps to (GETSETELEM of that one element), seen from the
    /// owner of `chain`. A missing map or table holds nothing.
    fn holder(
        &self,
        socket: &mut NfSocket,
        key: &MapKey,
        chain: &str,
        op: &'static str,
    ) -> Result<Holder> {
        let attrs = set_elem_request(TABLE, key.map, Some(&key.key));
        let reply = match socket.get(self.nfproto(), NFT_MSG_GETSETELEM, &attrs)? {
            Err(e) if is_enoent(&e) => return Ok(Holder::Nobody),
            Err(e) => return Err(nft_error(op, key.map, e)),
            Ok(reply) => reply,
        };
        let Some(reply) = reply.filter(|r| r.msg_type == NFT_MSG_NEWSETELEM) else {
            return Ok(Holder::Nobody);
        };
        let elem = set_elements(reply.attrs()).find(|e| e.key == key.key.as_slice());
        Ok(match elem {
            None => Holder::Nobody,
            Some(e) if e.verdict.as_ref().and_then(|v| v.jump()) == Some(chain) => Holder::Owner,
            Some(_) => Holder::Other,
        })
    }

    fn holders<'k>(
        &self,
        socket: &mut NfSocket,
        keys: impl IntoIterator<Item = &'k MapKey>,
        chain: &str,
        op: &'static str,
    ) -> Result<HashMap<MapKey, Holder>> {
        let mut found = HashMap::new();
        for key in keys {
            if !found.contains_key(key) {
                let holder = self.holder(socket, key, chain, op)?;
                found.insert(key.clone(), holder);
            }
        }
        Ok(found)
    }

    /// Every key of the kind's maps that jumps to `chain` (a dump of each
    /// map: only for elements whose keys the chain's rules no longer name).
    fn keys_jumping_to(
        &self,
        socket: &mut NfSocket,
        chain: &str,
        op: &'static str,
    ) -> Result<Vec<MapKey>> {
        let mut keys = Vec::new();
        for map in self.maps {
            let attrs = set_elem_request(TABLE, map.name, None);
            let replies = match socket.dump(self.nfproto(), NFT_MSG_GETSETELEM, &attrs)? {
                Err(e) if is_enoent(&e) => continue,
                Err(e) => return Err(nft_error(op, map.name, e)),
                Ok(replies) => replies,
            };
            for reply in replies.iter().filter(|r| r.msg_type == NFT_MSG_NEWSETELEM) {
                if set_elem_owner(reply.attrs()) != (Some(TABLE), Some(map.name)) {
                    continue;
                }
                keys.extend(
                    set_elements(reply.attrs())
                        .filter(|e| e.verdict.as_ref().and_then(|v| v.jump()) == Some(chain))
                        .map(|e| MapKey {
                            map: map.name,
                            key: e.key.to_vec(),
                        }),
                );
            }
        }
        Ok(keys)
    }

    /// Install or replace the owner's rules and elements: set up the kind
    /// if needed, then in one batch create the owner's chain (replacing one
    /// of the old layout), flush it, let `rules` add the rules (each with
    /// the comment it is given), delete the owner's elements for keys it no
    /// longer has, and map each of `keys` to the chain, taking over keys
    /// that map to another chain (left behind by a missed DEL).
    pub fn replace(
        &self,
        owner: &NftOwner,
        op: &'static str,
        keys: &[MapKey],
        rules: impl Fn(&mut Batch, &Chain, &str),
    ) -> Result<()> {
        self.replace_with(owner, op, keys, rules, |_, _, _| Ok(()))
    }

    /// [`Self::replace`], with `extra` adding more to the same batch on
    /// each attempt, given the rules the owner's chain holds now (none for
    /// a new chain or one of the old layout).
    pub fn replace_with(
        &self,
        owner: &NftOwner,
        op: &'static str,
        keys: &[MapKey],
        rules: impl Fn(&mut Batch, &Chain, &str),
        mut extra: impl FnMut(&mut NfSocket, &mut Batch, &[Reply]) -> Result<()>,
    ) -> Result<()> {
        let name = self.chain_name(owner)?;
        let comment = self.comment(owner);
        let cname = cstring(&name);
        let mut unique: Vec<&MapKey> = Vec::new();
        for key in keys {
            if !unique.contains(&key) {
                unique.push(key);
            }
        }
        let keys = unique;
        let mut socket = NfSocket::open(op)?;
        // Who holds which key, once a batch was refused: until then, assume
        // the keys are free or ours.
        let mut known: HashMap<MapKey, Holder> = HashMap::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.ensure_setup(&mut socket, op)?;
            let current = self.owner_chain(&mut socket, &name, op)?;
            let legacy = current.as_ref().is_some_and(|c| c.legacy);
            let stale: Vec<MapKey> = match &current {
                Some(c) if !c.legacy => self
                    .keys_of(&c.rules)
                    .into_iter()
                    .filter(|k| !keys.contains(&k))
                    .collect(),
                _ => Vec::new(),
            };

            let table = self.table();
            let chain = Chain::new(&cname, &table);
            let mut batch = Batch::new();
            if legacy {
                batch.add(&Rule::new(&chain), MsgType::Del);
                batch.add(&chain, MsgType::Del);
            }
            batch.add(&chain, MsgType::Add);
            // A rule deletion without a handle flushes the chain.
            batch.add(&Rule::new(&chain), MsgType::Del);
            rules(&mut batch, &chain, &comment);
            let now: &[Reply] = match &current {
                Some(c) if !c.legacy => &c.rules,
                _ => &[],
            };
            extra(&mut socket, &mut batch, now)?;
            for key in &stale {
                if matches!(known.get(key), None | Some(Holder::Owner)) {
                    self.delete_own_element(&mut batch, key, &cname);
                }
            }
            for &key in &keys {
                let element = self.element(key, &cname);
                if known.get(key) == Some(&Holder::Other) {
                    batch.add(&element, MsgType::Del);
                }
                batch.add(&element, MsgType::Add);
            }
            match commit(&mut socket, op, &name, batch) {
                Err(KernelError::Nftables { source, .. })
                    if attempt < ATTEMPTS
                        && matches!(errno(&source), Some(Errno::EEXIST | Errno::ENOENT)) =>
                {
                    // A key maps elsewhere, or something we counted on went
                    // away meanwhile: look again.
                    let all = keys.iter().copied().chain(&stale);
                    known = self.holders(&mut socket, all, &name, op)?;
                }
                other => return other,
            }
        }
    }

    fn element(&self, key: &MapKey, chain: &CString) -> SetElement {
        let map = cstring(key.map);
        SetElement::jump(c"cni-rs", self.family, &map, &key.key, chain)
    }

    /// Delete `key`'s element only if it maps to `chain`: re-adding the
    /// same mapping is a no-op for the kernel, and fails (failing the batch)
    /// if the key maps elsewhere now.
    fn delete_own_element(&self, batch: &mut Batch, key: &MapKey, chain: &CString) {
        let element = self.element(key, chain);
        batch.add(&element, MsgType::Add);
        batch.add(&element, MsgType::Del);
    }

    /// Remove the owner's elements and chain in one batch (the elements of
    /// the keys its rules name, then the flushed chain). Nothing to remove
    /// is success. When the chain is still referenced (its rules were
    /// flushed behind our back, so the keys of some elements are lost),
    /// every element jumping to it is found in the maps and deleted too.
    pub fn delete(&self, owner: &NftOwner, op: &'static str) -> Result<()> {
        self.delete_with(owner, op, |_, _, _, _| Ok(()))
    }

    /// [`Self::delete`], with `extra` adding more to the same batch on each
    /// attempt, given the rules the owner's chain holds and whether it is a
    /// chain of the old layout (then only to read them: deleting the chain
    /// is all there is to do).
    pub fn delete_with(
        &self,
        owner: &NftOwner,
        op: &'static str,
        mut extra: impl FnMut(&mut NfSocket, &mut Batch, &[Reply], bool) -> Result<()>,
    ) -> Result<()> {
        // An owner `replace` refuses never had a chain; its name could even
        // be another owner's, so touch nothing.
        let Ok(name) = self.chain_name(owner) else {
            return Ok(());
        };
        let cname = cstring(&name);
        let mut socket = NfSocket::open(op)?;
        let mut known: HashMap<MapKey, Holder> = HashMap::new();
        let mut referencing: Vec<MapKey> = Vec::new();
        let mut searched = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(current) = self.owner_chain(&mut socket, &name, op)? else {
                return Ok(());
            };
            let mut keys = Vec::new();
            if !current.legacy {
                keys = self.keys_of(&current.rules);
                for key in &referencing {
                    if !keys.contains(key) {
                        keys.push(key.clone());
                    }
                }
            }
            let table = self.table();
            let chain = Chain::new(&cname, &table);
            let mut batch = Batch::new();
            for key in &keys {
                if matches!(known.get(key), None | Some(Holder::Owner)) {
                    self.delete_own_element(&mut batch, key, &cname);
                }
            }
            extra(&mut socket, &mut batch, &current.rules, current.legacy)?;
            batch.add(&Rule::new(&chain), MsgType::Del);
            batch.add(&chain, MsgType::Del);
            let source = match commit(&mut socket, op, &name, batch) {
                Err(KernelError::Nftables { source, .. }) if attempt < ATTEMPTS => source,
                other => return other,
            };
            match errno(&source) {
                // A key maps elsewhere now, or the chain or a map went away.
                Some(Errno::EEXIST | Errno::ENOENT) => {
                    known = self.holders(&mut socket, &keys, &name, op)?;
                }
                // Still referenced: by elements whose keys we do not know.
                Some(Errno::EBUSY) if !searched && !current.legacy => {
                    searched = true;
                    referencing = self.keys_jumping_to(&mut socket, &name, op)?;
                }
                _ => return Err(nft_error(op, &name, source)),
            }
        }
    }

    /// The rules of the owner's chain that are in force (NEWRULE replies,
    /// in chain order): those whose key maps to the chain, while the base
    /// chain exists (or every rule of a chain of the old layout, a base
    /// chain of its own), or `None` when the chain does not exist.
    pub fn rules(&self, owner: &NftOwner, op: &'static str) -> Result<Option<Vec<Reply>>> {
        let Ok(name) = self.chain_name(owner) else {
            return Ok(None);
        };
        let mut socket = NfSocket::open(op)?;
        let Some(current) = self.owner_chain(&mut socket, &name, op)? else {
            return Ok(None);
        };
        if current.legacy {
            return Ok(Some(current.rules));
        }
        // Without the base chains nothing is dispatched to the owner's.
        if !self.has_bases(&mut socket, op)? {
            return Ok(Some(Vec::new()));
        }
        let keys = self.keys_of(&current.rules);
        let holders = self.holders(&mut socket, &keys, &name, op)?;
        Ok(Some(
            current
                .rules
                .into_iter()
                .filter(|r| {
                    (self.rule_key)(r.attrs())
                        .is_some_and(|k| holders.get(&k) == Some(&Holder::Owner))
                })
                .collect(),
        ))
    }

    /// Every rule of the owner's chain (NEWRULE replies, in chain order),
    /// in force or not, or `None` when the chain does not exist.
    pub fn all_rules(&self, owner: &NftOwner, op: &'static str) -> Result<Option<Vec<Reply>>> {
        let Ok(name) = self.chain_name(owner) else {
            return Ok(None);
        };
        let mut socket = NfSocket::open(op)?;
        Ok(self.owner_chain(&mut socket, &name, op)?.map(|c| c.rules))
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

pub(crate) fn nft_error(op: &'static str, object: &str, source: io::Error) -> KernelError {
    KernelError::Nftables {
        op,
        object: object.to_owned(),
        source,
    }
}

fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

pub(crate) fn is_enoent(e: &io::Error) -> bool {
    errno(e) == Some(Errno::ENOENT)
}

/// Send a batch; the kernel's refusal is an error about `object`.
pub(crate) fn commit(
    socket: &mut NfSocket,
    op: &'static str,
    object: &str,
    batch: Batch,
) -> Result<()> {
    let batch = batch.finalize();
    let bytes: Vec<u8> = batch.iter().flatten().copied().collect();
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
    /// Load the constant `value` into register `dreg`.
    Immediate { dreg: u32, value: &'a [u8] },
    /// NAT of type `nat_type` (NFT_NAT_SNAT, NFT_NAT_DNAT) for `family`, to
    /// the address and port in the registers named (a range's minimum).
    Nat {
        nat_type: u32,
        family: u32,
        addr_reg: Option<u32>,
        port_reg: Option<u32>,
    },
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
        "immediate" => Expr::Immediate {
            dreg: data.get_be32(NFTA_IMMEDIATE_DREG)?,
            value: Attrs(data.get(NFTA_IMMEDIATE_DATA)?).get(NFTA_DATA_VALUE)?,
        },
        "nat" => Expr::Nat {
            nat_type: data.get_be32(NFTA_NAT_TYPE)?,
            family: data.get_be32(NFTA_NAT_FAMILY)?,
            addr_reg: data.get_be32(NFTA_NAT_REG_ADDR_MIN),
            port_reg: data.get_be32(NFTA_NAT_REG_PROTO_MIN),
        },
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
        bases: &[BaseChain {
            name: "testing",
            chain_type: ChainType::Filter,
            hook: Hook::In,
            priority: 0,
            rules: |_, _| {},
        }],
        maps: &[],
        setup: |_| {},
        rule_key: |_| None,
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
