//! Home Assistant MQTT discovery (`product.md` §7.2). Pure: builds the
//! retained config messages; the MQTT connection publishes them.
//!
//! Per agent one HA device with a status sensor (`device_class: enum`), an
//! "on a call" binary sensor, a "status since" timestamp sensor and one
//! switch per allowed queue; plus the bridge's own device with a
//! connectivity binary sensor. The rules followed (per-entity discovery,
//! which every HA version since 2023 reads; stable `unique_id`s; names
//! without the device name; `origin` with a name; availability on
//! `bridge/state`) are written down, with the HA version each comes from,
//! in `tests/homeassistant/SCHEMA.md`, and checked against a real Home
//! Assistant by `tests/homeassistant/ha_check.py`.
//!
//! Two statuses are renamed for HA only: `unavailable` and `unknown` are
//! HA's own words for an entity without a usable state, so an agent in them
//! would look broken. HA shows them as `not_available` and `not_polled`; the
//! MQTT topics keep the names of §1.
//!
//! A queue switch publishes to `<base>/request/queue/<queue>/set` (an HA
//! switch has a single command topic) with `{"agent":..,"member":true|false}`,
//! which the command parser reads as `add`/`remove`; its state is the
//! agent's membership topic `<base>/agent/<agent>/queues`.

use serde_json::{json, Value};

use crate::model::{AgentId, Status};

/// What the discovery configs are built from.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// `[homeassistant] discovery_prefix`, e.g. `homeassistant`.
    pub prefix: String,
    /// The bridge's base topic, e.g. `pbx2mqtt`.
    pub base: String,
    /// The configured agents: id and display name.
    pub agents: Vec<(AgentId, String)>,
    /// `commands.allowed_queues`: one switch each, for agents with a queue
    /// extension.
    pub queues: Vec<String>,
    /// Agents that have a queue extension (only they get switches).
    pub agents_with_extension: Vec<AgentId>,
    /// The bridge's version, for `device` and `origin`.
    pub version: String,
}

/// One retained discovery message.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `<prefix>/<component>/<node>/<object>/config`.
    pub topic: String,
    /// The config JSON.
    pub payload: Value,
}

/// The topics of this bridge's discovery configs, answered without holding
/// them: per agent only its object id (5,000 agents with four entities each
/// as topic strings were 2.6 MB for the bridge's lifetime). Built by
/// [`Discovery::current_configs`]; [`CurrentConfigs::contains`] agrees with
/// the topics [`Discovery::configs`] publishes (tested).
#[derive(Debug, Clone)]
pub struct CurrentConfigs {
    /// `<discovery prefix>/`.
    prefix: String,
    /// The node id ([`Discovery::node`]).
    node: String,
    /// Each agent's object id ([`topic_id`]), and whether it has queue
    /// switches.
    agents: std::collections::HashMap<String, bool>,
    /// `_queue_<queue>` for each allowed queue, made safe like an object id.
    queue_suffixes: Vec<String>,
}

impl CurrentConfigs {
    /// True for the topic of a config the bridge publishes now.
    pub fn contains(&self, topic: &str) -> bool {
        let Some(rest) = topic.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        let mut parts = rest.split('/');
        let (Some(component), Some(node), Some(object), Some("config"), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return false;
        };
        if node != self.node {
            return false;
        }
        let agent = |suffix: &str| {
            object
                .strip_suffix(suffix)
                .and_then(|id| self.agents.get(id).copied())
        };
        match component {
            "binary_sensor" => object == "bridge_connection" || agent("_on_a_call").is_some(),
            "sensor" => agent("_status").is_some() || agent("_status_since").is_some(),
            "switch" => self
                .queue_suffixes
                .iter()
                .any(|suffix| agent(suffix) == Some(true)),
            _ => false,
        }
    }
}

/// A status as Home Assistant shows it (see the module doc).
pub fn ha_status(status: Status) -> &'static str {
    match status {
        Status::Unavailable => "not_available",
        Status::Unknown => "not_polled",
        other => other.as_str(),
    }
}

