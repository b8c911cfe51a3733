//! Allocation logic over any [`Store`]: round-robin per range set from the
//! last reserved address, requested addresses, the duplicate check, and
//! rollback when one range set fails. No file handling here.

use std::net::IpAddr;

use cni_types::IpConfig;
use ipnetwork::IpNetwork;

use crate::config::{IpamConfig, Range, RangeSet};
use crate::error::{HostLocalError, StoreError};
use crate::ip;

/// Who holds an address: a container's interface. Files written by old
/// versions of the reference hold only the id (`ifname` is then `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub id: String,
    pub ifname: Option<String>,
}

impl Owner {
    pub fn new(id: &str, ifname: &str) -> Owner {
        Owner {
            id: id.to_owned(),
            ifname: Some(ifname.to_owned()),
        }
    }

    /// Does a reservation held by `self` belong to `who`? An id-only holder
    /// matches any interface of that container, as the reference reads it.
    pub fn covers(&self, who: &Owner) -> bool {
        self.id == who.id && (self.ifname.is_none() || self.ifname == who.ifname)
    }
}

pub trait Store {
    /// Reserve `ip` for `owner`, recording it as the last one of range set
    /// `set`. `false` if someone holds it already.
    fn reserve(&mut self, owner: &Owner, ip: IpAddr, set: usize) -> Result<bool, StoreError>;
    fn last_reserved(&mut self, set: usize) -> Result<Option<IpAddr>, StoreError>;
    /// What `owner` is known to hold, at a cost that does not grow with the store.
    fn indexed(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, StoreError>;
    /// Everything `owner` holds: indexed addresses and `hints` (from
    /// prevResult) that turn out to be its.
    fn find(&mut self, owner: &Owner, hints: &[IpAddr]) -> Result<Vec<IpAddr>, StoreError>;
    fn release(&mut self, ip: IpAddr) -> Result<(), StoreError>;
    /// Every reservation with its holder.
    fn all(&mut self) -> Result<Vec<(IpAddr, Owner)>, StoreError>;
    /// Every reserved address, without reading who holds it.
    fn held(&mut self) -> Result<Vec<IpAddr>, StoreError>;
}

/// ADD: one address from each range set. On any failure, whatever this call
/// reserved is released again.
pub fn allocate(
    store: &mut impl Store,
    conf: &IpamConfig,
    owner: &Owner,
) -> Result<Vec<IpConfig>, HostLocalError> {
    let mut reserved = Vec::new();
    let outcome = allocate_each(store, conf, owner, &mut reserved);
    if outcome.is_err() {
        for ip in reserved {
            let _ = store.release(ip);
        }
    }
    outcome
}

fn allocate_each(
    store: &mut impl Store,
    conf: &IpamConfig,
    owner: &Owner,
    reserved: &mut Vec<IpAddr>,
) -> Result<Vec<IpConfig>, HostLocalError> {
    let mut requested = conf.requested.clone();
    let held = store.indexed(owner)?;
    let mut out = Vec::with_capacity(conf.sets.len());
    for (idx, set) in conf.sets.iter().enumerate() {
        let wanted = requested
            .iter()
            .position(|a| set.range_for(*a).is_some())
            .map(|i| requested.remove(i));
        let (ip, range) = match wanted {
            Some(ip) => {
                let range = set.range_for(ip).expect("chosen because it is in the set");
                if ip == range.gateway {
                    return Err(HostLocalError::RequestedGateway(ip));
                }
                if !store.reserve(owner, ip, idx)? {
                    return Err(HostLocalError::RequestedTaken {
                        ip,
                        set: set.describe(),
                    });
                }
                (ip, range)
            }
            None => {
                if let Some(ip) = held.iter().find(|a| set.range_for(**a).is_some()) {
                    return Err(HostLocalError::Duplicate {
                        ip: *ip,
                        id: owner.id.clone(),
                    });
                }
                next_free(store, set, idx, owner)?
                    .ok_or_else(|| HostLocalError::Exhausted(set.describe()))?
            }
        };
        reserved.push(ip);
        out.push(IpConfig {
            address: IpNetwork::new(ip, range.subnet.prefix()).expect("prefix of a valid subnet"),
            gateway: Some(range.gateway),
            interface: None,
        });
    }
    if !requested.is_empty() {
        return Err(HostLocalError::RequestedUnused(requested));
    }
    Ok(out)
}

/// Walk the set once, round-robin: from just after the last reserved
/// address (or from the first range's start), wrapping through the ranges,
/// skipping gateways, and reserve the first address that is free.
fn next_free<'a>(
    store: &mut impl Store,
    set: &'a RangeSet,
    idx: usize,
    owner: &Owner,
) -> Result<Option<(IpAddr, &'a Range)>, StoreError> {
    let ranges = &set.0;
    let advance = |ri: usize, cur: IpAddr| {
        if cur == ranges[ri].end {
            let ri = (ri + 1) % ranges.len();
            (ri, ranges[ri].start)
        } else {
            (ri, ip::next(cur))
        }
    };
    let last = store.last_reserved(idx)?;
    let (mut ri, mut cur) =
        match last.and_then(|l| ranges.iter().position(|r| r.contains(l)).map(|ri| (ri, l))) {
            Some((ri, l)) => advance(ri, l),
            None => (0, ranges[0].start),
        };
    let total: u128 = ranges
        .iter()
        .map(|r| ip::to_u128(r.end) - ip::to_u128(r.start) + 1)
        .sum();
    let mut seen: u128 = 0;
    while seen < total {
        let range = &ranges[ri];
        if cur != range.gateway && store.reserve(owner, cur, idx)? {
            return Ok(Some((cur, range)));
        }
        (ri, cur) = advance(ri, cur);
        seen += 1;
    }
    Ok(None)
}

