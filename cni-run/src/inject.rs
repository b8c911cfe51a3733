//! What each plugin of a list reads on stdin: its own object from `plugins`,
//! with what the runtime injects (libcni's buildOneConfig/InjectConf).

use cni_types::{Attachment, NetConfList, Version};
use serde_json::{Map, Value, json};

/// One plugin object of a list, or the stdin built from it.
pub type PluginConf = Map<String, Value>;

/// The plugin's `type` (checked non-empty when the list was parsed).
pub fn plugin_type(plugin: &PluginConf) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// Every plugin of a list runs under the list's name and version, whatever
/// its own object says.
fn with_identity(list: &NetConfList, plugin: &PluginConf) -> PluginConf {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::from(list.name.as_str()));
    conf.insert("cniVersion".into(), Value::from(list.cni_version.as_str()));
    conf
}

/// ADD, CHECK and DEL: identity, `prevResult` when there is one, and the
/// capability args the plugin asked for.
pub fn for_attachment(
    list: &NetConfList,
    plugin: &PluginConf,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> PluginConf {
    let mut conf = with_identity(list, plugin);
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let rc = runtime_config(plugin, capability_args);
    // With nothing to pass, a `runtimeConfig` written in the file is left
    // alone, as libcni does.
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    conf
}

/// The capability args the plugin declares with `"capabilities": {key: true}`;
/// a plugin must never see capabilities it did not ask for.
pub fn runtime_config(
    plugin: &PluginConf,
    capability_args: &Map<String, Value>,
) -> Map<String, Value> {
    let Some(Value::Object(declared)) = plugin.get("capabilities") else {
        return Map::new();
    };
    declared
        .iter()
        .filter(|(_, on)| on.as_bool() == Some(true))
        .filter_map(|(k, _)| capability_args.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

/// GC: identity and the attachments to keep, under the spec's key and the
/// name the spec first used, which older plugins read.
pub fn for_gc(list: &NetConfList, plugin: &PluginConf, valid: &[Attachment]) -> PluginConf {
    let mut conf = with_identity(list, plugin);
    let valid = json!(valid);
    conf.insert("cni.dev/valid-attachments".into(), valid.clone());
    conf.insert("cni.dev/attachments".into(), valid);
    conf
}

/// STATUS: identity only.
pub fn for_status(list: &NetConfList, plugin: &PluginConf) -> PluginConf {
    with_identity(list, plugin)
}

/// VERSION: only names the version the runtime speaks.
pub fn for_version(version: Version) -> PluginConf {
    let mut conf = Map::new();
    conf.insert("cniVersion".into(), Value::from(version.as_str()));
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> NetConfList {
        NetConfList::parse(
            json!({
                "cniVersion": "1.1.0",
                "name": "net",
                "plugins": [
                    {"type": "bridge", "name": "ignored", "cniVersion": "0.1.0",
                     "capabilities": {"mac": true, "ips": false, "portMappings": true},
                     "runtimeConfig": {"fromFile": 1}},
                    {"type": "portmap"}
                ]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn caps() -> Map<String, Value> {
        json!({"mac": "c2:00:00:00:00:01", "ips": ["10.0.0.5/24"], "bandwidth": {}})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn identity_overrides_the_plugin_object() {
        let l = list();
        let c = for_attachment(&l, &l.plugins[1], None, &caps());
        assert_eq!(
            Value::Object(c),
            json!({"type": "portmap", "name": "net", "cniVersion": "1.1.0"})
        );
        let c = for_attachment(&l, &l.plugins[0], None, &Map::new());
        assert_eq!(
            (c["name"].as_str(), c["cniVersion"].as_str()),
            (Some("net"), Some("1.1.0"))
        );
    }

    #[test]
    fn only_declared_capabilities_are_passed() {
        let l = list();
        let rc = runtime_config(&l.plugins[0], &caps());
        // ips is declared false, portMappings is not offered, bandwidth not declared
        assert_eq!(Value::Object(rc), json!({"mac": "c2:00:00:00:00:01"}));
        assert!(runtime_config(&l.plugins[1], &caps()).is_empty());
        let c = for_attachment(&l, &l.plugins[0], None, &caps());
        assert_eq!(c["runtimeConfig"], json!({"mac": "c2:00:00:00:00:01"}));
        // nothing to pass: the file's own runtimeConfig stays
        let c = for_attachment(&l, &l.plugins[0], None, &Map::new());
        assert_eq!(c["runtimeConfig"], json!({"fromFile": 1}));
    }

    #[test]
    fn prev_result_only_when_given() {
        let l = list();
        let prev = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.2/24"}]});
        let c = for_attachment(&l, &l.plugins[1], Some(&prev), &Map::new());
        assert_eq!(c["prevResult"], prev);
        assert!(!for_attachment(&l, &l.plugins[1], None, &Map::new()).contains_key("prevResult"));
    }

    #[test]
    fn gc_carries_attachments_under_both_keys_and_nothing_else() {
        let l = list();
        let a = [Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        let c = for_gc(&l, &l.plugins[1], &a);
        let want = json!([{"containerID": "c1", "ifname": "eth0"}]);
        assert_eq!(c["cni.dev/valid-attachments"], want);
        assert_eq!(c["cni.dev/attachments"], want);
        assert!(!c.contains_key("prevResult") && !c.contains_key("runtimeConfig"));
        assert_eq!(
            for_gc(&l, &l.plugins[1], &[])["cni.dev/valid-attachments"],
            json!([])
        );
    }

    #[test]
    fn status_and_version() {
        let l = list();
        assert_eq!(
            Value::Object(for_status(&l, &l.plugins[1])),
            json!({"type": "portmap", "name": "net", "cniVersion": "1.1.0"})
        );
        assert_eq!(
            Value::Object(for_version(Version::V0_4_0)),
            json!({"cniVersion": "0.4.0"})
        );
        assert_eq!(plugin_type(&l.plugins[0]), "bridge");
    }
}
