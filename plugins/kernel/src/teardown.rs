//! What DEL removes of an attachment's interfaces, with whatever is left of
//! it: the container's namespace, or only the previous result's names.

use std::path::Path;

use netlink_packet_route::link::InfoKind;

use crate::error::Result;
use crate::link::Link;
use crate::netlink::Netlink;
use crate::netns::Netns;

/// Delete interface `ifname` in the namespace at `netns` (a veth takes its
/// peer with it). `false` when there is no namespace to look in: none was
/// given, or it is gone (its interfaces went with it).
pub fn delete_in_netns(netns: Option<&Path>, ifname: &str) -> Result<bool> {
    let Some(path) = netns else {
        return Ok(false);
    };
    let Some(netns) = Netns::open_if_exists(path)? else {
        return Ok(false);
    };
    let mut nl = netns.netlink()?;
    if let Some(link) = nl.link_by_name(ifname)? {
        match nl.delete_link(link.index) {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
    }
    Ok(true)
}

/// Delete, in this namespace, each veth of `names` whose alias is `alias`
/// (see [`crate::link::owner_alias`]) and that `also` accepts: without a
/// namespace to look in, DEL trusts a previous result for names only, and
/// deletes nothing that does not carry its own owner.
pub fn delete_owned_veths<'a>(
    names: impl IntoIterator<Item = &'a str>,
    alias: &str,
    also: impl Fn(&Link) -> bool,
) -> Result<()> {
    let mut nl = Netlink::open()?;
    for name in names {
        if let Some(l) = nl.link_by_name(name)?
            && l.kind == Some(InfoKind::Veth)
            && l.alias.as_deref() == Some(alias)
            && also(&l)
        {
            match nl.delete_link(l.index) {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}
