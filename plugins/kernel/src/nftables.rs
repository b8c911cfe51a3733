//! nf_tables objects of our table as `netlink-packet-netfilter` messages:
//! a transaction builder ([`Batch`]: tables, chains, rules, sets and set
//! elements to add or delete, committed as one batch by
//! [`crate::nfnetlink::NfSocket::commit`]), the GET and dump requests our
//! readers send, and accessors for the replies. Every object lives in our
//! table `cni-rs` of the family given; nothing else is ever touched.

use netlink_packet_core::{DefaultNla, NLA_F_NESTED, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, Nla};
use netlink_packet_netfilter::nftables::Verdict as VerdictCode;
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, DataAttribute, Hook, HookNumber, InetHookNumber, ListAttribute,
    NfTablesMessage, RuleAttribute, RuleMessage, SetAttribute, SetDescription, SetElementAttribute,
    SetElementFlags, SetElementList, SetElementMessage, SetFlags, SetMessage, TableAttribute,
    TableMessage, VerdictAttribute,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use crate::nft_expr::{NFT_JUMP, NftExpr};

/// Our table, in each family we use.
pub const TABLE: &str = "cni-rs";
/// NFT_DATA_VERDICT: the data type of a verdict map.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// NF_ACCEPT, a base chain's policy.
const NF_ACCEPT: u32 = 1;
/// NFTA_LIST_ELEM, NFTA_DATA_VALUE (include/uapi/linux/netfilter/nf_tables.h).
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
/// NFTNL_UDATA_SET_KEYBYTEORDER / NFTNL_UDATA_RULE_COMMENT /
/// NFTNL_UDATA_SET_ELEM_COMMENT: the first TLV type of each userdata nft
/// writes (libnftnl's udata TLVs: type, length, value).
const UDATA_FIRST: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
/// A rule comment is a udata TLV in a 128-byte buffer
/// (NFTNL_UDATA_COMMENT_MAXLEN): 2 bytes of header and the NUL leave 125.
pub const COMMENT_MAX: usize = 125;

/// The nf_tables family of one of our tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `inet`: IPv4 and IPv6 (masquerade, port mappings).
    Inet,
    /// `bridge`: frames crossing a bridge (MAC spoof check).
    Bridge,
}

impl Family {
    pub fn header(self) -> NetfilterHeader {
        let family = match self {
            Family::Inet => NetfilterProtoFamily::Inet,
            Family::Bridge => NetfilterProtoFamily::Bridge,
        };
        NetfilterHeader::new(family, 0, 0)
    }
}

/// The key or data type of a set: the `nft` datatype (what `nft list`
/// shows: 7 ipv4_addr, 8 ipv6_addr, 13 inet_service, 41 ifname, from
/// nftables' `enum datatypes`, concatenations as `(t1 << 6) | t2`; the
/// kernel stores it for userspace only), its length in bytes, and its byte
/// order as nft notes it in the set's userdata (nftables' `enum
/// byteorder`: 1 host, 2 big endian; without it nft prints an ifname key as
/// "").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyType {
    pub datatype: u32,
    pub len: u32,
    pub byteorder: u32,
}

pub const IPV4_ADDR: KeyType = KeyType {
    datatype: 7,
    len: 4,
    byteorder: 2,
};
pub const IPV6_ADDR: KeyType = KeyType {
    datatype: 8,
    len: 16,
    byteorder: 2,
};
/// An interface name NUL-padded to IFNAMSIZ, as `meta iifname` loads it.
pub const IFNAME: KeyType = KeyType {
    datatype: 41,
    len: 16,
    byteorder: 1,
};
/// A transport port, in network byte order as `th dport` loads it.
pub const INET_SERVICE: KeyType = KeyType {
    datatype: 13,
    len: 2,
    byteorder: 2,
};

/// What a set maps its keys to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetData {
    /// Nothing: a plain set.
    None,
    /// Verdicts: a verdict map (`vmap`).
    Verdict,
    /// Values of a type: a data map.
    Data(KeyType),
}

/// A named set of our table: its name, the id rules of the same batch
/// refer to it by, its key, what it maps to, and whether its keys are
/// intervals. An interval set whose key is a concatenation names the
/// length of each part in `fields` (the kernel then keeps it in a set
/// type made for ranges of concatenations, Linux 5.6 or later); any other
/// set leaves it empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetSpec {
    pub name: &'static str,
    pub id: u32,
    pub key: KeyType,
    pub data: SetData,
    pub interval: bool,
    pub fields: &'static [u32],
}

