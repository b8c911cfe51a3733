//! Per-owner chains: the mechanism masquerade (here), the bridge's spoof
//! check and portmap's rules (in their plugins) share: our table, one base
//! chain per kind dispatching through verdict maps to one regular chain per
//! owner, and the ways of writing and reading them.
//!
//! Per kind of rule, our table `cni-rs` of the kind's family holds:
//! - one base chain (e.g. `masquerading`; portmap has three, one
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
//! Everything acts in the network namespace of the calling thread (the
//! netlink socket is opened there).
//!
//! The separator is '/': it cannot occur in a network name, container id or
//! interface name, and unlike ':' the nft command line (1.0.6) accepts it, so
//! `nft list ruleset > f; nft -f f` and hand edits keep working (for the
//! same reason no chain is named after an nft keyword such as `masquerade`).

use std::collections::HashMap;
use std::io;

use netlink_packet_netfilter::nftables::RuleMessage;
use nix::errno::Errno;

use crate::error::{KernelError, Result};
use crate::nfnetlink::NfSocket;
pub use crate::nft_expr::{Expr, exprs};
pub use crate::nftables::COMMENT_MAX;
pub use crate::nftables::TABLE;
use crate::nftables::{
    self, BaseHook, Batch, Elem, ElemData, Family, SetData, SetSpec, chain_of, elements_of, rule_of,
};

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

/// A key in one of a kind's maps (an owner has one per rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapKey {
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
pub struct BaseChain {
    pub name: &'static str,
    pub hook: BaseHook,
    /// Add the base chain's rules to the batch, given the chain's name.
    pub rules: fn(&mut Batch, &str),
}

/// One kind of per-owner chain: the family of the `cni-rs` table it lives
/// in, its base chains (one for most kinds) with their rules looking the
/// maps up, its maps, the first part of its owner chains' names, how a rule
/// of an owner chain names its key, and what it is called in comments and
/// errors.
pub struct ChainKind {
    pub family: Family,
    pub prefix: &'static str,
    pub what: &'static str,
    /// Created together, once per namespace; all of them must exist for an
    /// owner's rules to be in force.
    pub bases: &'static [BaseChain],
    /// Its verdict maps (keyed by what the owner chains match).
    pub maps: &'static [SetSpec],
    /// Anything else the setup batch creates before the base chains (sets
    /// and data maps their rules read).
    pub setup: fn(&mut Batch),
    /// The map key a rule of an owner chain matches.
    pub rule_key: fn(&RuleMessage) -> Option<MapKey>,
}

/// An owner's chain as the kernel has it.
struct OwnerChain {
    /// Its rules (as the kernel dumps them, in chain order).
    rules: Vec<RuleMessage>,
}

impl ChainKind {
    /// The owner's chain name, or why it cannot have one.
    pub fn chain_name(&self, owner: &NftOwner) -> Result<String> {
        chain_name(self.prefix, self.what, owner)
    }

    /// The comment on each rule, cut to what a rule comment can hold.
    pub fn comment(&self, owner: &NftOwner) -> String {
        comment(self.what, owner)
    }

