//! The few nf_tables messages nftnl 0.9 cannot build, over `nftnl-sys`
//! (libnftnl) directly: a named verdict map (a set with NFT_SET_MAP and
//! verdict data), one element of such a map (key and `jump <chain>`), a
//! `lookup` expression that writes the verdict register (a `vmap`), a `fib
//! daddr type` expression, a set or data map and its elements (with data,
//! interval ends and comments), any expression given as raw attributes
//! (for the registers nftnl does not let us choose), and a wrapper that
//! adds NLM_F_EXCL to another message. All of this crate's
//! `unsafe` for nf_tables is here (but for a test helper in `nft.rs`),
//! behind safe constructors.
//!
//! Why it is sound: each object owns the libnftnl object it allocated and
//! frees it on drop; libnftnl copies every string and key it is given
//! (`nftnl_set_set_str`, `nftnl_set_elem_set`, ...), so nothing borrowed
//! outlives a call; and each message is written into a buffer the caller
//! (nftnl's `Batch`) sized with `nft_nlmsg_maxsize()`, which is the
//! [`NlMsg`] contract. Our messages are small: one map, or one element.

use std::ffi::{CStr, c_void};
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::{MsgType, NlMsg, ProtoFamily, Rule};
use nftnl_sys as sys;
use nix::libc;

/// The key of a map: the `nft` datatype (what `nft list` shows: 7
/// ipv4_addr, 8 ipv6_addr, 41 ifname, from nftables' `enum datatypes`; the
/// kernel stores it for userspace only), its length in bytes, and its byte
/// order as nft notes it in the set's userdata (nftables' `enum byteorder`:
/// 1 host, 2 big endian; without it nft prints an ifname key as "").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyType {
    pub datatype: u32,
    pub len: u32,
    pub byteorder: u32,
}

pub(crate) const IPV4_ADDR: KeyType = KeyType {
    datatype: 7,
    len: 4,
    byteorder: 2,
};
pub(crate) const IPV6_ADDR: KeyType = KeyType {
    datatype: 8,
    len: 16,
    byteorder: 2,
};
/// An interface name NUL-padded to IFNAMSIZ, as `meta iifname` loads it.
pub(crate) const IFNAME: KeyType = KeyType {
    datatype: 41,
    len: 16,
    byteorder: 1,
};
/// A transport port (`inet_service`), in network byte order as `th dport`
/// loads it.
pub(crate) const INET_SERVICE: KeyType = KeyType {
    datatype: 13,
    len: 2,
    byteorder: 2,
};
/// NFTNL_UDATA_SET_KEYBYTEORDER: the first TLV (type, length, value) of the
/// userdata nft writes on a set.
const UDATA_SET_KEYBYTEORDER: u8 = 0;

/// The set userdata saying the key's byte order, as nft writes it.
fn set_userdata(key: KeyType) -> Vec<u8> {
    let mut udata = vec![UDATA_SET_KEYBYTEORDER, 4];
    udata.extend_from_slice(&key.byteorder.to_ne_bytes());
    udata
}

fn alloc<T>(p: *mut T) -> NonNull<T> {
    // libnftnl returns NULL only when malloc fails.
    NonNull::new(p).expect("libnftnl: out of memory")
}

/// An `nftnl_set` naming a set of our table (and holding at most one
/// element), freed with its elements on drop.
struct RawSet {
    set: NonNull<sys::nftnl_set>,
    family: ProtoFamily,
}

impl RawSet {
    fn new(table: &CStr, family: ProtoFamily, name: &CStr) -> RawSet {
        // SAFETY: a fresh set; the strings are copied by libnftnl.
        unsafe {
            let set = alloc(sys::nftnl_set_alloc());
            let s = set.as_ptr();
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, family as u32);
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            RawSet { set, family }
        }
    }

    fn set_u32(&mut self, attr: u32, value: u32) {
        // SAFETY: a u32 attribute of a set we own.
        unsafe { sys::nftnl_set_set_u32(self.set.as_ptr(), attr as u16, value) };
    }
}

