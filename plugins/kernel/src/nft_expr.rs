//! nf_tables rule expressions: built with `netlink-packet-netfilter`'s
//! types where it has them (meta, payload, cmp, bitwise, immediate,
//! lookup), and as its raw expression type for those it does not type
//! (fib, nat, masq, counter), with the attribute numbers of
//! include/uapi/linux/netfilter/nf_tables.h. Also the reader: a rule's
//! expressions as the kernel dumps them, reduced to what our readers look
//! at.

use netlink_packet_core::{DefaultNla, Nla};
use netlink_packet_netfilter::nftables::{
    Bitwise, Cmp, DataAttribute, ExpressionAttribute, Expressions, Immediate, ListAttribute,
    Lookup, Meta, MetaKey, Operator, Payload, Register, RuleAttribute, RuleMessage, Verdict,
    VerdictAttribute,
};

/// One expression of a rule, as it goes into NFTA_RULE_EXPRESSIONS.
pub type NftExpr = ListAttribute<ExpressionAttribute>;

// enum nft_registers
pub const NFT_REG_VERDICT: u32 = 0;
pub const NFT_REG_1: u32 = 1;
pub const NFT_REG_2: u32 = 2;
pub const NFT_REG32_00: u32 = 8;
// enum nft_payload_bases
pub const NFT_PAYLOAD_LL_HEADER: u32 = 0;
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
// enum nft_cmp_ops
pub const NFT_CMP_EQ: u32 = 0;
pub const NFT_CMP_NEQ: u32 = 1;
// enum nft_meta_keys
pub const NFT_META_MARK: u32 = 3;
pub const NFT_META_IIFNAME: u32 = 6;
pub const NFT_META_OIFNAME: u32 = 7;
pub const NFT_META_NFPROTO: u32 = 15;
pub const NFT_META_L4PROTO: u32 = 16;
// enum nft_nat_types
pub const NFT_NAT_DNAT: u32 = 1;
/// NFT_JUMP: a verdict that continues in the named chain and comes back.
pub const NFT_JUMP: i32 = -3;
/// NFT_LOOKUP_F_INV: a lookup that matches when the key is missing.
const NFT_LOOKUP_F_INV: u32 = 1;
// enum nft_fib_attributes, nft_fib_result, nft_fib_flags
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
/// RTN_LOCAL (include/uapi/linux/rtnetlink.h): what `fib daddr type local`
/// compares with.
pub const RTN_LOCAL: u32 = 2;
// enum nft_nat_attributes
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_ADDR_MAX: u16 = 4;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_REG_PROTO_MAX: u16 = 6;

fn reg(r: u32) -> Register {
    Register::from(r)
}

fn u32_nla(kind: u16, value: u32) -> DefaultNla {
    DefaultNla::new(kind, value.to_be_bytes().to_vec())
}

fn raw(name: &str, attributes: Vec<DefaultNla>) -> NftExpr {
    Expressions::Other {
        expression_type: name.to_owned(),
        attributes,
    }
    .into()
}

/// `meta <key>` into `dreg`.
pub fn meta(key: u32, dreg: u32) -> NftExpr {
    Expressions::Meta(vec![
        Meta::DestinationRegister(reg(dreg)),
        Meta::Key(MetaKey::from(key)),
    ])
    .into()
}

/// `meta <key> set` from `sreg`.
pub fn meta_set(key: u32, sreg: u32) -> NftExpr {
    Expressions::Meta(vec![
        Meta::Key(MetaKey::from(key)),
        Meta::SourceRegister(reg(sreg)),
    ])
    .into()
}

