//! Fuzz targets for every parser that reads input a plugin does not control
//! (configs, results, `CNI_ARGS`, portmap conditions, netlink replies), and
//! a small deterministic mutator to drive them on stable Rust, in CI, for a
//! fixed number of executions (`tests/fuzz.rs`; the seed corpus is in
//! `corpus/<target>/`).
//!
//! A target must never panic; some also check a property (a result converts
//! to every version and back to the same thing).

use cni_types::{CniArgs, CniResult, Env, Request, Version};
use serde_json::Value;

pub mod mutate;

/// A named target: feed it any bytes.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: [Target; 7] = [
    ("netconf", netconf),
    ("conflist", conflist),
    ("result", result),
    ("cni_args", cni_args),
    ("conditions", conditions),
    ("rtnetlink", rtnetlink),
    ("nftables", nftables),
];

fn env() -> Env {
    Env::from_lookup(|k| {
        Some(
            match k {
                "CNI_COMMAND" => "ADD",
                "CNI_CONTAINERID" => "fuzz-1",
                "CNI_NETNS" => "/run/netns/fuzz",
                "CNI_IFNAME" => "eth0",
                "CNI_PATH" => "/nonexistent",
                _ => return None,
            }
            .to_string(),
        )
    })
    .expect("a valid environment")
}

/// A network config as a plugin reads it: the common fields, then each
/// plugin's own (bridge, host-local, portmap, ptp), then its previous result.
pub fn netconf(data: &[u8]) {
    let Ok(req) = Request::parse(env(), data.to_vec()) else {
        return;
    };
    let _ = bridge::config::BridgeConf::load(&req);
    let _ = host_local::config::IpamConfig::load(&req);
    let _ = portmap::config::PortMapConf::load(&req);
    let _ = ptp::config::PtpConf::load(&req);
    let _ = req.conf.prev_result();
    let _ = req.gc_attachments();
}

/// A configuration list as a runtime (cni-run) reads it.
pub fn conflist(data: &[u8]) {
    let _ = cni_types::NetConfList::parse(data);
    let _ = cni_types::NetConfList::from_single(data);
}

/// A result in any version converts to every version; what the newest
/// version says reads back the same.
pub fn result(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for fallback in Version::ALL {
        let Ok(r) = CniResult::from_value(&value, fallback) else {
            continue;
        };
        for v in Version::ALL {
            let _ = r.to_version(v);
        }
        let latest = r
            .to_version(Version::LATEST)
            .expect("a result read converts to the newest version");
        let again =
            CniResult::from_value(&latest, Version::LATEST).expect("a converted result reads back");
        assert_eq!(
            again.to_version(Version::LATEST).unwrap(),
            latest,
            "the newest version does not round-trip"
        );
    }
}

pub fn cni_args(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(args) = CniArgs::parse(text) {
        let _ = args.check_known(&["IP", "MAC"]);
        let _ = args.get("IP");
    }
}

/// portmap's conditionsV4/V6 lines, one per line of input.
pub fn conditions(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let _ = portmap::conditions::parse(&lines, false);
    let _ = portmap::conditions::parse(&lines, true);
}

/// A datagram of rtnetlink replies, and our reading of the links and
/// netconf settings in it. Each link message is also parsed in full by
/// netlink-packet-route: where both readings succeed, they must agree.
pub fn rtnetlink(data: &[u8]) {
    use cni_kernel::netlink::{Rt, Socket};
    use netlink_packet_core::{NetlinkBuffer, NetlinkPayload, Parseable};
    use netlink_packet_route::link::LinkMessage;
    let Ok(messages) = Socket::<Rt>::decode(data) else {
        return;
    };
    let mut offset = 0;
    for m in messages {
        let len = m.header.length as usize;
        match m.payload {
            NetlinkPayload::InnerMessage(Rt::Link(ours)) => {
                let raw = data.get(offset..offset + len).map(NetlinkBuffer::new);
                if let Some(Ok(full)) = raw.map(|r| LinkMessage::parse(r.payload())) {
                    let theirs = cni_kernel::Link::from_message(full);
                    assert_eq!(ours, theirs, "the two readings of a link differ");
                }
            }
            NetlinkPayload::InnerMessage(Rt::NetConf(c)) => {
                let _ = c.value(cni_kernel::netlink::NetConf::FORWARDING);
            }
            _ => {}
        }
        offset += len.next_multiple_of(4);
    }
}

/// A datagram of nf_tables replies, and our readers of chains, rules,
/// expressions and set elements.
pub fn nftables(data: &[u8]) {
    use cni_kernel::netlink::Socket;
    use cni_kernel::{nfnetlink, nft_expr, nftables};
    use netlink_packet_core::NetlinkPayload;
    use netlink_packet_netfilter::NetfilterMessage;
    let Ok(messages) = Socket::<NetfilterMessage>::decode(data) else {
        return;
    };
    for m in messages {
        let NetlinkPayload::InnerMessage(m) = m.payload else {
            continue;
        };
        let Some(m) = nfnetlink::nftables(m) else {
            continue;
        };
        let _ = nftables::chain_of(&m);
        let _ = nftables::elements_of(&m);
        if let Some((_, _, rule)) = nftables::rule_of(&m) {
            let _ = nft_expr::exprs(rule).count();
        }
    }
}