/// How a base chain hooks in: its type (`filter`, `nat`), hook number
/// (NF_INET_*; the bridge family uses the same numbers) and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseHook {
    pub chain_type: &'static str,
    pub hook: u32,
    pub priority: i32,
}

pub const NF_INET_PRE_ROUTING: u32 = 0;
pub const NF_INET_LOCAL_OUT: u32 = 3;
pub const NF_INET_POST_ROUTING: u32 = 4;

/// One element of a set, to add or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elem<'a> {
    pub key: &'a [u8],
    /// In a set of concatenated ranges, the last key of the range.
    pub key_end: Option<&'a [u8]>,
    pub data: ElemData<'a>,
    /// The end of an interval (its first address past the range).
    pub interval_end: bool,
    /// The element's userdata (nft's element comment), see [`comment_udata`].
    pub udata: Option<&'a [u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemData<'a> {
    None,
    /// `jump <chain>`, in a verdict map.
    Jump(&'a str),
    /// A value, in a data map.
    Value(&'a [u8]),
}

impl<'a> Elem<'a> {
    pub fn key(key: &'a [u8]) -> Self {
        Elem {
            key,
            key_end: None,
            data: ElemData::None,
            interval_end: false,
            udata: None,
        }
    }
}

/// One message of a batch, and what it is about (for errors).
pub struct BatchMessage {
    pub message: NetfilterMessage,
    pub flags: u16,
    pub what: String,
}

/// A transaction: messages the kernel applies all together or not at all.
#[derive(Default)]
pub struct Batch {
    messages: Vec<BatchMessage>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// The messages, in order.
    pub fn messages(&self) -> &[BatchMessage] {
        &self.messages
    }

    fn push(&mut self, family: Family, flags: u16, msg: NfTablesMessage, what: String) {
        self.messages.push(BatchMessage {
            message: NetfilterMessage::new(family.header(), msg),
            flags,
            what,
        });
    }

    /// Create our table of `family` unless it exists.
    pub fn add_table(&mut self, family: Family) {
        let msg = NfTablesMessage::NewTable(TableMessage {
            attributes: vec![TableAttribute::Name(TABLE.to_owned())],
        });
        self.push(family, NLM_F_CREATE, msg, format!("table {TABLE}"));
    }

    /// Create chain `name` unless it exists (with `exclusive`, fail with
    /// EEXIST if it does); with a hook, a base chain with policy accept.
    pub fn add_chain(
        &mut self,
        family: Family,
        name: &str,
        base: Option<&BaseHook>,
        exclusive: bool,
    ) {
        let mut attributes = chain_attrs(name);
        if let Some(base) = base {
            attributes.push(ChainAttribute::Hook(vec![
                Hook::Number(HookNumber::Inet(InetHookNumber::from(base.hook))),
                Hook::Priority(base.priority as u32),
            ]));
            attributes.push(ChainAttribute::Policy(NF_ACCEPT));
            attributes.push(ChainAttribute::Type(base.chain_type.to_owned()));
        }
        let flags = NLM_F_CREATE | if exclusive { NLM_F_EXCL } else { 0 };
        let msg = NfTablesMessage::NewChain(ChainMessage { attributes });
        self.push(family, flags, msg, format!("chain {name}"));
    }

    /// Delete every rule of chain `name`.
    pub fn flush_chain(&mut self, family: Family, name: &str) {
        let msg = NfTablesMessage::DeleteRule(RuleMessage {
            attributes: rule_attrs(name),
        });
        self.push(family, 0, msg, format!("rules of chain {name}"));
    }

    /// Delete chain `name` (it must be empty and unreferenced).
    pub fn del_chain(&mut self, family: Family, name: &str) {
        let msg = NfTablesMessage::DeleteChain(ChainMessage {
            attributes: chain_attrs(name),
        });
        self.push(family, 0, msg, format!("chain {name}"));
    }

    /// Append a rule of `exprs` to chain `chain`, with a comment.
    pub fn add_rule(
        &mut self,
        family: Family,
        chain: &str,
        exprs: Vec<NftExpr>,
        comment: Option<&str>,
    ) {
        let mut attributes = rule_attrs(chain);
        attributes.push(RuleAttribute::Expressions(exprs));
        if let Some(c) = comment {
            attributes.push(RuleAttribute::UserData(comment_udata(c)));
        }
        let msg = NfTablesMessage::NewRule(RuleMessage { attributes });
        // Without NLM_F_APPEND the kernel would put it first.
        self.push(
            family,
            NLM_F_CREATE | NLM_F_APPEND,
            msg,
            format!("rule in chain {chain}"),
        );
    }

    /// Create set `spec` unless it exists.
    pub fn add_set(&mut self, family: Family, spec: &SetSpec) {
        let mut flags = SetFlags::empty();
        if spec.data != SetData::None {
            flags |= SetFlags::Map;
        }
        if spec.interval {
            flags |= SetFlags::Interval;
        }
        if !spec.fields.is_empty() {
            flags |= SetFlags::Concat;
        }
        // NFTNL_UDATA_SET_KEYBYTEORDER, and for a data map
        // NFTNL_UDATA_SET_DATABYTEORDER: without them nft shows (and reads
        // back) keys and data in the wrong byte order.
        let mut udata = vec![UDATA_FIRST, 4];
        udata.extend_from_slice(&spec.key.byteorder.to_ne_bytes());
        if let SetData::Data(d) = spec.data {
            udata.extend_from_slice(&[UDATA_SET_DATABYTEORDER, 4]);
            udata.extend_from_slice(&d.byteorder.to_ne_bytes());
        }
        let mut attributes = vec![
            SetAttribute::Table(TABLE.to_owned()),
            SetAttribute::Name(spec.name.to_owned()),
            SetAttribute::Flags(flags),
            SetAttribute::KeyType(spec.key.datatype),
            SetAttribute::KeyLen(spec.key.len),
        ];
        match spec.data {
            SetData::None => {}
            SetData::Verdict => attributes.push(SetAttribute::DataType(NFT_DATA_VERDICT)),
            SetData::Data(d) => {
                attributes.push(SetAttribute::DataType(d.datatype));
                attributes.push(SetAttribute::DataLen(d.len));
            }
        }
        if !spec.fields.is_empty() {
            // NFTA_SET_DESC_CONCAT: one NFTA_LIST_ELEM per part, each holding
            // NFTA_SET_FIELD_LEN.
            let fields = spec
                .fields
                .iter()
                .map(|len| {
                    let mut field = vec![8, 0, 1, 0]; // NFTA_SET_FIELD_LEN, 4 bytes
                    field.extend_from_slice(&len.to_be_bytes());
                    DefaultNla::new(NFTA_LIST_ELEM | NLA_F_NESTED, field)
                })
                .collect();
            attributes.push(SetAttribute::Description(vec![SetDescription::Concat(
                fields,
            )]));
        }
        attributes.push(SetAttribute::Id(spec.id));
        attributes.push(SetAttribute::UserData(udata));
        let msg = NfTablesMessage::NewSet(SetMessage { attributes });
        self.push(family, NLM_F_CREATE, msg, format!("set {}", spec.name));
    }

    /// Add `elem` to set `set` (without NLM_F_EXCL: an element that is
    /// there already with the same data is accepted, with other data it is
    /// refused with EEXIST).
    pub fn add_element(&mut self, family: Family, set: &str, elem: &Elem) {
        let msg = NfTablesMessage::NewSetElement(elements_msg(set, elem));
        self.push(family, NLM_F_CREATE, msg, element_what(set, elem));
    }

    /// Delete `elem` from set `set` (ENOENT when it is not there).
    pub fn del_element(&mut self, family: Family, set: &str, elem: &Elem) {
        let msg = NfTablesMessage::DeleteSetElement(elements_msg(set, elem));
        self.push(family, 0, msg, element_what(set, elem));
    }
}

fn element_what(set: &str, elem: &Elem) -> String {
    let key: String = elem.key.iter().map(|b| format!("{b:02x}")).collect();
    format!("element 0x{key} of set {set}")
}

fn chain_attrs(name: &str) -> Vec<ChainAttribute> {
    vec![
        ChainAttribute::Table(TABLE.to_owned()),
        ChainAttribute::Name(name.to_owned()),
    ]
}

fn rule_attrs(chain: &str) -> Vec<RuleAttribute> {
    vec![
        RuleAttribute::Table(TABLE.to_owned()),
        RuleAttribute::Chain(chain.to_owned()),
    ]
}

fn elements_msg(set: &str, elem: &Elem) -> SetElementMessage {
    let mut e = vec![SetElementAttribute::Key(DataAttribute::Value(
        elem.key.to_vec(),
    ))];
    if let Some(end) = elem.key_end {
        e.push(SetElementAttribute::KeyEnd(vec![DefaultNla::new(
            NFTA_DATA_VALUE,
            end.to_vec(),
        )]));
    }
    match elem.data {
        ElemData::None => {}
        ElemData::Jump(chain) => e.push(SetElementAttribute::Data(DataAttribute::Verdict(vec![
            VerdictAttribute::Code(VerdictCode::from(NFT_JUMP as u32)),
            VerdictAttribute::Chain(chain.to_owned()),
        ]))),
        ElemData::Value(v) => e.push(SetElementAttribute::Data(DataAttribute::Value(v.to_vec()))),
    }
    if elem.interval_end {
        e.push(SetElementAttribute::Flags(SetElementFlags::IntervalEnd));
    }
    if let Some(u) = elem.udata {
        e.push(SetElementAttribute::UserData(u.to_vec()));
    }
    SetElementMessage {
        attributes: vec![
            SetElementList::Table(TABLE.to_owned()),
            SetElementList::Set(set.to_owned()),
            SetElementList::Elements(vec![ListAttribute::Element(e)]),
        ],
    }
}

/// A comment as nft writes it in a rule's or element's userdata: type 0,
/// length, the text and its NUL (cut to [`COMMENT_MAX`] bytes).
pub fn comment_udata(text: &str) -> Vec<u8> {
    let text = cut(text, COMMENT_MAX);
    let mut u = vec![UDATA_FIRST, (text.len() + 1) as u8];
    u.extend_from_slice(text.as_bytes());
    u.push(0);
    u
}

#[cfg(test)]
#[test]
fn comments_read_back() {
    assert_eq!(
        comment_of(&comment_udata("cni-rs x: a b c")),
        Some("cni-rs x: a b c")
    );
    assert_eq!(comment_of(&[0, 200, b'a']), None);
    assert_eq!(comment_of(&[]), None);
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// Requests of the readers.

/// GETCHAIN of chain `name` (or, for a dump, of every chain: `None`).
pub fn get_chain(name: Option<&str>) -> NfTablesMessage {
    NfTablesMessage::GetChain(ChainMessage {
        attributes: name.map(chain_attrs).unwrap_or_default(),
    })
}

/// A dump of the rules of chain `chain`.
pub fn get_rules(chain: &str) -> NfTablesMessage {
    NfTablesMessage::GetRule(RuleMessage {
        attributes: rule_attrs(chain),
    })
}

/// GETRULE dump of every rule of our table, chain by chain.
pub fn get_table_rules() -> NfTablesMessage {
    NfTablesMessage::GetRule(RuleMessage {
        attributes: vec![RuleAttribute::Table(TABLE.to_owned())],
    })
}

/// The text of a comment in userdata as [`comment_udata`] writes it.
pub fn comment_of(udata: &[u8]) -> Option<&str> {
    let [UDATA_FIRST, len, rest @ ..] = udata else {
        return None;
    };
    let text = rest.get(..usize::from(*len))?;
    std::str::from_utf8(text.strip_suffix(&[0]).unwrap_or(text)).ok()
}

/// GETSETELEM of set `set`: with a key, of that one element (the kernel
/// answers with the element, or ENOENT); without, a dump of every element.
pub fn get_elements(set: &str, key: Option<&[u8]>) -> NfTablesMessage {
    let mut attributes = vec![
        SetElementList::Table(TABLE.to_owned()),
        SetElementList::Set(set.to_owned()),
    ];
    if let Some(key) = key {
        attributes.push(SetElementList::Elements(vec![ListAttribute::Element(
            vec![SetElementAttribute::Key(DataAttribute::Value(key.to_vec()))],
        )]));
    }
    NfTablesMessage::GetSetElement(SetElementMessage { attributes })
}

/// A dump of every table.
pub fn get_tables() -> NfTablesMessage {
    NfTablesMessage::GetTable(TableMessage {
        attributes: Vec::new(),
    })
}

// Readers of replies.

/// A chain of a reply: its table and name, and whether it is a base chain.
pub fn chain_of(msg: &NfTablesMessage) -> Option<(&str, &str, bool)> {
    let NfTablesMessage::NewChain(c) = msg else {
        return None;
    };
    let (mut table, mut name, mut base) = (None, None, false);
    for a in &c.attributes {
        match a {
            ChainAttribute::Table(t) => table = Some(t.as_str()),
            ChainAttribute::Name(n) => name = Some(n.as_str()),
            ChainAttribute::Hook(_) => base = true,
            _ => {}
        }
    }
    Some((table?, name?, base))
}

/// A rule of a reply, with its table and chain.
pub fn rule_of(msg: &NfTablesMessage) -> Option<(&str, &str, &RuleMessage)> {
    let NfTablesMessage::NewRule(r) = msg else {
        return None;
    };
    let (mut table, mut chain) = (None, None);
    for a in &r.attributes {
        match a {
            RuleAttribute::Table(t) => table = Some(t.as_str()),
            RuleAttribute::Chain(c) => chain = Some(c.as_str()),
            _ => {}
        }
    }
    Some((table?, chain?, r))
}

/// A rule's userdata (its comment, as nft writes it).
pub fn rule_udata(rule: &RuleMessage) -> Option<&[u8]> {
    rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::UserData(u) => Some(u.as_slice()),
        _ => None,
    })
}

/// One element of a set or map as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElem<'a> {
    pub key: &'a [u8],
    /// In a set of concatenated ranges, the last key of the range.
    pub key_end: Option<Vec<u8>>,
    /// In a verdict map: the chain a `jump` verdict continues in, and
    /// whether the verdict is a jump.
    pub jump: Option<&'a str>,
    pub verdict: Option<i32>,
    /// In a data map, its data.
    pub data: Option<&'a [u8]>,
    /// Its userdata (nft's element comment).
    pub udata: Option<&'a [u8]>,
}