/// Load `len` bytes at `offset` of header `base` into `dreg`.
pub fn payload(base: u32, (offset, len): (u32, u32), dreg: u32) -> NftExpr {
    Expressions::Payload(vec![
        Payload::DestinationRegister(reg(dreg)),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

/// Compare register 1 with `data` (`op`: NFT_CMP_EQ, NFT_CMP_NEQ).
pub fn cmp(op: u32, data: &[u8]) -> NftExpr {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(reg(NFT_REG_1)),
        Cmp::Op(Operator::from(op)),
        Cmp::Data(DataAttribute::Value(data.to_vec())),
    ])
    .into()
}

/// `reg1 = (reg1 & mask) ^ xor`.
pub fn bitwise(mask: &[u8], xor: &[u8]) -> NftExpr {
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(reg(NFT_REG_1)),
        Bitwise::DestinationRegister(reg(NFT_REG_1)),
        Bitwise::Length(mask.len() as u32),
        Bitwise::Mask(DataAttribute::Value(mask.to_vec())),
        Bitwise::Xor(DataAttribute::Value(xor.to_vec())),
    ])
    .into()
}

/// Load the constant `data` into `dreg`.
pub fn immediate(dreg: u32, data: &[u8]) -> NftExpr {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(reg(dreg)),
        Immediate::Data(DataAttribute::Value(data.to_vec())),
    ])
    .into()
}

/// A verdict (NF_DROP, NF_ACCEPT, ...).
pub fn verdict(code: i32) -> NftExpr {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
            Verdict::from(code as u32),
        )])),
    ])
    .into()
}

/// Look register `sreg` on up in set `set` (added in the same batch as
/// `set_id`, or already there): a set breaks the rule when the key is
/// missing; a map loads its data into `dreg` (NFT_REG_VERDICT: a `vmap`).
pub fn lookup(set: &str, set_id: u32, sreg: u32, dreg: Option<u32>) -> NftExpr {
    let mut attrs = vec![
        Lookup::Set(set.to_owned()),
        Lookup::SourceRegister(reg(sreg)),
        Lookup::SetId(set_id),
    ];
    if let Some(dreg) = dreg {
        attrs.push(Lookup::DestinationRegister(reg(dreg)));
    }
    Expressions::Lookup(attrs).into()
}

/// Go on only when register `sreg` on is *not* in set `set` (`!= @set`).
pub fn lookup_not(set: &str, set_id: u32, sreg: u32) -> NftExpr {
    Expressions::Lookup(vec![
        Lookup::Set(set.to_owned()),
        Lookup::SourceRegister(reg(sreg)),
        Lookup::SetId(set_id),
        Lookup::Flags(NFT_LOOKUP_F_INV),
    ])
    .into()
}

/// `fib daddr type` into register 1.
pub fn fib_daddr_type() -> NftExpr {
    raw(
        "fib",
        vec![
            u32_nla(NFTA_FIB_DREG, NFT_REG_1),
            u32_nla(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE),
            u32_nla(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR),
        ],
    )
}

/// DNAT for `nfproto` to the address in `addr_reg` and the port in
/// `port_reg`.
pub fn dnat(nfproto: u32, addr_reg: u32, port_reg: u32) -> NftExpr {
    raw(
        "nat",
        vec![
            u32_nla(NFTA_NAT_TYPE, NFT_NAT_DNAT),
            u32_nla(NFTA_NAT_FAMILY, nfproto),
            u32_nla(NFTA_NAT_REG_ADDR_MIN, addr_reg),
            u32_nla(NFTA_NAT_REG_ADDR_MAX, addr_reg),
            u32_nla(NFTA_NAT_REG_PROTO_MIN, port_reg),
            u32_nla(NFTA_NAT_REG_PROTO_MAX, port_reg),
        ],
    )
}

/// Masquerade to the outgoing interface's address.
pub fn masquerade() -> NftExpr {
    raw("masq", Vec::new())
}

/// Count packets and bytes.
pub fn counter() -> NftExpr {
    raw("counter", Vec::new())
}