impl Drop for RawSet {
    fn drop(&mut self) {
        // SAFETY: allocated by nftnl_set_alloc, freed once; frees its elements.
        unsafe { sys::nftnl_set_free(self.set.as_ptr()) };
    }
}

/// Write the nfnetlink header of an nf_tables message at `buf`.
///
/// # Safety
/// `buf` must have room for the whole message (see [`NlMsg`]).
unsafe fn header(
    buf: *mut c_void,
    msg_type: libc::c_int,
    family: ProtoFamily,
    flags: libc::c_int,
    seq: u32,
) -> *mut libc::nlmsghdr {
    unsafe {
        sys::nftnl_nlmsg_build_hdr(
            buf.cast(),
            msg_type as u16,
            family as u16,
            (flags | libc::NLM_F_ACK) as u16,
            seq,
        )
    }
}

/// A named set or map of our table: NEWSET with NLM_F_CREATE and without
/// NLM_F_EXCL, so adding an identical one that exists is a no-op. `id` lets
/// a rule in the same batch refer to it.
pub(crate) struct NftSet(RawSet);

/// What a set maps its keys to.
enum SetData {
    None,
    /// Jumps and gotos: the kernel sizes verdict data itself.
    Verdict,
    Data(KeyType),
}

impl NftSet {
    /// `<name> { type <key> : verdict }`.
    pub fn verdict_map(
        table: &CStr,
        family: ProtoFamily,
        name: &CStr,
        key: KeyType,
        id: u32,
    ) -> Self {
        Self::build(table, family, name, key, SetData::Verdict, false, id)
    }

    /// A set of `key`s, or with `data` a map to data; `interval` for
    /// prefix/range keys (NFT_SET_INTERVAL).
    pub fn data(
        table: &CStr,
        family: ProtoFamily,
        name: &CStr,
        key: KeyType,
        data: Option<KeyType>,
        interval: bool,
        id: u32,
    ) -> Self {
        let data = data.map_or(SetData::None, SetData::Data);
        Self::build(table, family, name, key, data, interval, id)
    }

    fn build(
        table: &CStr,
        family: ProtoFamily,
        name: &CStr,
        key: KeyType,
        data: SetData,
        interval: bool,
        id: u32,
    ) -> Self {
        let mut set = RawSet::new(table, family, name);
        let mut flags = 0;
        if !matches!(data, SetData::None) {
            flags |= libc::NFT_SET_MAP as u32;
        }
        if interval {
            flags |= libc::NFT_SET_INTERVAL as u32;
        }
        set.set_u32(sys::NFTNL_SET_FLAGS, flags);
        set.set_u32(sys::NFTNL_SET_KEY_TYPE, key.datatype);
        set.set_u32(sys::NFTNL_SET_KEY_LEN, key.len);
        match data {
            SetData::None => {}
            SetData::Verdict => set.set_u32(sys::NFTNL_SET_DATA_TYPE, libc::NFT_DATA_VERDICT),
            SetData::Data(d) => {
                set.set_u32(sys::NFTNL_SET_DATA_TYPE, d.datatype);
                set.set_u32(sys::NFTNL_SET_DATA_LEN, d.len);
            }
        }
        set.set_u32(sys::NFTNL_SET_ID, id);
        let udata = set_userdata(key);
        // SAFETY: libnftnl copies the bytes.
        unsafe {
            sys::nftnl_set_set_data(
                set.set.as_ptr(),
                sys::NFTNL_SET_USERDATA as u16,
                udata.as_ptr().cast(),
                udata.len() as u32,
            )
        };
        NftSet(set)
    }
}

