//! Every fuzz target, for a fixed number of executions from its seed corpus
//! (`corpus/<target>/`, plus netlink datagrams built by our own encoders).
//! `CNIRS_FUZZ_EXECS` raises the count for a longer run; a failing input is
//! written to the target directory and printed, so it can join the corpus.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use cni_fuzz::mutate::{Rng, mutate};
use cni_fuzz::{TARGETS, Target};
use cni_kernel::netlink::{NetConf, Rt, Socket};
use cni_kernel::nft_expr as e;
use cni_kernel::nftables::{self, BaseHook, Batch, Elem, ElemData, Family, SetData, SetSpec};
use netlink_packet_core::DefaultNla;
use netlink_packet_netfilter::NetfilterMessage;
use netlink_packet_route::RouteNetlinkMessage;

const DEFAULT_EXECS: usize = 20_000;

fn execs() -> usize {
    std::env::var("CNIRS_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EXECS)
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir(target))
        .map(|d| {
            let mut paths: Vec<PathBuf> = d.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            paths.sort();
            paths
                .into_iter()
                .map(|p| std::fs::read(p).unwrap())
                .collect()
        })
        .unwrap_or_default();
    match target {
        "rtnetlink" => out.extend(rtnetlink_seeds()),
        "nftables" => out.extend(nftables_seeds()),
        _ => {}
    }
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

/// Link messages as the kernel answers them (the same encoding as requests).
fn rtnetlink_seeds() -> Vec<Vec<u8>> {
    use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};
    let messages = [
        LinkUnspec::new_with_name("eth0").mtu(1500).build(),
        LinkBridge::new("cni0").build(),
        LinkMessageBuilder::<LinkVeth>::new("veth0", "eth0").build(),
        LinkUnspec::new_with_index(7).controller(3).build(),
    ];
    let mut all = Vec::new();
    let mut out = Vec::new();
    for (i, m) in messages.into_iter().enumerate() {
        let mut buf = Vec::new();
        Socket::<Rt>::encode(
            &mut buf,
            Rt::Route(RouteNetlinkMessage::NewLink(m)),
            0,
            i as u32,
        );
        all.extend_from_slice(&buf);
        out.push(buf);
    }
    // A netconf answer: ifindex "all", forwarding on.
    let conf = NetConf {
        message_type: cni_kernel::netlink::RTM_NEWNETCONF,
        family: 2,
        attributes: vec![
            DefaultNla::new(1, (-1i32).to_ne_bytes().to_vec()),
            DefaultNla::new(NetConf::FORWARDING, 1i32.to_ne_bytes().to_vec()),
        ],
    };
    let mut buf = Vec::new();
    Socket::<Rt>::encode(&mut buf, Rt::NetConf(conf), 0, 9);
    all.extend_from_slice(&buf);
    out.push(buf);
    out.push(all);
    out
}

/// A table, base chain, sets and maps, rules of every expression we write,
/// and elements with data and comments: one datagram per message, and all
/// of them in one.
fn nftables_seeds() -> Vec<Vec<u8>> {
    const MAP: SetSpec = SetSpec {
        name: "m4",
        id: 1,
        key: nftables::IPV4_ADDR,
        data: SetData::Data(nftables::IPV4_ADDR),
        interval: false,
        fields: &[],
    };
    const RANGES: SetSpec = SetSpec {
        name: "r4",
        id: 2,
        key: nftables::KeyType {
            datatype: 7 << 6 | 7,
            len: 8,
            byteorder: 2,
        },
        data: SetData::None,
        interval: true,
        fields: &[4, 4],
    };
    const VMAP: SetSpec = SetSpec {
        name: "v",
        id: 3,
        key: nftables::INET_SERVICE,
        data: SetData::Verdict,
        interval: false,
        fields: &[],
    };
    let hook = BaseHook {
        chain_type: "nat",
        hook: nftables::NF_INET_POST_ROUTING,
        priority: 100,
    };
    let mut b = Batch::new();
    b.add_table(Family::Inet);
    b.add_chain(Family::Inet, "base", Some(&hook), true);
    b.add_chain(Family::Inet, "pm/net/ctr/eth0", None, false);
    for spec in [&MAP, &RANGES, &VMAP] {
        b.add_set(Family::Inet, spec);
    }
    b.add_rule(
        Family::Inet,
        "base",
        vec![
            e::payload(1, (12, 4), 1),
            e::lookup("m4", 1, 1, None),
            e::cmp(1, &[10, 0, 0, 1]),
            e::immediate(1, &[10, 0, 0, 2]),
            e::immediate(2, &80u16.to_be_bytes()),
            e::dnat(2, 1, 2),
            e::counter(),
            e::masquerade(),
        ],
        Some("cni-rs portmap: net ctr eth0"),
    );
    b.add_element(
        Family::Inet,
        "m4",
        &Elem {
            data: ElemData::Value(&[10, 0, 0, 2]),
            udata: Some(&nftables::comment_udata("cni-rs masquerade: n c e")),
            ..Elem::key(&[10, 0, 0, 1])
        },
    );
    b.add_element(
        Family::Inet,
        "r4",
        &Elem {
            key_end: Some(&[10, 0, 0, 9, 10, 255, 255, 255]),
            ..Elem::key(&[10, 0, 0, 9, 10, 0, 0, 0])
        },
    );
    b.add_element(
        Family::Inet,
        "v",
        &Elem {
            data: ElemData::Jump("pm/net/ctr/eth0"),
            ..Elem::key(&8080u16.to_be_bytes())
        },
    );
    let mut all = Vec::new();
    let mut out = Vec::new();
    for (i, m) in b.messages().iter().enumerate() {
        let mut buf = Vec::new();
        Socket::<NetfilterMessage>::encode(&mut buf, m.message.clone(), m.flags, i as u32);
        all.extend_from_slice(&buf);
        out.push(buf);
    }
    out.push(all);
    out
}

fn run(target: &Target) -> usize {
    let (name, f) = *target;
    let seeds = seeds(name);
    // Seeds themselves first: they must pass as they are.
    for s in &seeds {
        check(name, f, s);
    }
    let mut rng = Rng::new(name.bytes().fold(0u64, |h, b| h * 31 + u64::from(b)));
    let n = execs();
    for _ in 0..n {
        let mut input = seeds[rng.below(seeds.len())].clone();
        let other = &seeds[rng.below(seeds.len())];
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input, other);
        }
        check(name, f, &input);
    }
    seeds.len() + n
}

fn check(name: &str, f: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
        let out = std::env::temp_dir().join(format!("cnirs-fuzz-{name}-failure"));
        std::fs::write(&out, input).unwrap();
        panic!(
            "fuzz target {name} failed on {} ({:?})",
            out.display(),
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn every_target_survives_its_mutated_corpus() {
    // The panic hook would print every caught panic; failures are reported
    // by `check`.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut total = 0;
    let results: Vec<(String, Result<usize, String>)> = TARGETS
        .iter()
        .map(|t| {
            let r = catch_unwind(AssertUnwindSafe(|| run(t))).map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "panic".into())
            });
            (t.0.to_string(), r)
        })
        .collect();
    std::panic::set_hook(hook);
    for (name, r) in &results {
        match r {
            Ok(n) => {
                total += n;
                eprintln!("fuzz {name}: {n} executions");
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("fuzz: {total} executions in all, no failure");
}