/// One expression of a rule as the kernel dumps it, reduced to what our
/// readers look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expr<'a> {
    /// Load `len` bytes at `offset` of header `base` into a register.
    Payload { base: u32, offset: u32, len: u32 },
    /// Load the meta key `key` into a register.
    Meta { key: u32 },
    /// Compare the register with `value`.
    Cmp { op: u32, value: &'a [u8] },
    /// A verdict (NF_DROP, NF_ACCEPT, NFT_JUMP, ...).
    Verdict(i32),
    /// Load the constant `value` into register `dreg`.
    Immediate { dreg: u32, value: &'a [u8] },
    /// NAT of type `nat_type` (NFT_NAT_SNAT, NFT_NAT_DNAT) for `family`, to
    /// the address and port in the registers named (a range's minimum).
    Nat {
        nat_type: u32,
        family: u32,
        addr_reg: Option<u32>,
        port_reg: Option<u32>,
    },
    /// Anything else (a counter, masquerade, a meta set, ...).
    Other,
}

/// The expressions of a rule, in order.
pub fn exprs(rule: &RuleMessage) -> impl Iterator<Item = Expr<'_>> {
    rule.attributes
        .iter()
        .filter_map(|a| match a {
            RuleAttribute::Expressions(list) => Some(list),
            _ => None,
        })
        .flatten()
        .map(|e| match e {
            ListAttribute::Element(attrs) => attrs
                .iter()
                .find_map(|a| match a {
                    ExpressionAttribute::Data(data) => read(data),
                    _ => None,
                })
                .unwrap_or(Expr::Other),
            _ => Expr::Other,
        })
}

fn read(data: &Expressions) -> Option<Expr<'_>> {
    Some(match data {
        Expressions::Payload(attrs) => {
            attrs
                .iter()
                .find(|a| matches!(a, Payload::DestinationRegister(_)))?;
            let get = |f: fn(&Payload) -> Option<u32>| attrs.iter().find_map(f);
            Expr::Payload {
                base: get(|a| {
                    if let Payload::Base(v) = a {
                        Some(*v)
                    } else {
                        None
                    }
                })?,
                offset: get(|a| {
                    if let Payload::Offset(v) = a {
                        Some(*v)
                    } else {
                        None
                    }
                })?,
                len: get(|a| {
                    if let Payload::Len(v) = a {
                        Some(*v)
                    } else {
                        None
                    }
                })?,
            }
        }
        Expressions::Meta(attrs) => {
            attrs
                .iter()
                .find(|a| matches!(a, Meta::DestinationRegister(_)))?;
            Expr::Meta {
                key: attrs.iter().find_map(|a| match a {
                    Meta::Key(k) => Some(u32::from(*k)),
                    _ => None,
                })?,
            }
        }
        Expressions::Cmp(attrs) => Expr::Cmp {
            op: attrs.iter().find_map(|a| match a {
                Cmp::Op(op) => Some(u32::from(*op)),
                _ => None,
            })?,
            value: attrs.iter().find_map(|a| match a {
                Cmp::Data(DataAttribute::Value(v)) => Some(v.as_slice()),
                _ => None,
            })?,
        },
        Expressions::Immediate(attrs) => {
            let dreg = attrs.iter().find_map(|a| match a {
                Immediate::DestinationRegister(r) => Some(u32::from(*r)),
                _ => None,
            })?;
            let data = attrs.iter().find_map(|a| match a {
                Immediate::Data(d) => Some(d),
                _ => None,
            })?;
            match (dreg, data) {
                (NFT_REG_VERDICT, DataAttribute::Verdict(v)) => {
                    Expr::Verdict(v.iter().find_map(|a| match a {
                        VerdictAttribute::Code(c) => Some(u32::from(*c) as i32),
                        _ => None,
                    })?)
                }
                (dreg, DataAttribute::Value(value)) => Expr::Immediate { dreg, value },
                _ => return None,
            }
        }
        Expressions::Other {
            expression_type,
            attributes,
        } if expression_type == "nat" => {
            let get = |kind: u16| {
                attributes
                    .iter()
                    .find(|a| a.kind() & 0x3fff == kind)
                    .and_then(|a| {
                        let mut v = vec![0u8; a.value_len()];
                        a.emit_value(&mut v);
                        Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
                    })
            };
            Expr::Nat {
                nat_type: get(NFTA_NAT_TYPE)?,
                family: get(NFTA_NAT_FAMILY)?,
                addr_reg: get(NFTA_NAT_REG_ADDR_MIN),
                port_reg: get(NFTA_NAT_REG_PROTO_MIN),
            }
        }
        _ => return None,
    })
}