// SAFETY: one NEWSET message with a handful of attributes.
unsafe impl NlMsg for NftSet {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWSET, libc::NLM_F_CREATE),
            MsgType::Del => (libc::NFT_MSG_DELSET, 0),
        };
        unsafe {
            let nlh = header(buf, ty, self.0.family, flags, seq);
            sys::nftnl_set_nlmsg_build_payload(nlh, self.0.set.as_ptr());
        }
    }
}

/// One element of a set or map, in a NEWSETELEM/DELSETELEM message. Added
/// (MsgType::Add, with NLM_F_CREATE and without NLM_F_EXCL) the kernel
/// accepts it when the key is absent or already maps to the same data or
/// verdict, and refuses it with EEXIST when the key maps to anything else.
/// Deleted (MsgType::Del) only the key counts.
pub(crate) struct SetElement(RawSet);

impl SetElement {
    /// `key : jump <chain>` in a verdict map.
    pub fn jump(table: &CStr, family: ProtoFamily, map: &CStr, key: &[u8], chain: &CStr) -> Self {
        Self::build(table, family, map, key, |elem| {
            // SAFETY: `elem` is the fresh element; libnftnl copies `chain`.
            unsafe {
                sys::nftnl_set_elem_set_u32(
                    elem,
                    sys::NFTNL_SET_ELEM_VERDICT as u16,
                    libc::NFT_JUMP as u32,
                );
                sys::nftnl_set_elem_set_str(elem, sys::NFTNL_SET_ELEM_CHAIN as u16, chain.as_ptr());
            }
        })
    }

    /// An element of a set (no `data`) or data map, possibly the end of an
    /// interval (NFT_SET_ELEM_INTERVAL_END), with optional user data (a comment).
    pub fn data(
        table: &CStr,
        family: ProtoFamily,
        set_name: &CStr,
        key: &[u8],
        data: Option<&[u8]>,
        interval_end: bool,
        udata: Option<&[u8]>,
    ) -> Self {
        Self::build(table, family, set_name, key, |elem| {
            // SAFETY: `elem` is the fresh element; libnftnl copies the bytes.
            unsafe {
                for (attr, bytes) in [
                    (sys::NFTNL_SET_ELEM_DATA, data),
                    (sys::NFTNL_SET_ELEM_USERDATA, udata),
                ] {
                    if let Some(b) = bytes {
                        sys::nftnl_set_elem_set(
                            elem,
                            attr as u16,
                            b.as_ptr().cast(),
                            b.len() as u32,
                        );
                    }
                }
                if interval_end {
                    sys::nftnl_set_elem_set_u32(
                        elem,
                        sys::NFTNL_SET_ELEM_FLAGS as u16,
                        libc::NFT_SET_ELEM_INTERVAL_END as u32,
                    );
                }
            }
        })
    }

    fn build(
        table: &CStr,
        family: ProtoFamily,
        set_name: &CStr,
        key: &[u8],
        fill: impl FnOnce(*mut sys::nftnl_set_elem),
    ) -> Self {
        let set = RawSet::new(table, family, set_name);
        // SAFETY: a fresh element holding a copy of `key`, filled by `fill`,
        // then handed to the set, which owns (and frees) it from then on.
        unsafe {
            let elem = alloc(sys::nftnl_set_elem_alloc()).as_ptr();
            sys::nftnl_set_elem_set(
                elem,
                sys::NFTNL_SET_ELEM_KEY as u16,
                key.as_ptr().cast(),
                key.len() as u32,
            );
            fill(elem);
            sys::nftnl_set_elem_add(set.set.as_ptr(), elem);
        }
        SetElement(set)
    }
}

// SAFETY: one NEWSETELEM/DELSETELEM message holding one element.
unsafe impl NlMsg for SetElement {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE),
            MsgType::Del => (libc::NFT_MSG_DELSETELEM, 0),
        };
        unsafe {
            let nlh = header(buf, ty, self.0.family, flags, seq);
            sys::nftnl_set_elems_nlmsg_build_payload(nlh, self.0.set.as_ptr());
        }
    }
}

