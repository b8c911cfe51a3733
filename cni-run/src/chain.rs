//! Running a network configuration list with libcni's semantics: ADD in
//! order passing each result on as `prevResult`, DEL in reverse, CHECK against
//! the cached result, GC and STATUS on every plugin.

use cni_types::invoke::{self, InvokeEnv};
use cni_types::{CniError, CniResult, Code, Command, NetConfList, Version, validate};
use serde_json::Value;

use crate::cache::{self, Cache, CacheEntry};
use crate::compat;
use crate::inject::{self, PluginConf};
use crate::load::LoadedList;
use crate::runtime::RuntimeConf;

/// One network list, run for one attachment (or, for GC/STATUS, for none).
pub struct Chain<'a> {
    net: &'a LoadedList,
    rt: &'a RuntimeConf,
    version: Version,
    cache: Cache,
}

impl<'a> Chain<'a> {
    pub fn new(net: &'a LoadedList, rt: &'a RuntimeConf) -> Result<Chain<'a>, CniError> {
        Ok(Chain {
            net,
            rt,
            version: Version::of_config(Some(&net.list.cni_version))?,
            cache: Cache::new(&rt.cache_dir),
        })
    }

    fn list(&self) -> &NetConfList {
        &self.net.list
    }

    /// ADD every plugin in order and cache the final result, which is returned
    /// in the list's version. A failing plugin stops the chain; undoing what
    /// earlier plugins did is the caller's DEL, as with libcni.
    pub fn add(&self) -> Result<Value, CniError> {
        self.check_attachment()?;
        self.require_versions()?;
        let mut prev: Option<Value> = None;
        for plugin in &self.list().plugins {
            let conf = inject::for_attachment(
                self.list(),
                plugin,
                prev.as_ref(),
                &self.rt.capability_args,
            );
            let out = self.exec(plugin, Command::Add, &conf)?;
            // The next plugin reads prevResult in the list's version, whatever
            // version this one answered in.
            let result = invoke::decode_result(&out, self.version)
                .and_then(|r| r.to_version(self.version))
                .map_err(|e| in_plugin(plugin, Command::Add, e))?;
            prev = Some(result);
        }
        let result = prev.ok_or_else(|| {
            CniError::invalid_config(format!("network {:?} has no plugins", self.list().name))
        })?;
        self.cache
            .write(&CacheEntry {
                kind: cache::KIND.into(),
                container_id: self.rt.container_id.clone(),
                config: self.net.bytes.clone(),
                if_name: self.rt.ifname.clone(),
                network_name: self.list().name.clone(),
                netns: self.netns_string(),
                cni_args: self.rt.args.clone(),
                capability_args: self.rt.capability_args.clone(),
                result: Some(result.clone()),
            })
            .map_err(|e| CniError {
                msg: format!(
                    "failed to cache the result of network {:?}: {}",
                    self.list().name,
                    e.msg
                ),
                ..e
            })?;
        Ok(result)
    }

    /// DEL every plugin in reverse order, then forget the attachment. Works
    /// without a cache entry (prevResult is then omitted) and with a netns
    /// that no longer exists: plugins must clean up what they can. A failing
    /// plugin stops the chain and keeps the cache entry, so DEL can be retried.
    pub fn del(&self) -> Result<(), CniError> {
        self.check_attachment()?;
        // Cached results are passed on DEL from 0.4.0 on.
        let prev = if self.version >= Version::V0_4_0 {
            self.cached_result().unwrap_or_else(|e| {
                eprintln!("cni-run: warning: ignoring cached result: {e}");
                None
            })
        } else {
            None
        };
        for plugin in self.list().plugins.iter().rev() {
            let conf = inject::for_attachment(
                self.list(),
                plugin,
                prev.as_ref(),
                &self.rt.capability_args,
            );
            self.exec(plugin, Command::Del, &conf)?;
        }
        if let Err(e) = self
            .cache
            .remove(&self.list().name, &self.rt.container_id, &self.rt.ifname)
        {
            eprintln!("cni-run: warning: {e}");
        }
        Ok(())
    }

    /// CHECK every plugin in order against the result cached by ADD.
    pub fn check(&self) -> Result<(), CniError> {
        if self.version < Version::V0_4_0 {
            return Err(CniError::new(
                Code::INCOMPATIBLE_VERSION,
                format!(
                    "configuration version \"{}\" does not support the CHECK command",
                    self.version
                ),
            ));
        }
        if self.list().disable_check {
            return Ok(());
        }
        self.check_attachment()?;
        let prev = self.cached_result()?.ok_or_else(|| {
            CniError::new(
                Code::UNKNOWN_CONTAINER,
                format!(
                    "no cached result for network {:?}, container {:?}, interface {:?}",
                    self.list().name,
                    self.rt.container_id,
                    self.rt.ifname
                ),
            )
            .with_details("CHECK needs the result of a previous ADD by this runner")
        })?;
        self.require_versions()?;
        for plugin in &self.list().plugins {
            let conf =
                inject::for_attachment(self.list(), plugin, Some(&prev), &self.rt.capability_args);
            self.exec(plugin, Command::Check, &conf)?;
        }
        Ok(())
    }

    /// GC every plugin, keeping the attachments this runner has added and not
    /// deleted (its cache entries for this network). This differs from
    /// cnitool, which passes no attachments and so has plugins remove
    /// everything of the network; here a GC never tears down a live
    /// attachment made through this runner or another libcni runtime sharing
    /// the cache dir. Every plugin runs even if one fails; the first error is
    /// returned and the others are printed.
    pub fn gc(&self) -> Result<(), CniError> {
        if self.version < Version::V1_1_0 || self.list().disable_gc {
            return Ok(());
        }
        let valid = self.cache.attachments(&self.list().name)?;
        let mut first: Option<CniError> = None;
        for plugin in &self.list().plugins {
            let conf = inject::for_gc(self.list(), plugin, &valid);
            if let Err(e) = self.exec(plugin, Command::Gc, &conf) {
                match first {
                    None => first = Some(e),
                    Some(_) => eprintln!("cni-run: {e}"),
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// STATUS every plugin; the first that is not ready answers for the list,
    /// with its own code (50/51) intact.
    pub fn status(&self) -> Result<(), CniError> {
        if self.version < Version::V1_1_0 {
            return Ok(());
        }
        for plugin in &self.list().plugins {
            let conf = inject::for_status(self.list(), plugin);
            self.exec(plugin, Command::Status, &conf)?;
        }
        Ok(())
    }

    /// ADD/CHECK/DEL act on one attachment; its names also form the cache
    /// file's name, so they are checked before anything touches the disk.
    fn check_attachment(&self) -> Result<(), CniError> {
        validate::container_id(&self.rt.container_id)?;
        validate::interface_name(&self.rt.ifname)?;
        if self.rt.netns.is_none() {
            return Err(CniError::invalid_env("a netns path is required"));
        }
        Ok(())
    }

    /// The cached result in the list's version (the list may have changed
    /// version since ADD), or `None` when there is none.
    fn cached_result(&self) -> Result<Option<Value>, CniError> {
        let list = self.list();
        let Some(raw) =
            self.cache
                .read_result(&list.name, &self.rt.container_id, &self.rt.ifname)?
        else {
            return Ok(None);
        };
        CniResult::from_value(&raw, self.version)
            .and_then(|r| r.to_version(self.version))
            .map(Some)
            .map_err(|e| CniError {
                msg: format!("cached result of network {:?}: {}", list.name, e.msg),
                ..e
            })
    }

    /// Ask each plugin type once whether it speaks the list's version.
    fn require_versions(&self) -> Result<(), CniError> {
        let mut seen: Vec<&str> = Vec::new();
        for plugin in &self.list().plugins {
            let ty = inject::plugin_type(plugin);
            if seen.contains(&ty) {
                continue;
            }
            seen.push(ty);
            let reply = self.exec_raw(plugin, Command::Version, &inject::for_version(self.version));
            let supported =
                compat::supported(reply).map_err(|e| in_plugin(plugin, Command::Version, e))?;
            compat::require(ty, self.version, &supported)?;
        }
        Ok(())
    }

    fn exec(
        &self,
        plugin: &PluginConf,
        command: Command,
        conf: &PluginConf,
    ) -> Result<Vec<u8>, CniError> {
        self.exec_raw(plugin, command, conf)
            .map_err(|e| in_plugin(plugin, command, e))
    }

    /// Find the plugin's binary on CNI_PATH and run it with `conf` on stdin.
    fn exec_raw(
        &self,
        plugin: &PluginConf,
        command: Command,
        conf: &PluginConf,
    ) -> Result<Vec<u8>, CniError> {
        let binary = invoke::find_plugin(inject::plugin_type(plugin), &self.rt.path)?;
        let stdin = serde_json::to_vec(conf)
            .map_err(|e| CniError::invalid_config(format!("cannot encode plugin config: {e}")))?;
        let env = InvokeEnv {
            container_id: self.rt.container_id.clone(),
            netns: self.rt.netns.clone(),
            ifname: self.rt.ifname.clone(),
            args: self.rt.args_raw.clone(),
            path: self.rt.path.clone(),
        };
        invoke::exec(&binary, command, &env, &stdin)
    }

    fn netns_string(&self) -> String {
        self.rt
            .netns
            .as_deref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Say which plugin failed and in which verb, as libcni does; the plugin's
/// code and details are kept.
fn in_plugin(plugin: &PluginConf, command: Command, e: CniError) -> CniError {
    CniError {
        msg: format!(
            "plugin type={:?} failed ({}): {}",
            inject::plugin_type(plugin),
            command.as_str().to_ascii_lowercase(),
            e.msg
        ),
        ..e
    }
}