/// The table and set of a NEWSETELEM reply, and its elements (those with
/// a key).
pub fn elements_of(msg: &NfTablesMessage) -> Option<(&str, &str, Vec<SetElem<'_>>)> {
    let NfTablesMessage::NewSetElement(m) = msg else {
        return None;
    };
    let (mut table, mut set, mut elems) = (None, None, Vec::new());
    for a in &m.attributes {
        match a {
            SetElementList::Table(t) => table = Some(t.as_str()),
            SetElementList::Set(s) => set = Some(s.as_str()),
            SetElementList::Elements(list) => elems.extend(list.iter().filter_map(|e| match e {
                ListAttribute::Element(attrs) => read_elem(attrs),
                _ => None,
            })),
            _ => {}
        }
    }
    Some((table?, set?, elems))
}

fn read_elem(attrs: &[SetElementAttribute]) -> Option<SetElem<'_>> {
    let mut e = SetElem {
        key: &[],
        key_end: None,
        jump: None,
        verdict: None,
        data: None,
        udata: None,
    };
    let mut has_key = false;
    for a in attrs {
        match a {
            SetElementAttribute::Key(DataAttribute::Value(k)) => {
                e.key = k;
                has_key = true;
            }
            SetElementAttribute::Data(DataAttribute::Value(d)) => e.data = Some(d),
            SetElementAttribute::KeyEnd(end) => {
                e.key_end = end
                    .iter()
                    .find(|n| n.kind() & 0x3fff == NFTA_DATA_VALUE)
                    .map(|n| {
                        let mut v = vec![0u8; n.value_len()];
                        n.emit_value(&mut v);
                        v
                    })
            }
            SetElementAttribute::Data(DataAttribute::Verdict(v)) => {
                for va in v {
                    match va {
                        VerdictAttribute::Code(c) => e.verdict = Some(u32::from(*c) as i32),
                        VerdictAttribute::Chain(c) => e.jump = Some(c),
                        _ => {}
                    }
                }
                if e.verdict != Some(NFT_JUMP) {
                    e.jump = None;
                }
            }
            SetElementAttribute::UserData(u) => e.udata = Some(u),
            _ => {}
        }
    }
    has_key.then_some(e)
}
