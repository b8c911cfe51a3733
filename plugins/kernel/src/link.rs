//! Links: look up, bring up or down, create, delete.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    DecodeError, NLM_F_CREATE, NLM_F_EXCL, NlasIterator, parse_string, parse_u32,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, BridgeVlanInfoFlags, In6AddrGenMode, InetDevConf,
    InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use nix::errno::Errno;
use rtnetlink::{
    LinkBridge, LinkBridgePort, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec, LinkVeth,
};

use crate::error::{KernelError, Result};
use crate::netlink::{Netlink, Rt, RtRequest};

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
    /// For a veth: the peer's index (in the peer's namespace).
    pub peer: Option<u32>,
    /// IFLA_IFALIAS: free text; the plugins mark links they own with it.
    pub alias: Option<String>,
    /// Its IPv6 settings, when the kernel reports them.
    pub ipv6: Option<Ipv6Conf>,
}

// Link attributes (linux/if_link.h).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INET6_CONF: u16 = 2;
// Indexes into IFLA_INET6_CONF, an array of s32 (linux/ipv6.h DEVCONF_*).
const DEVCONF_DISABLE_IPV6: usize = 26;
const DEVCONF_ACCEPT_DAD: usize = 27;
const DEVCONF_KEEP_ADDR_ON_DOWN: usize = 42;

/// The IPv6 settings of a link the plugins set up (its
/// `net.ipv6.conf.<link>.*`), as RTM_NEWLINK reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Conf {
    pub disable_ipv6: i32,
    pub accept_dad: i32,
    pub keep_addr_on_down: i32,
}

impl Ipv6Conf {
    /// `None` from a kernel whose array ends before these (unknown, then).
    fn parse(conf: &[u8]) -> Option<Ipv6Conf> {
        let at = |i: usize| {
            conf.get(i * 4..i * 4 + 4)
                .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
        };
        Some(Ipv6Conf {
            disable_ipv6: at(DEVCONF_DISABLE_IPV6)?,
            accept_dad: at(DEVCONF_ACCEPT_DAD)?,
            keep_addr_on_down: at(DEVCONF_KEEP_ADDR_ON_DOWN)?,
        })
    }
}

impl Link {
    /// A link known by its index and flags only, before its attributes.
    fn bare(index: u32, flags: LinkFlags) -> Link {
        Link {
            index,
            name: String::new(),
            flags,
            mtu: None,
            mac: None,
            kind: None,
            controller: None,
            peer: None,
            alias: None,
            ipv6: None,
        }
    }