    /// The `(container id, ifname)` a chain name of `network` belongs to.
    pub fn parse_chain_name(&self, name: &str, network: &str) -> Option<(String, String)> {
        parse_chain_name(self.prefix, name, network)
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
        let _ = first;
        let mut batch = Batch::new();
        batch.add_table(self.family);
        for map in self.maps {
            batch.add_set(self.family, map);
        }
        (self.setup)(&mut batch);
        for base in &missing {
            batch.add_chain(self.family, base.name, Some(&base.hook), true);
            (base.rules)(&mut batch, base.name);
        }
        match socket.commit(&batch) {
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

    fn chain(&self, socket: &mut NfSocket, name: &str, op: &'static str) -> Result<Option<bool>> {
        chain(socket, self.family, name, op)
    }

    /// The owner's chain `name` and its rules, or `None` when it does not
    /// exist.
    fn owner_chain(
        &self,
        socket: &mut NfSocket,
        name: &str,
        op: &'static str,
    ) -> Result<Option<OwnerChain>> {
        Ok(chain_rules(socket, self.family, name, op)?.map(|rules| OwnerChain { rules }))
    }

    /// The keys an owner chain's rules match, each once, in rule order.
    fn keys_of(&self, rules: &[RuleMessage]) -> Vec<MapKey> {
        let mut keys: Vec<MapKey> = Vec::new();
        for key in rules.iter().filter_map(self.rule_key) {
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
        let request = nftables::get_elements(key.map, Some(&key.key));
        let reply = match socket.get(self.family, request)? {
            Err(e) if is_enoent(&e) => return Ok(Holder::Nobody),
            Err(e) => return Err(nft_error(op, key.map, e)),
            Ok(reply) => reply,
        };
        let Some((_, _, elems)) = reply.as_ref().and_then(elements_of) else {
            return Ok(Holder::Nobody);
        };
        let elem = elems.into_iter().find(|e| e.key == key.key.as_slice());
        Ok(match elem {
            None => Holder::Nobody,
            Some(e) if e.jump == Some(chain) => Holder::Owner,
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
            let request = nftables::get_elements(map.name, None);
            let replies = match socket.dump(self.family, request)? {
                Err(e) if is_enoent(&e) => continue,
                Err(e) => return Err(nft_error(op, map.name, e)),
                Ok(replies) => replies,
            };
            for (table, set, elems) in replies.iter().filter_map(elements_of) {
                if (table, set) != (TABLE, map.name) {
                    continue;
                }
                keys.extend(
                    elems
                        .into_iter()
                        .filter(|e| e.jump == Some(chain))
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
    /// if needed, then in one batch create the owner's chain, flush it, let `rules` add the rules (each with
    /// the comment it is given), delete the owner's elements for keys it no
    /// longer has, and map each of `keys` to the chain, taking over keys
    /// that map to another chain (left behind by a missed DEL).
    pub fn replace(
        &self,
        owner: &NftOwner,
        op: &'static str,
        keys: &[MapKey],
        rules: impl Fn(&mut Batch, &str, &str),
    ) -> Result<()> {
        self.replace_with(owner, op, keys, rules, |_, _, _| Ok(()))
    }

    /// [`Self::replace`], with `extra` adding more to the same batch on
    /// each attempt, given the rules the owner's chain holds now (none for
    /// a new chain).
    pub fn replace_with(
        &self,
        owner: &NftOwner,
        op: &'static str,
        keys: &[MapKey],
        rules: impl Fn(&mut Batch, &str, &str),
        mut extra: impl FnMut(&mut NfSocket, &mut Batch, &[RuleMessage]) -> Result<()>,
    ) -> Result<()> {
        let name = self.chain_name(owner)?;
        let comment = self.comment(owner);
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
            let stale: Vec<MapKey> = match &current {
                Some(c) => self
                    .keys_of(&c.rules)
                    .into_iter()
                    .filter(|k| !keys.contains(&k))
                    .collect(),
                None => Vec::new(),
            };

            let mut batch = Batch::new();
            batch.add_chain(self.family, &name, None, false);
            batch.flush_chain(self.family, &name);
            rules(&mut batch, &name, &comment);
            let now: &[RuleMessage] = current.as_ref().map_or(&[], |c| &c.rules);
            extra(&mut socket, &mut batch, now)?;
            for key in &stale {
                if matches!(known.get(key), None | Some(Holder::Owner)) {
                    self.delete_own_element(&mut batch, key, &name);
                }
            }
            for &key in &keys {
                let element = jump(key, &name);
                if known.get(key) == Some(&Holder::Other) {
                    batch.del_element(self.family, key.map, &element);
                }
                batch.add_element(self.family, key.map, &element);
            }
            match socket.commit(&batch) {
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

    /// Delete `key`'s element only if it maps to `chain`: re-adding the
    /// same mapping is a no-op for the kernel, and fails (failing the batch)
    /// if the key maps elsewhere now.
    fn delete_own_element(&self, batch: &mut Batch, key: &MapKey, chain: &str) {
        let element = jump(key, chain);
        batch.add_element(self.family, key.map, &element);
        batch.del_element(self.family, key.map, &element);
    }

    /// Remove the owner's elements and chain in one batch (the elements of
    /// the keys its rules name, then the flushed chain). Nothing to remove
    /// is success. When the chain is still referenced (its rules were
    /// flushed behind our back, so the keys of some elements are lost),
    /// every element jumping to it is found in the maps and deleted too.
    pub fn delete(&self, owner: &NftOwner, op: &'static str) -> Result<()> {
        self.delete_with(owner, op, |_, _, _| Ok(()))
    }

    /// [`Self::delete`], with `extra` adding more to the same batch on each
    /// attempt, given the rules the owner's chain holds.
    pub fn delete_with(
        &self,
        owner: &NftOwner,
        op: &'static str,
        mut extra: impl FnMut(&mut NfSocket, &mut Batch, &[RuleMessage]) -> Result<()>,
    ) -> Result<()> {
        // An owner `replace` refuses never had a chain; its name could even
        // be another owner's, so touch nothing.
        let Ok(name) = self.chain_name(owner) else {
            return Ok(());
        };
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
            let mut keys = self.keys_of(&current.rules);
            for key in &referencing {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
            let mut batch = Batch::new();
            for key in &keys {
                if matches!(known.get(key), None | Some(Holder::Owner)) {
                    self.delete_own_element(&mut batch, key, &name);
                }
            }
            extra(&mut socket, &mut batch, &current.rules)?;
            batch.flush_chain(self.family, &name);
            batch.del_chain(self.family, &name);
            let refused = match socket.commit(&batch) {
                Err(e @ KernelError::Nftables { .. }) if attempt < ATTEMPTS => e,
                other => return other,
            };
            match refused.errno() {
                // A key maps elsewhere now, or the chain or a map went away.
                Some(Errno::EEXIST | Errno::ENOENT) => {
                    known = self.holders(&mut socket, &keys, &name, op)?;
                }
                // Still referenced: by elements whose keys we do not know.
                Some(Errno::EBUSY) if !searched => {
                    searched = true;
                    referencing = self.keys_jumping_to(&mut socket, &name, op)?;
                }
                _ => return Err(refused),
            }
        }
    }

    /// The rules of the owner's chain that are in force (NEWRULE replies,
    /// in chain order): those whose key maps to the chain, while the base
    /// chain exists, or `None` when the chain does not exist.
    pub fn rules(&self, owner: &NftOwner, op: &'static str) -> Result<Option<Vec<RuleMessage>>> {
        let Ok(name) = self.chain_name(owner) else {
            return Ok(None);
        };
        let mut socket = NfSocket::open(op)?;
        let Some(current) = self.owner_chain(&mut socket, &name, op)? else {
            return Ok(None);
        };
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
                    (self.rule_key)(r).is_some_and(|k| holders.get(&k) == Some(&Holder::Owner))
                })
                .collect(),
        ))
    }

    /// Every rule of the owner's chain (NEWRULE replies, in chain order),
    /// in force or not, or `None` when the chain does not exist.
    pub fn all_rules(
        &self,
        owner: &NftOwner,
        op: &'static str,
    ) -> Result<Option<Vec<RuleMessage>>> {
        let Ok(name) = self.chain_name(owner) else {
            return Ok(None);
        };
        let mut socket = NfSocket::open(op)?;
        Ok(self.owner_chain(&mut socket, &name, op)?.map(|c| c.rules))
    }

    /// Every `(container id, ifname)` with a chain of this kind for `network`.
    pub fn owners(&self, network: &str, op: &'static str) -> Result<Vec<(String, String)>> {
        owners(self.family, self.prefix, network, op)
    }

    /// Ok when nf_tables answers in this namespace (a table dump of this
    /// kind's family succeeds).
    pub fn available(&self, op: &'static str) -> Result<()> {
        available(self.family, self.what, op)
    }
}

/// The chain name of `owner` for rules of kind `prefix` (`what` names the
/// kind in errors), or why it cannot have one: writing refuses such an
/// owner, so deleting and reading know there is nothing of it.
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
    if name.len() > CHAIN_NAME_MAX {
        return Err(KernelError::NftNameTooLong {
            what,
            network: owner.network.to_owned(),
            len: name.len(),
        });
    }
    Ok(name)
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
/// `network` belongs to.
pub fn parse_chain_name(prefix: &str, name: &str, network: &str) -> Option<(String, String)> {
    let rest = name
        .strip_prefix(prefix)?
        .strip_prefix(SEP)?
        .strip_prefix(network)?
        .strip_prefix(SEP)?;
    let (cid, ifname) = rest.split_once(SEP)?;
    (!cid.is_empty() && !ifname.is_empty() && !ifname.contains(SEP))
        .then(|| (cid.to_owned(), ifname.to_owned()))
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

/// A `jump <chain>` element for `key`.
fn jump<'a>(key: &'a MapKey, chain: &'a str) -> Elem<'a> {
    Elem {
        data: ElemData::Jump(chain),
        ..Elem::key(&key.key)
    }
}

/// A verdict map of a kind, keyed by `key`, that rules of the setup batch
/// refer to by `id`.
pub const fn verdict_map(name: &'static str, key: nftables::KeyType, id: u32) -> SetSpec {
    SetSpec {
        name,
        id,
        key,
        data: SetData::Verdict,
        interval: false,
        fields: &[],
    }
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

    const KIND: ChainKind = ChainKind {
        family: Family::Inet,
        prefix: "test",
        what: "testing",
        bases: &[BaseChain {
            name: "testing",
            hook: BaseHook {
                chain_type: "filter",
                hook: 1,
                priority: 0,
            },
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