/// The characters HA accepts in a discovery topic's node and object ids;
/// anything else becomes `_`.
pub fn topic_id(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Discovery {
    /// The node id: the base topic made safe for a discovery topic.
    pub fn node(&self) -> String {
        topic_id(&self.base)
    }

    /// The filter under which this bridge's configs live (to find and
    /// remove the configs of agents no longer configured).
    pub fn own_configs_filter(&self) -> String {
        format!("{}/+/{}/+/config", self.prefix, self.node())
    }

    /// Every config, the bridge's first (its device is every agent's
    /// `via_device`).
    pub fn configs(&self) -> Vec<Config> {
        (0..self.groups())
            .flat_map(|group| self.group(group))
            .collect()
    }

    /// How many groups [`Discovery::group`] has: the bridge's, then one per
    /// agent. The publisher formats a few groups at a time, so thousands of
    /// agents never hold every config in memory at once.
    pub fn groups(&self) -> usize {
        1 + self.agents.len()
    }

    /// The configs of group `index` (0: the bridge's connectivity; `n`: the
    /// n-th agent's); empty past the end.
    pub fn group(&self, index: usize) -> Vec<Config> {
        match index {
            0 => vec![self.bridge_connection()],
            n => self
                .agents
                .get(n - 1)
                .map(|(agent, name)| self.agent_configs(agent, name))
                .unwrap_or_default(),
        }
    }

    /// Which topics [`Discovery::configs`] publishes: a retained config
    /// found on any other topic under [`Discovery::own_configs_filter`] is
    /// stale.
    pub fn current_configs(&self) -> CurrentConfigs {
        let with_extension: std::collections::HashSet<&AgentId> =
            self.agents_with_extension.iter().collect();
        CurrentConfigs {
            prefix: format!("{}/", self.prefix),
            node: self.node(),
            agents: self
                .agents
                .iter()
                .map(|(agent, _)| (topic_id(agent.as_str()), with_extension.contains(agent)))
                .collect(),
            queue_suffixes: self
                .queues
                .iter()
                .map(|queue| topic_id(&format!("_queue_{queue}")))
                .collect(),
        }
    }

    fn topic(&self, component: &str, object: &str) -> String {
        format!(
            "{}/{component}/{}/{}/config",
            self.prefix,
            self.node(),
            topic_id(object)
        )
    }

    fn origin(&self) -> Value {
        json!({
            "name": "pbx2mqtt",
            "sw_version": self.version,
        })
    }

    fn availability(&self) -> Value {
        json!([{
            "topic": format!("{}/bridge/state", self.base),
            "payload_available": "online",
            "payload_not_available": "offline",
        }])
    }

    fn bridge_device_id(&self) -> String {
        format!("{}_bridge", self.node())
    }

    fn bridge_connection(&self) -> Config {
        let node = self.node();
        Config {
            topic: self.topic("binary_sensor", "bridge_connection"),
            payload: json!({
                "name": "Connection",
                "unique_id": format!("{node}_bridge_connection"),
                "default_entity_id": format!("binary_sensor.{node}_bridge_connection"),
                "state_topic": format!("{}/bridge/state", self.base),
                "payload_on": "online",
                "payload_off": "offline",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "device": {
                    "identifiers": [self.bridge_device_id()],
                    "name": "pbx2mqtt bridge",
                    "manufacturer": "pbx2mqtt",
                    "model": "Bridge",
                    "sw_version": self.version,
                },
                "origin": self.origin(),
            }),
        }
    }

    fn agent_configs(&self, agent: &AgentId, name: &str) -> Vec<Config> {
        let node = self.node();
        let id = topic_id(agent.as_str());
        let state_topic = format!("{}/agent/{agent}", self.base);
        let device = json!({
            "identifiers": [format!("{node}_agent_{id}")],
            "name": name,
            "manufacturer": "pbx2mqtt",
            "model": "Call-center agent",
            "via_device": self.bridge_device_id(),
        });
        let common = |mut payload: Value| {
            payload["availability"] = self.availability();
            payload["device"] = device.clone();
            payload["origin"] = self.origin();
            payload
        };
        let options: Vec<&str> = Status::ALL.iter().map(|s| ha_status(*s)).collect();
        let status_template = format!(
            "{{{{ {{'unavailable': '{}', 'unknown': '{}'}}.get(value_json.status, value_json.status) }}}}",
            ha_status(Status::Unavailable),
            ha_status(Status::Unknown)
        );
        let mut configs = vec![
            Config {
                topic: self.topic("sensor", &format!("{id}_status")),
                payload: common(json!({
                    "name": "Status",
                    "unique_id": format!("{node}_{id}_status"),
                    "default_entity_id": format!("sensor.{node}_{id}_status"),
                    "state_topic": state_topic,
                    "value_template": status_template,
                    "json_attributes_topic": state_topic,
                    "json_attributes_template": "{{ {'reason': value_json.reason, 'extension_status': value_json.extension_status, 'destination': value_json.destination, 'updated': value_json.updated, 'seq': value_json.seq} | to_json }}",
                    "device_class": "enum",
                    "options": options,
                    "icon": "mdi:headset",
                })),
            },
            Config {
                topic: self.topic("binary_sensor", &format!("{id}_on_a_call")),
                payload: common(json!({
                    "name": "On a call",
                    "unique_id": format!("{node}_{id}_on_a_call"),
                    "default_entity_id": format!("binary_sensor.{node}_{id}_on_a_call"),
                    "state_topic": state_topic,
                    "value_template": "{{ 'ON' if value_json.on_a_call else 'OFF' }}",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "icon": "mdi:phone-in-talk",
                })),
            },
            Config {
                topic: self.topic("sensor", &format!("{id}_status_since")),
                payload: common(json!({
                    "name": "Status since",
                    "unique_id": format!("{node}_{id}_status_since"),
                    "default_entity_id": format!("sensor.{node}_{id}_status_since"),
                    "state_topic": state_topic,
                    "value_template": "{{ value_json.since }}",
                    "device_class": "timestamp",
                    "icon": "mdi:clock-start",
                })),
            },
        ];
        if self.agents_with_extension.contains(agent) {
            for queue in &self.queues {
                let command =
                    |member: bool| json!({"agent": agent.as_str(), "member": member}).to_string();
                configs.push(Config {
                    topic: self.topic("switch", &format!("{id}_queue_{queue}")),
                    payload: common(json!({
                        "name": format!("In queue {queue}"),
                        "unique_id": format!("{node}_{id}_queue_{queue}"),
                        "default_entity_id": format!("switch.{node}_{id}_queue_{queue}"),
                        "state_topic": format!("{}/agent/{agent}/queues", self.base),
                        "value_template": format!("{{{{ 'ON' if '{queue}' in value_json.queues else 'OFF' }}}}"),
                        "state_on": "ON",
                        "state_off": "OFF",
                        "command_topic": format!("{}/request/queue/{queue}/set", self.base),
                        "payload_on": command(true),
                        "payload_off": command(false),
                        "retain": false,
                        "optimistic": false,
                        "icon": "mdi:account-multiple-plus",
                    })),
                });
            }
        }
        configs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery() -> Discovery {
        let alice = AgentId::parse("alice").unwrap();
        Discovery {
            prefix: "homeassistant".into(),
            base: "site/pbx".into(),
            agents: vec![
                (alice.clone(), "Alice".into()),
                (AgentId::parse("bob").unwrap(), "bob".into()),
            ],
            queues: vec!["500".into(), "501".into()],
            agents_with_extension: vec![alice],
            version: "1.2.3".into(),
        }
    }

    #[test]
    fn current_configs_are_exactly_the_published_topics() {
        let discovery = discovery();
        let current = discovery.current_configs();
        for config in discovery.configs() {
            assert!(current.contains(&config.topic), "{}", config.topic);
        }
        for stale in [
            // An agent no longer configured, with every entity.
            "homeassistant/sensor/site_pbx/carol_status/config",
            "homeassistant/binary_sensor/site_pbx/carol_on_a_call/config",
            "homeassistant/sensor/site_pbx/carol_status_since/config",
            // Bob has no queue extension; 502 is not an allowed queue.
            "homeassistant/switch/site_pbx/bob_queue_500/config",
            "homeassistant/switch/site_pbx/alice_queue_502/config",
            // A known object under another component, node or prefix.
            "homeassistant/switch/site_pbx/alice_status/config",
            "homeassistant/sensor/other_node/alice_status/config",
            "ha/sensor/site_pbx/alice_status/config",
            // Not a config topic.
            "homeassistant/sensor/site_pbx/alice_status/config/x",
            "homeassistant/sensor/site_pbx/alice_status",
            "homeassistant/sensor/site_pbx/alice/config",
            "homeassistant/sensor/site_pbx/_status/config",
        ] {
            assert!(!current.contains(stale), "{stale} is stale");
        }
    }

    #[test]
    fn every_entity_has_a_stable_unique_id_a_device_and_an_origin() {
        let configs = discovery().configs();
        // bridge + alice (3 + 2 switches) + bob (3, no extension: no switches)
        assert_eq!(configs.len(), 1 + 5 + 3);
        let mut unique_ids = std::collections::HashSet::new();
        for config in &configs {
            let payload = &config.payload;
            assert!(config.topic.starts_with("homeassistant/"));
            assert!(config.topic.contains("/site_pbx/"), "{}", config.topic);
            assert!(config.topic.ends_with("/config"));
            assert!(unique_ids.insert(payload["unique_id"].as_str().unwrap().to_owned()));
            assert_eq!(payload["origin"]["name"], "pbx2mqtt");
            assert!(payload["device"]["identifiers"][0].is_string());
            assert!(payload.get("object_id").is_none());
            let name = payload["name"].as_str().unwrap();
            assert!(!name.contains("Alice"), "names leave out the device name");
        }
        assert_eq!(
            configs[0].payload.get("availability"),
            None,
            "the bridge's connectivity must show off, not unavailable"
        );
        let status = &configs[1].payload;
        assert_eq!(status["state_topic"], "site/pbx/agent/alice");
        assert_eq!(status["device_class"], "enum");
        assert_eq!(status["options"].as_array().unwrap().len(), 9);
        assert!(status["options"]
            .as_array()
            .unwrap()
            .iter()
            .all(|option| option != "unavailable" && option != "unknown"));
        assert_eq!(status["availability"][0]["topic"], "site/pbx/bridge/state");
        assert_eq!(status["device"]["via_device"], "site_pbx_bridge");
        let switch = configs
            .iter()
            .find(|c| c.topic == "homeassistant/switch/site_pbx/alice_queue_501/config")
            .unwrap();
        assert_eq!(
            switch.payload["command_topic"],
            "site/pbx/request/queue/501/set"
        );
        assert_eq!(
            switch.payload["payload_on"],
            r#"{"agent":"alice","member":true}"#
        );
        assert_eq!(switch.payload["state_topic"], "site/pbx/agent/alice/queues");
        assert_eq!(switch.payload["optimistic"], false);
        assert_eq!(
            discovery().own_configs_filter(),
            "homeassistant/+/site_pbx/+/config"
        );
    }
}
