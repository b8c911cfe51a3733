//! Links: look up, bring up or down, create, delete.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use nix::errno::Errno;
use rtnetlink::LinkUnspec;

use crate::error::{KernelError, Result};
use crate::netlink::Netlink;

/// What the plugins need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub flags: LinkFlags,
    pub mtu: Option<u32>,
    pub mac: Option<Vec<u8>>,
    pub kind: Option<InfoKind>,
    /// The bridge (or other controller) this link is attached to.
    pub controller: Option<u32>,
}

impl Link {
    fn from_message(m: LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            flags: m.header.flags,
            mtu: None,
            mac: None,
            kind: None,
            controller: None,
        };
        for attr in m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Mtu(v) => link.mtu = Some(v),
                LinkAttribute::Address(a) => link.mac = Some(a),
                LinkAttribute::Controller(c) => link.controller = Some(c),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.into_iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_up(&self) -> bool {
        self.flags.contains(LinkFlags::Up)
    }

    /// The hardware address as `aa:bb:cc:dd:ee:ff` (empty if it has none).
    pub fn mac_string(&self) -> String {
        self.mac
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl Netlink {
    /// The link called `name`, or `None` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let req = LinkUnspec::new_with_name(name).build();
        self.get_link(RouteNetlinkMessage::GetLink(req))
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let req = LinkUnspec::new_with_index(index).build();
        self.get_link(RouteNetlinkMessage::GetLink(req))
    }

    /// Like [`Netlink::link_by_name`], but a missing link is an error.
    pub fn require_link(&mut self, name: &str) -> Result<Link> {
        self.link_by_name(name)?
            .ok_or_else(|| KernelError::LinkNotFound(name.to_owned()))
    }

    fn get_link(&mut self, req: RouteNetlinkMessage) -> Result<Option<Link>> {
        match self.get("get link", req) {
            Ok(Some(RouteNetlinkMessage::NewLink(m))) => Ok(Some(Link::from_message(m))),
            Ok(_) => Ok(None),
            Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let req = RouteNetlinkMessage::GetLink(LinkMessage::default());
        Ok(self
            .dump("list links", req)?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(m) => Some(Link::from_message(m)),
                _ => None,
            })
            .collect())
    }

    pub fn set_link_up(&mut self, index: u32, up: bool) -> Result<()> {
        let b = LinkUnspec::new_with_index(index);
        let msg = if up { b.up() } else { b.down() }.build();
        self.execute("set link state", RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Create a link; fails with EEXIST if the name is taken.
    pub fn create_link(&mut self, msg: LinkMessage) -> Result<()> {
        self.execute(
            "create link",
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).build();
        self.execute("delete link", RouteNetlinkMessage::DelLink(msg), 0)
    }
}