/// DEL: release everything `owner` holds. Returns what was released.
pub fn release(
    store: &mut impl Store,
    owner: &Owner,
    hints: &[IpAddr],
) -> Result<Vec<IpAddr>, StoreError> {
    let ips = store.find(owner, hints)?;
    for ip in &ips {
        store.release(*ip)?;
    }
    Ok(ips)
}

/// GC: release every reservation whose holder is not among `keep`. Goes on
/// past failures and returns the first one after trying everything.
pub fn collect(store: &mut impl Store, keep: &[Owner]) -> Result<Vec<IpAddr>, StoreError> {
    let mut released = Vec::new();
    let mut first_error = None;
    for (ip, holder) in store.all()? {
        if keep.iter().any(|k| holder.covers(k)) {
            continue;
        }
        match store.release(ip) {
            Ok(()) => released.push(ip),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(released),
    }
}

/// STATUS: the range sets that have no free address left.
pub fn exhausted_sets(store: &mut impl Store, sets: &[RangeSet]) -> Result<Vec<usize>, StoreError> {
    let held = store.held()?;
    Ok(sets
        .iter()
        .enumerate()
        .filter(|(_, set)| {
            set.0.iter().all(|r| {
                let used = held
                    .iter()
                    .filter(|a| r.contains(**a) && **a != r.gateway)
                    .count() as u128;
                used >= r.capacity()
            })
        })
        .map(|(i, _)| i)
        .collect())
}

#[cfg(test)]
pub mod memory {
    //! An in-memory store for the allocator's unit tests.
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Default)]
    pub struct MemStore {
        pub held: BTreeMap<IpAddr, Owner>,
        pub last: BTreeMap<usize, IpAddr>,
    }

    impl Store for MemStore {
        fn reserve(&mut self, owner: &Owner, ip: IpAddr, set: usize) -> Result<bool, StoreError> {
            if self.held.contains_key(&ip) {
                return Ok(false);
            }
            self.held.insert(ip, owner.clone());
            self.last.insert(set, ip);
            Ok(true)
        }
        fn last_reserved(&mut self, set: usize) -> Result<Option<IpAddr>, StoreError> {
            Ok(self.last.get(&set).copied())
        }
        fn indexed(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, StoreError> {
            self.find(owner, &[])
        }
        fn find(&mut self, owner: &Owner, _hints: &[IpAddr]) -> Result<Vec<IpAddr>, StoreError> {
            Ok(self
                .held
                .iter()
                .filter(|(_, o)| o.covers(owner))
                .map(|(ip, _)| *ip)
                .collect())
        }
        fn release(&mut self, ip: IpAddr) -> Result<(), StoreError> {
            self.held.remove(&ip);
            Ok(())
        }
        fn all(&mut self) -> Result<Vec<(IpAddr, Owner)>, StoreError> {
            Ok(self.held.iter().map(|(ip, o)| (*ip, o.clone())).collect())
        }
        fn held(&mut self) -> Result<Vec<IpAddr>, StoreError> {
            Ok(self.held.keys().copied().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemStore;
    use super::*;
    use crate::config::tests::load;
    use serde_json::json;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addrs(r: &[IpConfig]) -> Vec<String> {
        r.iter().map(|c| c.address.to_string()).collect()
    }

    #[test]
    fn first_address_is_two_and_gateway_is_one() {
        let conf = load(json!({"subnet": "10.1.2.0/24"}), "");
        let mut s = MemStore::default();
        let r = allocate(&mut s, &conf, &Owner::new("a", "eth0")).unwrap();
        assert_eq!(addrs(&r), ["10.1.2.2/24"]);
        assert_eq!(r[0].gateway, Some(ip("10.1.2.1")));
    }

    #[test]
    fn round_robin_wraps_and_skips_gateway_and_taken() {
        let conf = load(
            json!({"ranges": [[{"subnet": "10.0.0.0/29", "gateway": "10.0.0.4"}]]}),
            "",
        );
        let mut s = MemStore::default();
        // usable: .1 .. .6, gateway .4 => .1 .2 .3 .5 .6
        let mut got = vec![];
        for i in 0..5 {
            got.extend(addrs(
                &allocate(&mut s, &conf, &Owner::new(&format!("c{i}"), "eth0")).unwrap(),
            ));
        }
        assert_eq!(
            got,
            [
                "10.0.0.1/29",
                "10.0.0.2/29",
                "10.0.0.3/29",
                "10.0.0.5/29",
                "10.0.0.6/29"
            ]
        );
        let e = allocate(&mut s, &conf, &Owner::new("c9", "eth0")).unwrap_err();
        assert!(matches!(e, HostLocalError::Exhausted(_)), "{e}");
        assert_eq!(exhausted_sets(&mut s, &conf.sets).unwrap(), [0]);
        // free .2: the next allocation wraps around to it
        release(&mut s, &Owner::new("c1", "eth0"), &[]).unwrap();
        assert!(exhausted_sets(&mut s, &conf.sets).unwrap().is_empty());
        let r = allocate(&mut s, &conf, &Owner::new("c9", "eth0")).unwrap();
        assert_eq!(addrs(&r), ["10.0.0.2/29"]);
    }

    #[test]
    fn continues_after_last_reserved_across_ranges() {
        let conf = load(
            json!({"ranges": [[
                {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.11"},
                {"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.20", "rangeEnd": "10.0.1.20"}
            ]]}),
            "",
        );
        let mut s = MemStore::default();
        s.last.insert(0, ip("10.0.0.11"));
        let r = allocate(&mut s, &conf, &Owner::new("a", "eth0")).unwrap();
        assert_eq!(addrs(&r), ["10.0.1.20/24"]);
        assert_eq!(r[0].gateway, Some(ip("10.0.1.1")));
        let r = allocate(&mut s, &conf, &Owner::new("b", "eth0")).unwrap();
        assert_eq!(addrs(&r), ["10.0.0.10/24"]);
    }

    #[test]
    fn dual_stack_gets_one_address_per_set() {
        let conf = load(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}),
            "",
        );
        let mut s = MemStore::default();
        let r = allocate(&mut s, &conf, &Owner::new("a", "eth0")).unwrap();
        assert_eq!(addrs(&r), ["10.0.0.2/24", "fd00::2/64"]);
        assert_eq!(r[1].gateway, Some(ip("fd00::1")));
    }

    #[test]
    fn duplicate_owner_is_refused_but_another_interface_is_fine() {
        let conf = load(json!({"subnet": "10.0.0.0/24"}), "");
        let mut s = MemStore::default();
        allocate(&mut s, &conf, &Owner::new("a", "eth0")).unwrap();
        let e = allocate(&mut s, &conf, &Owner::new("a", "eth0")).unwrap_err();
        assert!(matches!(e, HostLocalError::Duplicate { .. }), "{e}");
        allocate(&mut s, &conf, &Owner::new("a", "net1")).unwrap();
    }

    #[test]
    fn requested_addresses() {
        let conf = load(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}),
            "",
        );
        let mut s = MemStore::default();
        let mut c = conf.clone();
        c.requested = vec![ip("10.0.0.50"), ip("fd00::50")];
        let r = allocate(&mut s, &c, &Owner::new("a", "eth0")).unwrap();
        assert_eq!(addrs(&r), ["10.0.0.50/24", "fd00::50/64"]);

        // taken
        c.requested = vec![ip("10.0.0.50")];
        let e = allocate(&mut s, &c, &Owner::new("b", "eth0")).unwrap_err();
        assert!(matches!(e, HostLocalError::RequestedTaken { .. }), "{e}");
        // gateway
        c.requested = vec![ip("10.0.0.1")];
        assert!(matches!(
            allocate(&mut s, &c, &Owner::new("b", "eth0")),
            Err(HostLocalError::RequestedGateway(_))
        ));
        // fits no range set; and the v6 address it got is rolled back
        let before = s.held.len();
        c.requested = vec![ip("192.168.0.5")];
        assert!(matches!(
            allocate(&mut s, &c, &Owner::new("b", "eth0")),
            Err(HostLocalError::RequestedUnused(_))
        ));
        assert_eq!(s.held.len(), before);
    }

    #[test]
    fn failure_in_a_later_set_rolls_back_earlier_sets() {
        let conf = load(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/30"}]]}),
            "",
        );
        let mut s = MemStore::default();
        allocate(&mut s, &conf, &Owner::new("a", "eth0")).unwrap(); // takes 10.1.0.2, the only one
        let e = allocate(&mut s, &conf, &Owner::new("b", "eth0")).unwrap_err();
        assert!(matches!(e, HostLocalError::Exhausted(_)));
        assert_eq!(s.held.len(), 2, "b's address in set 0 was released");
    }

    #[test]
    fn gc_keeps_listed_attachments_and_id_only_holders_of_listed_ids() {
        let conf = load(json!({"subnet": "10.0.0.0/24"}), "");
        let mut s = MemStore::default();
        for id in ["a", "b", "c"] {
            allocate(&mut s, &conf, &Owner::new(id, "eth0")).unwrap();
        }
        s.held.insert(
            ip("10.0.0.100"),
            Owner {
                id: "d".into(),
                ifname: None,
            },
        );
        s.held.insert(
            ip("10.0.0.101"),
            Owner {
                id: "e".into(),
                ifname: None,
            },
        );
        let released =
            collect(&mut s, &[Owner::new("a", "eth0"), Owner::new("d", "eth0")]).unwrap();
        assert_eq!(released.len(), 3);
        let left: Vec<String> = s.held.values().map(|o| o.id.clone()).collect();
        assert_eq!(left, ["a", "d"]);
        // An empty list releases everything.
        collect(&mut s, &[]).unwrap();
        assert!(s.held.is_empty());
    }

    /// Property: whatever the ranges (several per set, odd sizes, gateways
    /// inside), requested addresses and interleaving of ADD, DEL and GC, an
    /// ADD never returns an address someone holds, never a gateway, never
    /// one outside its set, and one per set; a failed ADD holds nothing.
    #[test]
    fn the_allocator_never_returns_a_taken_address() {
        let mut seed = 0x5eed_u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let layouts = [
            json!({"ranges": [[{"subnet": "10.0.0.0/29"}]]}),
            json!({"ranges": [[{"subnet": "10.0.0.0/28", "rangeStart": "10.0.0.3", "rangeEnd": "10.0.0.9", "gateway": "10.0.0.5"}],
                              [{"subnet": "fd00::/125"}]]}),
            json!({"ranges": [[{"subnet": "10.0.1.0/30"}, {"subnet": "10.0.2.0/29", "gateway": "10.0.2.6"}],
                              [{"subnet": "fd01::/126"}, {"subnet": "fd02::/125", "rangeStart": "fd02::4"}]]}),
        ];
        let mut checked = 0;
        for layout in layouts {
            for round in 0..40 {
                let mut s = MemStore::default();
                let mut live: Vec<Owner> = Vec::new();
                for step in 0..60 {
                    let who = Owner::new(&format!("c{round}-{step}"), "eth0");
                    match rnd(10) {
                        0..=5 => {
                            let args = if rnd(4) == 0 {
                                format!("IP=10.0.{}.{}", rnd(3), rnd(16))
                            } else {
                                String::new()
                            };
                            let conf = load(layout.clone(), &args);
                            let before = s.held.clone();
                            match allocate(&mut s, &conf, &who) {
                                Ok(got) => {
                                    assert_eq!(got.len(), conf.sets.len());
                                    for (c, set) in got.iter().zip(&conf.sets) {
                                        let a = c.address.ip();
                                        assert!(!before.contains_key(&a), "{a} was taken");
                                        let r = set.range_for(a).expect("inside its set");
                                        assert_ne!(a, r.gateway, "a gateway was handed out");
                                    }
                                    live.push(who);
                                }
                                // A failed ADD leaves the store as it was.
                                Err(_) => assert_eq!(s.held, before),
                            }
                        }
                        6..=8 if !live.is_empty() => {
                            let i = rnd(live.len() as u64) as usize;
                            let gone = live.remove(i);
                            release(&mut s, &gone, &[]).unwrap();
                        }
                        _ => {
                            live.retain(|_| rnd(3) != 0);
                            collect(&mut s, &live).unwrap();
                        }
                    }
                    // Every holder is a live owner, each holding one per set.
                    for o in s.held.values() {
                        assert!(live.contains(o), "{o:?} holds an address after DEL or GC");
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3 * 40 * 60);
    }
}