    /// What a fully parsed RTM_NEWLINK message says: the reference for
    /// [`Link::parse`] in the fuzz target.
    pub fn from_message(m: LinkMessage) -> Link {
        let mut link = Link::bare(m.header.index, m.header.flags);
        for attr in m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Mtu(v) => link.mtu = Some(v),
                LinkAttribute::Address(a) => link.mac = Some(a),
                LinkAttribute::Controller(c) => link.controller = Some(c),
                LinkAttribute::Link(p) => link.peer = Some(p),
                LinkAttribute::IfAlias(a) => link.alias = Some(a),
                LinkAttribute::AfSpecUnspec(specs) => {
                    for spec in specs {
                        let AfSpecUnspec::Inet6(v6) = spec else {
                            continue;
                        };
                        for a in v6 {
                            if let AfSpecInet6::DevConf(c) = a {
                                link.ipv6 = Some(Ipv6Conf {
                                    disable_ipv6: c.disable_ipv6,
                                    accept_dad: c.accept_dad,
                                    keep_addr_on_down: c.keep_addr_on_down,
                                });
                            }
                        }
                    }
                }
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

    /// Read an RTM_NEWLINK payload (ifinfomsg and attributes) for the
    /// attributes above only. A full parse of a link message visits every
    /// attribute the kernel sends (statistics, per-family data, details of
    /// every link kind) and links the parsers of all of them into each
    /// plugin; this reads a few and skips the rest. [`Link::from_message`]
    /// is the full parse's reading, and the fuzz target holds the two equal.
    pub fn parse(payload: &[u8]) -> std::result::Result<Link, DecodeError> {
        // struct ifinfomsg: family, pad, type (u16), index (i32), flags, change.
        const HEADER: usize = 16;
        let Some(header) = payload.get(..HEADER) else {
            return Err(DecodeError::from("link message too short"));
        };
        let word = |at: usize| u32::from_ne_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let mut link = Link::bare(word(4), LinkFlags::from_bits_retain(word(8)));
        for nla in NlasIterator::new(&payload[HEADER..]) {
            let nla = nla?;
            let value = nla.value();
            match nla.kind() {
                IFLA_ADDRESS => link.mac = Some(value.to_vec()),
                IFLA_IFNAME => link.name = parse_string(value)?,
                IFLA_MTU => link.mtu = Some(parse_u32(value)?),
                IFLA_LINK => link.peer = Some(parse_u32(value)?),
                IFLA_MASTER => link.controller = Some(parse_u32(value)?),
                IFLA_IFALIAS => link.alias = Some(parse_string(value)?),
                IFLA_LINKINFO => {
                    link.kind = None;
                    for info in NlasIterator::new(value) {
                        let info = info?;
                        if info.kind() == IFLA_INFO_KIND && link.kind.is_none() {
                            link.kind = Some(InfoKind::from(parse_string(info.value())?.as_str()));
                        }
                    }
                }
                // Per-family data; the layout differs for AF_BRIDGE messages.
                IFLA_AF_SPEC if header[0] == 0 => {
                    for family in NlasIterator::new(value) {
                        let family = family?;
                        if family.kind() != nix::libc::AF_INET6 as u16 {
                            continue;
                        }
                        for a in NlasIterator::new(family.value()) {
                            let a = a?;
                            if a.kind() == IFLA_INET6_CONF {
                                link.ipv6 = Ipv6Conf::parse(a.value());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(link)
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

impl RtRequest {
    pub fn set_link_up(index: u32, up: bool) -> RtRequest {
        let b = LinkUnspec::new_with_index(index);
        let msg = if up { b.up() } else { b.down() }.build();
        RtRequest {
            op: "set link state",
            msg: RouteNetlinkMessage::SetLink(msg),
            flags: 0,
        }
    }

    /// Set IPv4 settings of a link (its `net.ipv4.conf.<link>.*`) through
    /// RTM_SETLINK (IFLA_AF_SPEC / AF_INET / IFLA_INET_CONF) rather than
    /// /proc/sys, whose look-ups slow down with every namespace on the
    /// machine. Only the fields `set` makes non-zero are written.
    pub fn set_inet_conf(index: u32, set: impl FnOnce(&mut InetDevConf)) -> RtRequest {
        let mut conf = InetDevConf::default();
        set(&mut conf);
        let spec = AfSpecUnspec::Inet(vec![AfSpecInet::DevConfRequest(conf)]);
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![spec]))
            .build();
        RtRequest {
            op: "set ipv4 settings",
            msg: RouteNetlinkMessage::SetLink(msg),
            flags: 0,
        }
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
            Ok(Some(Rt::Link(link))) => Ok(Some(link)),
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
                Rt::Link(link) => Some(link),
                _ => None,
            })
            .collect())
    }

    pub fn set_link_up(&mut self, index: u32, up: bool) -> Result<()> {
        self.send(RtRequest::set_link_up(index, up))
    }

    /// Create a link; fails with EEXIST if the name is taken.
    pub fn create_link(&mut self, msg: LinkMessage) -> Result<()> {
        self.execute(
            "create link",
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Create a bridge, up, with a fixed MAC (so it does not change as ports
    /// come and go) and VLAN filtering if asked.
    pub fn create_bridge(
        &mut self,
        name: &str,
        mac: [u8; 6],
        mtu: Option<u32>,
        vlan_filtering: bool,
    ) -> Result<()> {
        let mut b = LinkBridge::new(name).up().address(mac.to_vec());
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        if vlan_filtering {
            b = b.vlan_filtering(true);
        }
        self.create_link(b.build())
    }

    /// Turn VLAN filtering on for an existing bridge.
    pub fn set_vlan_filtering(&mut self, bridge: u32) -> Result<()> {
        let msg = LinkMessageBuilder::<LinkBridge>::new_with_info_kind(InfoKind::Bridge)
            .index(bridge)
            .set_info_data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(true)]))
            .build();
        self.execute("set vlan filtering", RouteNetlinkMessage::NewLink(msg), 0)
    }

    /// Create a veth pair whose `peer` end is born inside the namespace
    /// `peer_netns`, in one request: the container's interface name never
    /// exists in this namespace, where it could clash with a host interface.
    /// Returns the new (host) end when the kernel echoes it.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<Option<Link>> {
        let mut p = LinkUnspec::new_with_name(peer).setns_by_fd(peer_netns.as_raw_fd());
        let mut b = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_owned());
        if let Some(mtu) = mtu {
            p = p.mtu(mtu);
            b = b.mtu(mtu);
        }
        if let Some(mac) = peer_mac {
            p = p.address(mac.to_vec());
        }
        let msg = b
            .set_info_data(InfoData::Veth(InfoVeth::Peer(p.build())))
            .build();
        let echoed = self.execute_echo(
            "create link",
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        // The kernel's echo is the new link itself: no lookup needed.
        Ok(echoed.into_iter().find_map(|m| match m {
            Rt::Link(link) => Some(link).filter(|l| l.name == name),
            _ => None,
        }))
    }

    /// Create a veth pair whose host end gets a fresh random name (`veth` and
    /// 8 hex digits, as the reference names them; a clash is retried) and
    /// whose `peer` end is born in `peer_netns`. Returns the host end.
    pub fn create_host_veth(
        &mut self,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<Link> {
        let mut last = None;
        for _ in 0..5 {
            let b = random_bytes::<4>();
            let name = format!("veth{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3]);
            match self.create_veth(&name, peer, peer_netns, mtu, peer_mac) {
                Ok(Some(link)) => return Ok(link),
                Ok(None) => return self.require_link(&name),
                Err(e) if e.errno() == Some(Errno::EEXIST) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("five attempts failed"))
    }

    /// See [`RtRequest::set_inet_conf`].
    pub fn set_inet_conf(&mut self, index: u32, set: impl FnOnce(&mut InetDevConf)) -> Result<()> {
        self.send(RtRequest::set_inet_conf(index, set))
    }

    /// Set a link's alias (and bring it up) in one request.
    pub fn set_alias_up(&mut self, index: u32, alias: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .up()
            .append_extra_attribute(LinkAttribute::IfAlias(alias.to_owned()))
            .build();
        self.execute("set alias", RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Attach a link to a bridge as a port, setting its alias in the same
    /// request; without `ipv6_addresses`, also `addrgenmode none` (no
    /// link-local, no DAD, no host routes for it). On a host without IPv6
    /// (no AF_INET6 to configure) the port is attached without that.
    pub fn set_controller(
        &mut self,
        index: u32,
        controller: u32,
        alias: &str,
        ipv6_addresses: bool,
    ) -> Result<()> {
        let build = |no_v6: bool| {
            let mut b = LinkUnspec::new_with_index(index)
                .controller(controller)
                .append_extra_attribute(LinkAttribute::IfAlias(alias.to_owned()));
            if no_v6 {
                let spec =
                    AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)]);
                b = b.append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![spec]));
            }
            RouteNetlinkMessage::SetLink(b.build())
        };
        match self.execute("attach link", build(!ipv6_addresses), 0) {
            Err(e) if e.errno() == Some(Errno::EAFNOSUPPORT) => {
                self.execute("attach link", build(false), 0)
            }
            other => other,
        }
    }

    pub fn set_promiscuous(&mut self, index: u32, on: bool) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).promiscuous(on).build();
        self.execute("set promiscuous", RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Bridge-port flags of a link attached to a bridge.
    pub fn set_bridge_port(&mut self, index: u32, hairpin: bool, isolated: bool) -> Result<()> {
        let msg = LinkBridgePort::new(index)
            .hairpin(hairpin)
            .isolated(isolated)
            .build();
        self.execute("set bridge port", RouteNetlinkMessage::NewLink(msg), 0)
    }

    /// Add VLAN `vid` to a bridge port: as its PVID and untagged (an access
    /// port), or tagged (a trunk).
    pub fn bridge_vlan_add(&mut self, port: u32, vid: u16, pvid_untagged: bool) -> Result<()> {
        let flags = if pvid_untagged {
            BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged
        } else {
            BridgeVlanInfoFlags::empty()
        };
        let msg = LinkBridgeVlan::new(port).vlan(vid, flags).build();
        self.execute("add bridge vlan", RouteNetlinkMessage::SetLink(msg), 0)
    }

    pub fn bridge_vlan_del(&mut self, port: u32, vid: u16) -> Result<()> {
        let msg = LinkBridgeVlan::new(port)
            .vlan(vid, BridgeVlanInfoFlags::empty())
            .build();
        self.execute("delete bridge vlan", RouteNetlinkMessage::DelLink(msg), 0)
    }

    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).build();
        self.execute("delete link", RouteNetlinkMessage::DelLink(msg), 0)
    }
}

/// `N` random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom is readable");
    b
}

/// What a host veth's alias says: whose attachment it is. DEL without a
/// namespace deletes a host veth only when it carries its own owner. An
/// alias holds 255 bytes; a longer owner is named by its digest.
pub fn owner_alias(owner: &crate::NftOwner) -> String {
    let full = format!(
        "cni-rs {}/{}/{}",
        owner.network, owner.container_id, owner.ifname
    );
    if full.len() <= 255 {
        return full;
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(full.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cni-rs sha256:{hex}")
}
