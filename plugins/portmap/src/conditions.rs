//! `conditionsV4` / `conditionsV6`: extra matches in a documented subset of
//! nft syntax. The list's strings are joined by spaces and read as clauses:
//!
//! ```text
//! ip saddr|daddr [==|!=] <cidr>      (conditionsV4)
//! ip6 saddr|daddr [==|!=] <cidr>     (conditionsV6)
//! iifname|oifname [==|!=] <name>     (quotes optional)
//! meta mark [==|!=] <value>          (decimal or 0x hex; the whole mark)
//! ```
//!
//! Anything else is refused with code 2 (unsupported field) rather than
//! guessed at.

use crate::rules::Cond;
use cni_types::{CniError, Code};
use ipnetwork::IpNetwork;

fn unsupported(what: &str, msg: String) -> CniError {
    CniError::new(Code::UNSUPPORTED_FIELD, format!("{what}: {msg}"))
        .with_details("supported: ip/ip6 saddr|daddr [!=] <cidr>, iifname|oifname [!=] <name>, meta mark [!=] <value>")
}

/// An optional `==`/`!=`, then a value (quotes stripped).
fn operand<'a>(
    words: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>,
    what: &str,
    field: &str,
) -> Result<(bool, String), CniError> {
    let negate = match words.peek() {
        Some(&"!=") => true,
        Some(&"==") => false,
        _ => return value(words, what, field).map(|v| (false, v)),
    };
    words.next();
    value(words, what, field).map(|v| (negate, v))
}

fn value<'a>(
    words: &mut impl Iterator<Item = &'a str>,
    what: &str,
    field: &str,
) -> Result<String, CniError> {
    let v = words
        .next()
        .ok_or_else(|| unsupported(what, format!("{field} needs a value")))?;
    Ok(v.trim_matches('"').to_owned())
}

/// Parse one family's conditions (`v6` picks `ip6` over `ip`).
pub fn parse(list: &[String], v6: bool) -> Result<Vec<Cond>, CniError> {
    let what = if v6 { "conditionsV6" } else { "conditionsV4" };
    let joined = list.join(" ");
    let mut words = joined.split_whitespace().peekable();
    let mut out = Vec::new();
    while let Some(w) = words.next() {
        let family = if v6 { "ip6" } else { "ip" };
        match w {
            "ip" | "ip6" => {
                if w != family {
                    return Err(unsupported(
                        what,
                        format!("{w:?} matches do not belong in {what}"),
                    ));
                }
                let field = words.next().unwrap_or_default();
                let (negate, v) = operand(&mut words, what, field)?;
                let net: IpNetwork = v
                    .parse()
                    .map_err(|_| unsupported(what, format!("{v:?} is not an address or CIDR")))?;
                if net.is_ipv6() != v6 {
                    return Err(unsupported(what, format!("{v} is of the other family")));
                }
                out.push(match field {
                    "saddr" => Cond::Saddr { negate, net },
                    "daddr" => Cond::Daddr { negate, net },
                    f => return Err(unsupported(what, format!("unsupported {w} field {f:?}"))),
                });
            }
            "iifname" | "oifname" => {
                let (negate, name) = operand(&mut words, what, w)?;
                cni_types::validate::interface_name(&name)
                    .map_err(|e| unsupported(what, format!("{w} {name:?}: {}", e.msg)))?;
                out.push(if w == "iifname" {
                    Cond::Iifname { negate, name }
                } else {
                    Cond::Oifname { negate, name }
                });
            }
            "meta" => {
                if words.next() != Some("mark") {
                    return Err(unsupported(what, "only \"meta mark\" is supported".into()));
                }
                let (negate, v) = operand(&mut words, what, "meta mark")?;
                let value = match v.strip_prefix("0x") {
                    Some(hex) => u32::from_str_radix(hex, 16),
                    None => v.parse(),
                }
                .map_err(|_| unsupported(what, format!("{v:?} is not a mark value")))?;
                out.push(Cond::Mark {
                    negate,
                    value,
                    mask: u32::MAX,
                });
            }
            other => {
                return Err(unsupported(
                    what,
                    format!("unsupported clause starting at {other:?}"),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_the_subset() {
        let c = parse(
            &s(&[
                "ip saddr != 10.0.0.0/8",
                "iifname",
                "\"eth0\"",
                "meta mark 0x10 oifname == br0",
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            c,
            vec![
                Cond::Saddr {
                    negate: true,
                    net: "10.0.0.0/8".parse().unwrap()
                },
                Cond::Iifname {
                    negate: false,
                    name: "eth0".into()
                },
                Cond::Mark {
                    negate: false,
                    value: 16,
                    mask: u32::MAX
                },
                Cond::Oifname {
                    negate: false,
                    name: "br0".into()
                },
            ]
        );
        let c = parse(&s(&["ip6 daddr fd00::/64"]), true).unwrap();
        assert_eq!(
            c,
            vec![Cond::Daddr {
                negate: false,
                net: "fd00::/64".parse().unwrap()
            }]
        );
        assert!(parse(&[], false).unwrap().is_empty());
    }

    #[test]
    fn refuses_everything_else_with_code_2() {
        for bad in [
            "tcp dport 80",
            "ip saddr",
            "ip saddr nope",
            "ip protocol tcp",
            "ip6 saddr fd00::/64",
            "ip saddr fd00::/64",
            "meta nfproto ipv4",
            "meta mark lots",
            "iifname eth/0",
            "counter",
        ] {
            let e = parse(&s(&[bad]), false).unwrap_err();
            assert_eq!(e.code, Code::UNSUPPORTED_FIELD, "{bad}");
        }
        assert_eq!(
            parse(&s(&["ip saddr 10.0.0.0/8"]), true).unwrap_err().code,
            Code::UNSUPPORTED_FIELD
        );
    }
}
