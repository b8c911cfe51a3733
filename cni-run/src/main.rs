//! `cni-run`: runs CNI network configuration lists as a container runtime
//! does, with the command line and environment of the upstream `cnitool`, so
//! either can drive the plugins. This file only parses the command line and
//! prints; the work is in the modules.

mod cache;
mod chain;
mod compat;
mod inject;
mod load;
mod runtime;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use cni_types::CniError;
use serde::Serialize;
use serde_json::Value;

use crate::chain::Chain;
use crate::runtime::Environment;

const USAGE: &str = "\
cni-run: add, check, remove, garbage-collect or query network interfaces of a network namespace
  cni-run add    <net> <netns>
  cni-run check  <net> <netns>
  cni-run del    <net> <netns>
  cni-run gc     <net> [<netns>]
  cni-run status <net> [<netns>]

Environment:
  NETCONFPATH    directory of network configs (default /etc/cni/net.d)
  CNI_PATH       ':'-separated directories holding the plugins
  CNI_IFNAME     interface name in the container (default eth0)
  CNI_ARGS       KEY=VALUE pairs separated by ';', passed to the plugins
  CAP_ARGS       JSON object of capability args (portMappings, ips, mac, ...)
  CNI_CACHE_DIR  result cache directory (default /var/lib/cni)
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Add,
    Check,
    Del,
    Gc,
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Invocation {
    verb: Verb,
    network: String,
    netns: Option<OsString>,
}

/// `<verb> <net> <netns>`; GC and STATUS act on the whole network, so their
/// netns is optional. `None` means wrong usage.
fn parse_args(args: &[OsString]) -> Option<Invocation> {
    let verb = match args.first()?.to_str()? {
        "add" => Verb::Add,
        "check" => Verb::Check,
        "del" => Verb::Del,
        "gc" => Verb::Gc,
        "status" => Verb::Status,
        _ => return None,
    };
    let network = args.get(1)?.to_str()?.to_owned();
    let netns = args.get(2).cloned();
    let netns_optional = matches!(verb, Verb::Gc | Verb::Status);
    if args.len() > 3 || (netns.is_none() && !netns_optional) {
        return None;
    }
    Some(Invocation {
        verb,
        network,
        netns,
    })
}

fn run(inv: &Invocation) -> Result<Option<Value>, CniError> {
    let cwd = std::env::current_dir().ok();
    let env = Environment::from_lookup(
        |k| std::env::var_os(k),
        inv.netns.as_deref(),
        cwd.as_deref(),
    )?;
    let net = load::load(&env.conf_dir, &inv.network)?;
    let chain = Chain::new(&net, &env.runtime)?;
    match inv.verb {
        Verb::Add => chain.add().map(Some),
        Verb::Check => chain.check().map(|_| None),
        Verb::Del => chain.del().map(|_| None),
        Verb::Gc => chain.gc().map(|_| None),
        Verb::Status => chain.status().map(|_| None),
    }
}

/// Pretty JSON with cnitool's four-space indent.
fn print_json(value: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    value.serialize(&mut ser).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if matches!(
        args.first().and_then(|a| a.to_str()),
        Some("-h" | "--help" | "help")
    ) {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let Some(inv) = parse_args(&args) else {
        eprint!("{USAGE}");
        return ExitCode::FAILURE;
    };
    match run(&inv) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(result)) => match print_json(&result) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cni-run: cannot write the result: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            // CniError's Display is "msg (code N): details".
            eprintln!("cni-run: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Option<Invocation> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse_args(&args)
    }

    #[test]
    fn verbs_and_arity() {
        let inv = parse(&["add", "net", "/run/netns/x"]).unwrap();
        assert_eq!(inv.verb, Verb::Add);
        assert_eq!(inv.network, "net");
        assert_eq!(inv.netns, Some(OsString::from("/run/netns/x")));
        for (v, verb) in [("check", Verb::Check), ("del", Verb::Del)] {
            assert_eq!(parse(&[v, "n", "ns"]).unwrap().verb, verb);
            assert_eq!(parse(&[v, "n"]), None);
        }
        for (v, verb) in [("gc", Verb::Gc), ("status", Verb::Status)] {
            assert_eq!(parse(&[v, "n"]).unwrap().verb, verb);
            assert_eq!(parse(&[v, "n"]).unwrap().netns, None);
            assert!(parse(&[v, "n", "ns"]).is_some());
        }
    }

    #[test]
    fn wrong_usage() {
        for bad in [
            &[][..],
            &["add"],
            &["add", "net"],
            &["add", "net", "ns", "extra"],
            &["ADD", "net", "ns"],
            &["frob", "net", "ns"],
            &["gc"],
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn non_utf8_network_is_wrong_usage() {
        use std::os::unix::ffi::OsStringExt;
        let args = vec![
            OsString::from("add"),
            OsString::from_vec(vec![0xff]),
            OsString::from("ns"),
        ];
        assert_eq!(parse_args(&args), None);
    }
}
