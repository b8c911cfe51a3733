//! Helpers shared by the kernel-level tests: running code inside a test
//! namespace, parsing addresses, and reading (or changing) nftables state
//! there with `nft`.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use crate::{Netns, cmd, must};

/// Run `f` on a thread inside the test namespace.
pub fn within<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    cni_kernel::Netns::open(ns.path()).unwrap().run(f).unwrap()
}

pub fn nets(list: &[&str]) -> Vec<IpNetwork> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

pub fn ips(addrs: &[&str]) -> Vec<IpAddr> {
    addrs.iter().map(|a| a.parse().unwrap()).collect()
}

/// Owners as (container id, ifname) strings.
pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(c, i)| (c.to_string(), i.to_string()))
        .collect()
}

/// `nft ARGS...` inside the namespace, which must succeed; its stdout.
pub fn nft(ns: &Netns, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", &ns.name, "nft"];
    full.extend_from_slice(args);
    must("ip", &full)
}

/// Change the ruleset behind a module's back. nft 1.0.6 cannot name a
/// chain with ':' on its command line, so this speaks JSON.
pub fn nft_json(ns: &Netns, commands: Value) {
    let doc = json!({ "nftables": commands }).to_string();
    must("ip", &["netns", "exec", &ns.name, "nft", "-j", &doc]);
}

/// `nft -j list table inet cni-rs` in `ns`: the list of objects, or None when
/// there is no such table (any other failure panics).
pub fn table(ns: &Netns) -> Option<Vec<Value>> {
    let out = cmd(
        "ip",
        &[
            "netns", "exec", &ns.name, "nft", "-j", "list", "table", "inet", "cni-rs",
        ],
    );
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No such file or directory"), "nft: {err}");
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(v["nftables"].as_array().unwrap().clone())
}

/// `nft -j list table FAMILY cni-rs` in `ns`: the list of objects, empty
/// when it cannot be listed.
pub fn objects(ns: &Netns, family: &str) -> Vec<Value> {
    ns.nft_table(family, "cni-rs")
        .map(|t| t["nftables"].as_array().unwrap().clone())
        .unwrap_or_default()
}

/// The chain called `name` among `objs`.
pub fn chain(objs: Vec<Value>, name: &str) -> Option<Value> {
    objs.into_iter()
        .find(|o| o["chain"]["name"] == name)
        .map(|o| o["chain"].clone())
}

/// The names of the chains among `objs` that start with `prefix`, sorted.
pub fn chain_names(objs: &[Value], prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = objs
        .iter()
        .filter_map(|o| o["chain"]["name"].as_str().map(String::from))
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// The elements of verdict map `map` among `objs` as (key, chain it jumps
/// to), the key read by `key`, sorted.
pub fn jumps<K: Ord>(objs: &[Value], map: &str, key: impl Fn(&Value) -> K) -> Vec<(K, String)> {
    let mut elems: Vec<(K, String)> = objs
        .iter()
        .filter(|o| o["map"]["name"] == map)
        .flat_map(|o| o["map"]["elem"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                key(&e[0]),
                e[1]["jump"]["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    elems.sort();
    elems
}

/// The elements of a data map of owner tags (`masq4`, `masq6`) among `objs`
/// as (key, owner's record chain), sorted: the owner read from the element's
/// comment (`cni-rs <what>: <network> <container id> <ifname>`), the chain
/// named `<prefix>/<network>/<container id>/<ifname>`, and the element's data
/// checked to be that chain's tag.
pub fn tagged(objs: &[Value], map: &str, prefix: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = objs
        .iter()
        .filter(|o| o["map"]["name"] == map)
        .flat_map(|o| o["map"]["elem"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let (key, data) = (&e[0]["elem"], &e[1]);
            let comment = key["comment"].as_str().expect("an owner comment");
            let (_, owner) = comment.split_once(": ").expect("cni-rs <what>: <owner>");
            let chain = format!("{prefix}/{}", owner.replace(' ', "/"));
            let tag = u32::from_ne_bytes(cni_kernel::owner_chain::owner_tag(&chain));
            assert_eq!(data.as_u64(), Some(u64::from(tag)), "{e} is not {chain}'s");
            (key["val"].as_str().unwrap().to_owned(), chain)
        })
        .collect();
    out.sort();
    out
}

/// An element of a data map of owner tags, as nft writes it: `{ <key>
/// comment "<comment>" : <tag of chain> }`.
pub fn tagged_element(key: &str, comment: &str, chain: &str) -> String {
    let tag = u32::from_ne_bytes(cni_kernel::owner_chain::owner_tag(chain));
    format!("{{ {key} comment \"{comment}\" : {tag:#010x} }}")
}

/// How many elements map `map` among `objs` holds.
pub fn map_len(objs: &[Value], map: &str) -> usize {
    objs.iter()
        .filter(|o| o["map"]["name"] == map)
        .map(|o| o["map"]["elem"].as_array().map_or(0, Vec::len))
        .sum()
}

/// A string key of a verdict map element, for [`jumps`].
pub fn str_key(v: &Value) -> String {
    v.as_str().unwrap().to_owned()
}

/// The rules of chain `chain` among `objs`, in order.
pub fn rules(objs: &[Value], chain: &str) -> Vec<Value> {
    objs.iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["chain"] == chain)
        .cloned()
        .collect()
}

/// The root namespace's `inet cni-rs` table (or its absence), to compare
/// before and after a test.
pub fn root_snapshot() -> (bool, String) {
    let out = cmd("nft", &["-j", "list", "table", "inet", "cni-rs"]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