/// `<register 1> vmap @<map>`: look the key loaded into register 1 up in a
/// verdict map and take the verdict of the element found (none: go on with
/// the next rule). `map_id` names a map created in the same batch.
pub(crate) struct VerdictLookup<'a> {
    pub map: &'a CStr,
    pub map_id: u32,
}

impl Expression for VerdictLookup<'_> {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: a fresh expression; the set name is copied. The rule takes
        // ownership of what we return (nftnl's Rule::add_expr).
        unsafe {
            let expr = alloc(sys::nftnl_expr_alloc(c"lookup".as_ptr()));
            let e = expr.as_ptr();
            let reg1 = libc::NFT_REG_1 as u32;
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SREG as u16, reg1);
            let verdict = libc::NFT_REG_VERDICT as u32;
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_DREG as u16, verdict);
            sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16, self.map.as_ptr());
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID as u16, self.map_id);
            expr
        }
    }
}

// include/uapi/linux/netfilter/nf_tables.h: enum nft_fib_flags,
// enum nft_fib_result; include/uapi/linux/rtnetlink.h: RTN_LOCAL.
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
/// The route type of an address of the host itself.
pub(crate) const RTN_LOCAL: u32 = 2;

/// `fib daddr type`: look the packet's destination address up in the
/// routing tables and load the type of the route found (RTN_LOCAL for an
/// address of the host, RTN_UNICAST for one reached through it, ...) into
/// register 1, as a u32 in host byte order. nftnl 0.9 has no fib.
pub(crate) struct FibDaddrType;

impl Expression for FibDaddrType {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: a fresh expression with three u32 attributes. The rule
        // takes ownership of what we return (nftnl's Rule::add_expr).
        unsafe {
            let expr = alloc(sys::nftnl_expr_alloc(c"fib".as_ptr()));
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_FIB_FLAGS as u16, NFTA_FIB_F_DADDR);
            let result = NFT_FIB_RESULT_ADDRTYPE;
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_FIB_RESULT as u16, result);
            let reg1 = libc::NFT_REG_1 as u32;
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_FIB_DREG as u16, reg1);
            expr
        }
    }
}

/// An expression nftnl 0.9 cannot build with the registers we need: its
/// name and u32 attributes (libnftnl's NFTNL_EXPR_* numbering), and at most
/// one string attribute (a set name).
pub(crate) struct RawExpr<'a> {
    pub name: &'static CStr,
    pub u32s: &'a [(u32, u32)],
    pub string: Option<(u32, &'a CStr)>,
}

impl Expression for RawExpr<'_> {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: a fresh expression; strings are copied. The rule takes
        // ownership of what we return (nftnl's Rule::add_expr).
        unsafe {
            let expr = alloc(sys::nftnl_expr_alloc(self.name.as_ptr()));
            let e = expr.as_ptr();
            for &(attr, value) in self.u32s {
                sys::nftnl_expr_set_u32(e, attr as u16, value);
            }
            if let Some((attr, s)) = self.string {
                sys::nftnl_expr_set_str(e, attr as u16, s.as_ptr());
            }
            expr
        }
    }
}

/// Another message with NLM_F_EXCL added: creating what exists fails with
/// EEXIST (nftnl always creates chains without it).
pub(crate) struct Exclusive<'a, T>(pub &'a T);

// SAFETY: writes exactly what the inner message writes, then changes one
// header field.
unsafe impl<T: NlMsg> NlMsg for Exclusive<'_, T> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        unsafe {
            self.0.write(buf, seq, msg_type);
            // Every NlMsg starts its message (a netlink header) at `buf`.
            let nlh = buf.cast::<libc::nlmsghdr>();
            (*nlh).nlmsg_flags |= libc::NLM_F_EXCL as u16;
        }
    }
}

