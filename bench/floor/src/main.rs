//! `cni-floor BRIDGE_CONF [PORTMAP_CONF]`: a chain's ADD or DEL (from
//! `CNI_COMMAND`, with the usual CNI environment) done in this one process:
//! bridge with host-local in-process, then portmap with bridge's result
//! (DEL in reverse). The same code and the same kernel requests as the
//! plugins, without their process starts: the floor the benchmarks
//! (`bench/chain_bench.py`) hold the real chain against. Prints nothing on
//! success; an error as the plugins print it.

use cni_types::{CniError, Command, Env, Plugin, Request};

// The plugins' allocator, so the floor differs from them only in processes.
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn request(env: &Env, conf: &[u8]) -> Result<Request, CniError> {
    Request::parse(env.clone(), conf.to_vec())
}

fn run(args: &[String]) -> Result<(), CniError> {
    let env = Env::from_process()?;
    let read = |p: &String| std::fs::read(p).map_err(|e| CniError::io(format!("{p}: {e}")));
    let bridge_conf = read(
        args.first()
            .ok_or_else(|| CniError::io("usage: cni-floor BRIDGE_CONF [PORTMAP_CONF]"))?,
    )?;
    let portmap_conf = args.get(1).map(read).transpose()?;
    let bridge = bridge::plugin::Bridge;
    let portmap = portmap::plugin::Portmap;
    let with_prev = |conf: &[u8], prev: &serde_json::Value| -> Result<Vec<u8>, CniError> {
        let mut v: serde_json::Value =
            serde_json::from_slice(conf).map_err(|e| CniError::io(format!("portmap conf: {e}")))?;
        v["prevResult"] = prev.clone();
        Ok(v.to_string().into_bytes())
    };
    match env.command {
        Command::Add => {
            let req = request(&env, &bridge_conf)?;
            let result = bridge.add(&req)?.to_version(req.version)?;
            if let Some(pm) = &portmap_conf {
                portmap.add(&request(&env, &with_prev(pm, &result)?)?)?;
            }
        }
        Command::Del => {
            if let Some(pm) = &portmap_conf {
                portmap.del(&request(&env, pm)?)?;
            }
            bridge.del(&request(&env, &bridge_conf)?)?;
        }
        other => {
            return Err(CniError::io(format!(
                "cni-floor does ADD and DEL, not {}",
                other.as_str()
            )));
        }
    }
    Ok(())
}

fn main() {
    // host-local runs in-process through bridge only in a stamped build;
    // here its code is linked in and called the same way regardless.
    let _ = host_local::plugin::HostLocal;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        println!("{}", e.to_json(cni_types::Version::LATEST.as_str()));
        std::process::exit(1);
    }
}