/// The bytes one message writes, for the builders' unit tests.
#[cfg(test)]
pub(crate) fn written(msg: &impl NlMsg, msg_type: MsgType) -> Vec<u8> {
    let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    // SAFETY: the buffer has the size NlMsg requires.
    unsafe { msg.write(buf.as_mut_ptr().cast(), 1, msg_type) };
    let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
    buf.truncate(len);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnetlink::{
        Attrs, NFT_JUMP, NFT_MSG_NEWSETELEM, Verdict, messages, nft_attrs, set_elem_owner,
        set_elements,
    };
    use nftnl::{Chain, Table};

    /// The one message `msg` writes: its type (without the subsystem), its
    /// flags, its nfgenmsg family and its attributes.
    fn message(msg: &impl NlMsg, msg_type: MsgType) -> (u16, u16, u8, Vec<u8>) {
        let bytes = written(msg, msg_type);
        let msgs = messages(&bytes).unwrap();
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!(m.msg_type >> 8, 10, "not nf_tables");
        let attrs = nft_attrs(m.payload).0.to_vec();
        (m.msg_type & 0xff, m.flags, m.payload[0], attrs)
    }

    const CREATE_ACK: u16 = (libc::NLM_F_REQUEST | libc::NLM_F_CREATE | libc::NLM_F_ACK) as u16;

    #[test]
    fn a_verdict_map_is_created_without_exclusivity() {
        let map = NftSet::verdict_map(c"cni-rs", ProtoFamily::Inet, c"masq4", IPV4_ADDR, 7);
        let (ty, flags, family, attrs) = message(&map, MsgType::Add);
        assert_eq!(ty, libc::NFT_MSG_NEWSET as u16);
        assert_eq!(flags, CREATE_ACK);
        assert_eq!(family, libc::NFPROTO_INET as u8);
        let a = Attrs(&attrs);
        // NFTA_SET_TABLE, _NAME, _FLAGS, _KEY_TYPE, _KEY_LEN, _DATA_TYPE, _ID, _USERDATA
        assert_eq!(a.get_str(1), Some("cni-rs"));
        assert_eq!(a.get_str(2), Some("masq4"));
        assert_eq!(a.get_be32(3), Some(libc::NFT_SET_MAP as u32));
        assert_eq!(a.get_be32(4), Some(7));
        assert_eq!(a.get_be32(5), Some(4));
        assert_eq!(a.get_be32(6), Some(0xffff_ff00));
        assert_eq!(a.get(7), None, "no data length for verdicts");
        assert_eq!(a.get_be32(10), Some(7));
        let mut udata = vec![0u8, 4];
        udata.extend_from_slice(&2u32.to_ne_bytes());
        assert_eq!(a.get(13), Some(&udata[..]));

        let map = NftSet::verdict_map(c"cni-rs", ProtoFamily::Bridge, c"spoof", IFNAME, 1);
        let (_, _, family, attrs) = message(&map, MsgType::Add);
        assert_eq!(family, libc::NFPROTO_BRIDGE as u8);
        assert_eq!(Attrs(&attrs).get_be32(4), Some(41));
        assert_eq!(Attrs(&attrs).get_be32(5), Some(16));
        assert_eq!(Attrs(&attrs).get(13).unwrap()[2], 1, "host byte order");
    }

    /// What libnftnl writes for an element has the shape the kernel reports
    /// elements in, so the reply parser reads it back.
    #[test]
    fn map_elements_jump_to_a_chain() {
        let key = [10u8, 1, 0, 5];
        let elem = SetElement::jump(
            c"cni-rs",
            ProtoFamily::Inet,
            c"masq4",
            &key,
            c"masq/n/c/eth0",
        );
        let (ty, flags, family, attrs) = message(&elem, MsgType::Add);
        assert_eq!(ty, NFT_MSG_NEWSETELEM);
        assert_eq!(flags, CREATE_ACK, "never NLM_F_EXCL");
        assert_eq!(family, libc::NFPROTO_INET as u8);
        assert_eq!(
            set_elem_owner(Attrs(&attrs)),
            (Some("cni-rs"), Some("masq4"))
        );
        let elems: Vec<_> = set_elements(Attrs(&attrs)).collect();
        assert_eq!(elems.len(), 1);
        assert_eq!(elems[0].key, key);
        assert_eq!(
            elems[0].verdict,
            Some(Verdict {
                code: NFT_JUMP,
                chain: Some("masq/n/c/eth0")
            })
        );

        let (ty, flags, _, attrs) = message(&elem, MsgType::Del);
        assert_eq!(ty, libc::NFT_MSG_DELSETELEM as u16);
        assert_eq!(flags, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16);
        assert_eq!(set_elements(Attrs(&attrs)).next().unwrap().key, key);
    }

    #[test]
    fn exclusive_adds_only_nlm_f_excl() {
        let table = Table::new(c"cni-rs", ProtoFamily::Inet);
        let chain = Chain::new(c"masquerading", &table);
        let plain = written(&chain, MsgType::Add);
        let excl = written(&Exclusive(&chain), MsgType::Add);
        assert_eq!(plain.len(), excl.len());
        let (p, e) = (messages(&plain).unwrap(), messages(&excl).unwrap());
        assert_eq!(e[0].flags, p[0].flags | libc::NLM_F_EXCL as u16);
        assert_eq!(p[0].flags & libc::NLM_F_EXCL as u16, 0);
        assert_eq!(e[0].payload, p[0].payload);
    }

    #[test]
    fn fib_loads_the_destination_address_type() {
        let table = Table::new(c"cni-rs", ProtoFamily::Inet);
        let chain = Chain::new(c"portmap-pre", &table);
        let mut rule = Rule::new(&chain);
        rule.add_expr(&FibDaddrType);
        let (_, _, _, attrs) = message(&rule, MsgType::Add);
        let list = Attrs(Attrs(&attrs).get(4).unwrap());
        let expr = Attrs(list.clone().next().unwrap().1);
        assert_eq!(expr.get_str(1), Some("fib"));
        let data = Attrs(expr.get(2).unwrap());
        // NFTA_FIB_DREG, _RESULT, _FLAGS
        assert_eq!(data.get_be32(1), Some(libc::NFT_REG_1 as u32));
        assert_eq!(data.get_be32(2), Some(3), "NFT_FIB_RESULT_ADDRTYPE");
        assert_eq!(data.get_be32(3), Some(2), "NFTA_FIB_F_DADDR only");
    }

    #[test]
    fn data_maps_sets_and_their_elements() {
        let data = KeyType {
            datatype: (7 << 6) | 13,
            len: 8,
            byteorder: 2,
        };
        let map = NftSet::data(
            c"cni-rs",
            ProtoFamily::Inet,
            c"pm4-any",
            INET_SERVICE,
            Some(data),
            false,
            11,
        );
        let (ty, flags, _, attrs) = message(&map, MsgType::Add);
        assert_eq!((ty, flags), (libc::NFT_MSG_NEWSET as u16, CREATE_ACK));
        let a = Attrs(&attrs);
        // NFTA_SET_FLAGS, _DATA_TYPE, _DATA_LEN, _ID
        assert_eq!(a.get_be32(3), Some(libc::NFT_SET_MAP as u32));
        assert_eq!(a.get_be32(6), Some((7 << 6) | 13));
        assert_eq!(a.get_be32(7), Some(8));
        assert_eq!(a.get_be32(10), Some(11));
        let set = NftSet::data(c"cni-rs", ProtoFamily::Inet, c"s", IPV4_ADDR, None, true, 1);
        let (_, _, _, attrs) = message(&set, MsgType::Add);
        assert_eq!(
            Attrs(&attrs).get_be32(3),
            Some(libc::NFT_SET_INTERVAL as u32)
        );
        assert_eq!(Attrs(&attrs).get(7), None, "a set has no data");

        let elem = SetElement::data(
            c"cni-rs",
            ProtoFamily::Inet,
            c"pm4-any",
            &[0, 80],
            Some(&[10, 0, 0, 2, 0, 80, 0, 0]),
            false,
            Some(b"\0\x02x\0"),
        );
        let (ty, flags, _, attrs) = message(&elem, MsgType::Add);
        assert_eq!((ty, flags), (NFT_MSG_NEWSETELEM, CREATE_ACK));
        let e: Vec<_> = set_elements(Attrs(&attrs)).collect();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, [0, 80]);
        assert_eq!(e[0].data, Some(&[10, 0, 0, 2, 0, 80, 0, 0][..]));
        assert_eq!(e[0].udata, Some(&b"\0\x02x\0"[..]));
        assert_eq!(e[0].verdict, None);
    }

    #[test]
    fn raw_expressions_carry_their_attributes() {
        let table = Table::new(c"cni-rs", ProtoFamily::Inet);
        let chain = Chain::new(c"c", &table);
        let mut rule = Rule::new(&chain);
        rule.add_expr(&RawExpr {
            name: c"lookup",
            u32s: &[
                (sys::NFTNL_EXPR_LOOKUP_SREG, 8),
                (sys::NFTNL_EXPR_LOOKUP_DREG, 8),
            ],
            string: Some((sys::NFTNL_EXPR_LOOKUP_SET, c"pm4-any")),
        });
        let (_, _, _, attrs) = message(&rule, MsgType::Add);
        let list = Attrs(Attrs(&attrs).get(4).unwrap());
        let expr = Attrs(list.clone().next().unwrap().1);
        assert_eq!(expr.get_str(1), Some("lookup"));
        let data = Attrs(expr.get(2).unwrap());
        assert_eq!(data.get_str(1), Some("pm4-any"));
        assert_eq!(data.get_be32(2), Some(8));
        assert_eq!(data.get_be32(3), Some(8));
    }

    #[test]
    fn a_port_map_is_keyed_by_big_endian_ports() {
        let map = NftSet::verdict_map(c"cni-rs", ProtoFamily::Inet, c"pm-tcp", INET_SERVICE, 4);
        let (_, _, _, attrs) = message(&map, MsgType::Add);
        let a = Attrs(&attrs);
        assert_eq!(a.get_be32(4), Some(13), "inet_service");
        assert_eq!(a.get_be32(5), Some(2));
        assert_eq!(a.get(13).unwrap()[2], 2, "big endian");
    }

    #[test]
    fn a_verdict_lookup_writes_the_verdict_register() {
        let table = Table::new(c"cni-rs", ProtoFamily::Bridge);
        let chain = Chain::new(c"spoofcheck", &table);
        let mut rule = Rule::new(&chain);
        rule.add_expr(&VerdictLookup {
            map: c"spoof",
            map_id: 3,
        });
        let (_, _, _, attrs) = message(&rule, MsgType::Add);
        // NFTA_RULE_EXPRESSIONS > NFTA_LIST_ELEM > NFTA_EXPR_NAME, _DATA
        let list = Attrs(Attrs(&attrs).get(4).unwrap());
        let expr = Attrs(list.clone().next().unwrap().1);
        assert_eq!(expr.get_str(1), Some("lookup"));
        let data = Attrs(expr.get(2).unwrap());
        // NFTA_LOOKUP_SET, _SREG, _DREG, _SET_ID
        assert_eq!(data.get_str(1), Some("spoof"));
        assert_eq!(data.get_be32(2), Some(libc::NFT_REG_1 as u32));
        assert_eq!(data.get_be32(3), Some(libc::NFT_REG_VERDICT as u32));
        assert_eq!(data.get_be32(4), Some(3));
    }
}
