//! Home Assistant discovery and queue membership as state (`product.md`
//! §7.2, §7.3) against real Mosquitto: every discovery config parsed and
//! checked field by field against Home Assistant's documented MQTT
//! discovery schema (`tests/homeassistant/SCHEMA.md`), stable across a
//! restart, republished on HA's birth message and removed for an agent taken
//! out of the configuration; the queue switch round trip through the
//! simulator, a refused switch command; membership changes made in TRiNG
//! directly; and, when `PBX2MQTT_TEST_HA_PYTHON` names a virtualenv with
//! Home Assistant Core, the real thing (`tests/homeassistant/ha_check.py`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pbx2mqtt::simulator::{Api, Fault, FaultKind};
use serde_json::{json, Value};

use crate::helpers::{prepare_app, retained_under, wait_ready, Options, RealBroker, TestApp, SOON};
use crate::mqtt_client::TestClient;

/// The statuses of `product.md` §1, as Home Assistant shows them
/// (`unavailable` and `unknown` are HA's own words for a broken entity, so
/// the bridge renames them for HA only).
const HA_STATUSES: [&str; 9] = [
    "offline",
    "paused",
    "busy",
    "not_available",
    "available",
    "ringing",
    "on_call",
    "wrapup",
    "not_polled",
];

/// Keys Home Assistant's MQTT discovery documents for every entity we use
/// (full names; `default_entity_id` since 2025.10), plus each platform's.
const COMMON_KEYS: &[&str] = &[
    "name",
    "unique_id",
    "default_entity_id",
    "availability",
    "device",
    "origin",
    "icon",
    "entity_category",
    "enabled_by_default",
    "json_attributes_topic",
    "json_attributes_template",
    "qos",
    "encoding",
    "state_topic",
    "value_template",
];
const SENSOR_KEYS: &[&str] = &[
    "device_class",
    "options",
    "state_class",
    "unit_of_measurement",
    "expire_after",
    "force_update",
    "suggested_display_precision",
];
const BINARY_SENSOR_KEYS: &[&str] = &[
    "device_class",
    "payload_on",
    "payload_off",
    "expire_after",
    "force_update",
    "off_delay",
];
const SWITCH_KEYS: &[&str] = &[
    "device_class",
    "command_topic",
    "payload_on",
    "payload_off",
    "state_on",
    "state_off",
    "optimistic",
    "retain",
];
const DEVICE_KEYS: &[&str] = &[
    "identifiers",
    "connections",
    "name",
    "manufacturer",
    "model",
    "model_id",
    "sw_version",
    "hw_version",
    "serial_number",
    "suggested_area",
    "via_device",
    "configuration_url",
];
const ORIGIN_KEYS: &[&str] = &["name", "sw_version", "support_url"];

/// The node id of a test's base topic (`/` is not allowed there).
fn node(app: &TestApp) -> String {
    app.base.replace('/', "_")
}

/// True for a discovery config topic of this test's bridge.
fn ours(app: &TestApp, topic: &str) -> bool {
    topic.starts_with("homeassistant/") && topic.contains(&format!("/{}/", node(app)))
}

/// Waits until `count` distinct configs of this bridge arrived after the
/// last `forget`, and returns them by topic.
async fn configs(app: &TestApp, sub: &mut TestClient, count: usize) -> BTreeMap<String, Value> {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let found: BTreeMap<String, Value> = sub
            .seen
            .iter()
            .filter(|m| ours(app, &m.topic) && !m.payload.is_empty())
            .map(|m| (m.topic.clone(), m.json()))
            .collect();
        if found.len() >= count {
            assert_eq!(found.len(), count, "{:?}", found.keys());
            return found;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "{} discovery configs of {count}: {:?}",
            found.len(),
            found.keys()
        );
        // Any new message: the next one of ours, or another test's.
        let before = sub.seen.len();
        sub.wait_for(left, "more discovery configs", |m| ours(app, &m.topic))
            .await;
        if sub.seen.len() == before {
            // wait_for found an old one: drain whatever came meanwhile.
            tokio::time::sleep(Duration::from_millis(20)).await;
            sub.forget_into_seen();
        }
    }
}

fn keys_allowed(what: &str, object: &Value, allowed: &[&[&str]]) {
    let object = object
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a JSON object"));
    for key in object.keys() {
        assert!(
            allowed.iter().any(|keys| keys.contains(&key.as_str())),
            "{what}: `{key}` is not a documented discovery key"
        );
    }
}

fn string<'a>(config: &'a Value, key: &str, what: &str) -> &'a str {
    config[key]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `{key}` must be a string: {config}"))
}

/// Checks one config against the documented schema; returns its platform.
fn check_config(app: &TestApp, topic: &str, config: &Value) -> String {
    let node = node(app);
    let parts: Vec<&str> = topic.split('/').collect();
    assert_eq!(
        parts.len(),
        5,
        "{topic}: <prefix>/<component>/<node>/<object>/config"
    );
    let (component, object) = (parts[1], parts[3]);
    assert_eq!(
        (parts[0], parts[2], parts[4]),
        ("homeassistant", node.as_str(), "config")
    );
    assert!(
        object
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "{topic}: HA drops object ids outside [A-Za-z0-9_-]"
    );
    let platform: &[&str] = match component {
        "sensor" => SENSOR_KEYS,
        "binary_sensor" => BINARY_SENSOR_KEYS,
        "switch" => SWITCH_KEYS,
        other => panic!("{topic}: unexpected component {other}"),
    };
    keys_allowed(topic, config, &[COMMON_KEYS, platform]);
    assert!(!string(config, "name", topic).is_empty());
    let unique_id = string(config, "unique_id", topic);
    assert!(
        unique_id.starts_with(&format!("{node}_")),
        "{topic}: {unique_id}"
    );
    assert_eq!(
        config["default_entity_id"],
        format!("{component}.{unique_id}"),
        "{topic}"
    );
    assert!(
        config.get("object_id").is_none(),
        "{topic}: object_id is deprecated"
    );

    let device = &config["device"];
    keys_allowed(&format!("{topic} device"), device, &[DEVICE_KEYS]);
    let identifiers = device["identifiers"]
        .as_array()
        .unwrap_or_else(|| panic!("{topic}: device.identifiers must be a list"));
    assert!(!identifiers.is_empty() && identifiers.iter().all(Value::is_string));
    assert!(!string(device, "name", topic).is_empty());
    let origin = &config["origin"];
    keys_allowed(&format!("{topic} origin"), origin, &[ORIGIN_KEYS]);
    assert_eq!(origin["name"], "pbx2mqtt", "{topic}");
    assert_eq!(origin["sw_version"], env!("CARGO_PKG_VERSION"), "{topic}");
    if let Some(category) = config.get("entity_category") {
        assert_eq!(
            category, "diagnostic",
            "{topic}: sensors accept diagnostic only"
        );
    }

    let state_topic = string(config, "state_topic", topic);
    assert!(
        state_topic.starts_with(&format!("{}/", app.base)),
        "{topic}"
    );
    if object == "bridge_connection" {
        // It must show `off` while the bridge is offline, not unavailable.
        assert!(config.get("availability").is_none(), "{topic}");
        assert_eq!(state_topic, format!("{}/bridge/state", app.base));
        assert_eq!(
            (
                &config["payload_on"],
                &config["payload_off"],
                &config["device_class"]
            ),
            (&json!("online"), &json!("offline"), &json!("connectivity"))
        );
        assert_eq!(device["identifiers"], json!([format!("{node}_bridge")]));
    } else {
        assert_eq!(
            config["availability"],
            json!([{
                "topic": format!("{}/bridge/state", app.base),
                "payload_available": "online",
                "payload_not_available": "offline",
            }]),
            "{topic}"
        );
        assert_eq!(device["via_device"], format!("{node}_bridge"), "{topic}");
    }
    component.to_owned()
}

/// What Home Assistant's `value_template` of a queue switch renders from a
/// membership payload (`{{ 'ON' if '<queue>' in value_json.queues else 'OFF' }}`).
fn switch_state(queues: &Value, queue: &str) -> &'static str {
    let list = queues["queues"]
        .as_array()
        .unwrap_or_else(|| panic!("queues must be a list: {queues}"));
    assert!(
        list.iter().all(Value::is_string),
        "queues are strings: {queues}"
    );
    if list.iter().any(|q| q == queue) {
        "ON"
    } else {
        "OFF"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(any(pbx2mqtt_mqtt, pbx2mqtt_mosquitto)),
    ignore = "needs Mosquitto: set PBX2MQTT_TEST_MQTT_URL or install mosquitto (CI has both)"
)]
async fn discovery_configs_follow_the_documented_schema_and_lifecycle() {
    let broker = RealBroker::get("discovery").await;
    let mut app = prepare_app(Options {
        broker_url: Some(broker.url.clone()),
        extra_toml: "[commands]\nallowed_queues = [500, 501]\n".into(),
        ..Options::default()
    })
    .await;
    // This bridge's configs only: on a shared broker `homeassistant/#` also
    // holds every other bridge's.
    let filters = [
        format!("homeassistant/+/{}/+/config", node(&app)),
        format!("{}/#", app.base),
    ];
    let mut sub = TestClient::connect(&broker.url, &filters).await;
    app.start_bridge().await;
    app.set(1, true, "-", "calling");
    // The bridge + 3 agents × (status, on a call, since, 2 switches).
    let first = configs(&app, &mut sub, 16).await;

    let node = node(&app);
    let mut unique_ids = BTreeSet::new();
    let mut by_component = BTreeMap::<String, usize>::new();
    for (topic, config) in &first {
        let component = check_config(&app, topic, config);
        *by_component.entry(component).or_default() += 1;
        assert!(
            unique_ids.insert(config["unique_id"].as_str().unwrap().to_owned()),
            "duplicate unique_id in {topic}"
        );
    }
    assert_eq!(
        by_component,
        BTreeMap::from([
            ("binary_sensor".into(), 4),
            ("sensor".into(), 6),
            ("switch".into(), 6),
        ])
    );

    // Agent 1's entities, one by one.
    let agent = app.agent(1);
    let config = |object: &str, component: &str| {
        first
            .get(&format!("homeassistant/{component}/{node}/{object}/config"))
            .unwrap_or_else(|| panic!("no {component} {object}"))
            .clone()
    };
    let state_topic = format!("{}/agent/{agent}", app.base);
    let device = json!({
        "identifiers": [format!("{node}_agent_{agent}")],
        "name": app.config.agents[0].name.clone().unwrap_or_else(|| agent.clone()),
        "manufacturer": "pbx2mqtt",
        "model": "Call-center agent",
        "via_device": format!("{node}_bridge"),
    });
    let status = config(&format!("{agent}_status"), "sensor");
    assert_eq!(status["device_class"], "enum");
    assert_eq!(status["options"], json!(HA_STATUSES));
    assert!(status.get("state_class").is_none() && status.get("unit_of_measurement").is_none());
    assert_eq!(status["state_topic"], state_topic);
    assert_eq!(status["device"], device);
    let since = config(&format!("{agent}_status_since"), "sensor");
    assert_eq!(since["device_class"], "timestamp");
    assert_eq!(since["value_template"], "{{ value_json.since }}");
    assert_eq!(since["state_topic"], state_topic);
    let call = config(&format!("{agent}_on_a_call"), "binary_sensor");
    assert_eq!(
        (&call["payload_on"], &call["payload_off"]),
        (&json!("ON"), &json!("OFF"))
    );
    assert_eq!(
        call["value_template"],
        "{{ 'ON' if value_json.on_a_call else 'OFF' }}"
    );
    for queue in ["500", "501"] {
        let switch = config(&format!("{agent}_queue_{queue}"), "switch");
        assert_eq!(
            switch["command_topic"],
            format!("{}/request/queue/{queue}/set", app.base)
        );
        assert_eq!(
            switch["state_topic"],
            format!("{}/agent/{agent}/queues", app.base)
        );
        for (key, member) in [("payload_on", true), ("payload_off", false)] {
            let payload: Value = serde_json::from_str(string(&switch, key, "switch"))
                .expect("the switch payloads are the JSON the parser reads");
            assert_eq!(payload, json!({"agent": agent, "member": member}));
        }
        assert_eq!(
            (&switch["state_on"], &switch["state_off"]),
            (&json!("ON"), &json!("OFF"))
        );
        assert_eq!(
            switch["value_template"],
            format!("{{{{ 'ON' if '{queue}' in value_json.queues else 'OFF' }}}}")
        );
        assert_eq!(
            (&switch["retain"], &switch["optimistic"]),
            (&json!(false), &json!(false))
        );
    }

    // The state the templates read: status one of the options, on_a_call a
    // bool, since ISO 8601 with a zone, queues a list of strings.
    let state = sub
        .wait_for(SOON, "agent 1 ringing", |m| {
            m.topic == state_topic && m.json()["status"] == "ringing"
        })
        .await
        .json();
    assert!(HA_STATUSES.contains(&state["status"].as_str().unwrap()));
    assert_eq!(state["on_a_call"], true);
    chrono::DateTime::parse_from_rfc3339(state["since"].as_str().expect("since is a string"))
        .expect("since is RFC 3339 with a zone");
    let queues = sub
        .wait_topic(&format!("{}/agent/{agent}/queues", app.base), SOON)
        .await
        .json();
    assert_eq!(switch_state(&queues, "500"), "OFF");

    // Stable across a restart: the same topics and payloads.
    app.stop_bridge().await;
    sub.forget();
    app.start_bridge().await;
    let second = configs(&app, &mut sub, 16).await;
    assert_eq!(first, second, "discovery changed across a restart");

    // Home Assistant's birth message makes the bridge publish them again.
    wait_ready(&mut sub, &app.base).await;
    sub.forget();
    sub.publish("homeassistant/status", "online", false).await;
    let third = configs(&app, &mut sub, 16).await;
    assert_eq!(first, third);

    // Agent 3 taken out of the configuration: its configs are removed
    // (empty retained) at the next start, the others stay.
    app.stop_bridge().await;
    let removed = app.config.agents.pop().expect("three agents");
    app.start_bridge().await;
    let gone: Vec<&String> = first
        .keys()
        .filter(|topic| topic.contains(&format!("/{}_", removed.id)))
        .collect();
    assert_eq!(gone.len(), 5);
    for topic in &gone {
        sub.wait_for(SOON, &format!("{topic} removed"), |m| {
            &&m.topic == topic && m.payload.is_empty()
        })
        .await;
    }
    let left = retained_under(
        &broker.url,
        &format!("homeassistant/+/{node}/+/config"),
        &format!("homeassistant/test/{node}/marker/config"),
    )
    .await;
    assert_eq!(
        left.len(),
        11,
        "{:?}",
        left.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
    app.stop_bridge().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(any(pbx2mqtt_mqtt, pbx2mqtt_mosquitto)),
    ignore = "needs Mosquitto: set PBX2MQTT_TEST_MQTT_URL or install mosquitto (CI has both)"
)]
async fn queue_switches_round_trip_through_the_simulator() {
    let broker = RealBroker::get("queue_switch").await;
    let mut app = prepare_app(Options {
        broker_url: Some(broker.url.clone()),
        extra_toml: "[commands]\nallowed_queues = [500]\n".into(),
        ..Options::default()
    })
    .await;
    let node = node(&app);
    let agent = app.agent(1);
    let filters = [
        format!("homeassistant/switch/{node}/#"),
        format!("{}/#", app.base),
    ];
    let mut sub = TestClient::connect(&broker.url, &filters).await;
    app.start_bridge().await;
    let switch = sub
        .wait_topic(
            &format!("homeassistant/switch/{node}/{agent}_queue_500/config"),
            SOON,
        )
        .await
        .json();
    let command_topic = string(&switch, "command_topic", "switch").to_owned();
    let state_topic = string(&switch, "state_topic", "switch").to_owned();
    let response_topic = command_topic.replace("/request/", "/response/");
    let members_topic = format!("{}/queue/500/members", app.base);
    let initial = sub.wait_topic(&state_topic, SOON).await.json();
    wait_ready(&mut sub, &app.base).await;
    assert_eq!(switch_state(&initial, "500"), "OFF");

    // On, as Home Assistant sends it.
    sub.forget();
    sub.publish(
        &command_topic,
        string(&switch, "payload_on", "switch"),
        false,
    )
    .await;
    let ok = sub.wait_topic(&response_topic, SOON).await.json();
    assert_eq!(ok["status"], "ok", "{ok}");
    assert_eq!(app.simulator.queue_members("500"), ["201"]);
    sub.wait_for(SOON, "the switch on", |m| {
        m.topic == state_topic && switch_state(&m.json(), "500") == "ON"
    })
    .await;
    let members = sub
        .wait_for(SOON, "the queue's members", |m| {
            m.topic == members_topic && m.json()["members"] == json!(["201"])
        })
        .await
        .json();
    assert_eq!(members["agents"], json!([agent]));

    // Off.
    sub.forget();
    sub.publish(
        &command_topic,
        string(&switch, "payload_off", "switch"),
        false,
    )
    .await;
    let ok = sub.wait_topic(&response_topic, SOON).await.json();
    assert_eq!(ok["status"], "ok", "{ok}");
    assert!(app.simulator.queue_members("500").is_empty());
    sub.wait_for(SOON, "the switch off", |m| {
        m.topic == state_topic && switch_state(&m.json(), "500") == "OFF"
    })
    .await;
    sub.wait_for(SOON, "the queue empty", |m| {
        m.topic == members_topic && m.json()["members"] == json!([])
    })
    .await;
    app.wait_audit("the switch's add", |row| {
        row.entry.topic == command_topic
            && row.entry.outcome == pbx2mqtt::store::AuditOutcome::Ok
            && row.entry.request.contains("true")
    })
    .await;

    // A refused switch command: a queue that is not allowed. The error is
    // on the response topic and in the audit; nothing reaches TRiNG.
    let adds = app.simulator.counts().action("add");
    let not_allowed = format!("{}/request/queue/999/set", app.base);
    sub.publish(&not_allowed, string(&switch, "payload_on", "switch"), false)
        .await;
    let refused = sub
        .wait_topic(&not_allowed.replace("/request/", "/response/"), SOON)
        .await
        .json();
    assert_eq!(refused["code"], "queue_not_allowed", "{refused}");
    app.wait_audit("the refused switch", |row| {
        row.entry.topic == not_allowed
            && row.entry.error_code.as_deref() == Some("queue_not_allowed")
    })
    .await;

    // A switch command TRiNG refuses: an error answer and audit row, and
    // the switch's state stays off (HA does not move a non-optimistic
    // switch; the retained membership still says not a member).
    app.simulator.inject(
        Fault::always(
            Api::Tring,
            FaultKind::PlainTextError("ERROR: extension locked".into()),
        )
        .for_agent(&app.ext(1))
        .times(1),
    );
    sub.forget();
    sub.publish(
        &command_topic,
        string(&switch, "payload_on", "switch"),
        false,
    )
    .await;
    let failed = sub.wait_topic(&response_topic, SOON).await.json();
    assert_eq!(failed["status"], "error", "{failed}");
    let code = failed["code"].as_str().expect("an error code").to_owned();
    app.wait_audit("the failed switch", |row| {
        row.entry.topic == command_topic && row.entry.error_code.as_deref() == Some(&code)
    })
    .await;
    assert!(app.simulator.queue_members("500").is_empty());
    assert_eq!(app.simulator.counts().action("add"), adds + 1);
    let retained = retained_under(&broker.url, &state_topic, &state_topic).await;
    // (the marker on the state topic is not retained; the state is)
    let state = retained
        .iter()
        .find(|m| m.topic == state_topic)
        .expect("the membership state is retained")
        .json();
    assert_eq!(switch_state(&state, "500"), "OFF", "{state}");
    app.stop_bridge().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(any(pbx2mqtt_mqtt, pbx2mqtt_mosquitto)),
    ignore = "needs Mosquitto: set PBX2MQTT_TEST_MQTT_URL or install mosquitto (CI has both)"
)]
async fn membership_changes_made_in_tring_show_at_the_next_refresh() {
    let broker = RealBroker::get("membership_refresh").await;
    let mut app = prepare_app(Options {
        broker_url: Some(broker.url.clone()),
        extra_toml: "[commands]\nallowed_queues = [500]\nmembership_interval = \"5s\"\n".into(),
        ..Options::default()
    })
    .await;
    let mut sub = TestClient::connect(&broker.url, &[format!("{}/#", app.base)]).await;
    app.start_bridge().await;
    let members_topic = format!("{}/queue/500/members", app.base);
    let agent2_topic = format!("{}/agent/{}/queues", app.base, app.agent(2));
    let first = sub.wait_topic(&members_topic, SOON).await.json();
    assert_eq!(first["members"], json!([]));
    assert!(first["updated"].is_string());

    // Not through the bridge: straight into TRiNG (the simulator), as the
    // portal or another tool would. An agent and a custom destination.
    app.simulator
        .set_queue_members("500", ["202", "0612345678"]);
    let refresh = Duration::from_secs(5) + SOON;
    let members = sub
        .wait_for(refresh, "the change at the next refresh", |m| {
            m.topic == members_topic && m.json()["members"] != json!([])
        })
        .await;
    let members = members.json();
    assert_eq!(members["members"], json!(["0612345678", "202"]));
    assert_eq!(members["agents"], json!([app.agent(2)]));
    let queues = sub
        .wait_for(SOON, "agent 2's queues", |m| {
            m.topic == agent2_topic && switch_state(&m.json(), "500") == "ON"
        })
        .await
        .json();
    assert_eq!(queues["agent"], app.agent(2));

    // And out again.
    app.simulator.set_queue_members("500", Vec::<String>::new());
    sub.wait_for(refresh, "the removal at the next refresh", |m| {
        m.topic == agent2_topic && switch_state(&m.json(), "500") == "OFF"
    })
    .await;
    app.stop_bridge().await;
}

/// Runs `tests/homeassistant/ha_check.py` with a real Home Assistant Core
/// against the bridge: every agent a device with its entities, the switch
/// adds and removes the agent in the simulator, configs republished on HA's
/// birth. Built as ignored (skipped) unless `PBX2MQTT_TEST_HA_PYTHON` names
/// the virtualenv's python (`tests/homeassistant/install_ha.sh`); once it is
/// set, a virtualenv that cannot run the check is a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(pbx2mqtt_ha, any(pbx2mqtt_mqtt, pbx2mqtt_mosquitto))),
    ignore = "needs PBX2MQTT_TEST_HA_PYTHON: the python of a virtualenv with Home Assistant Core (tests/homeassistant/install_ha.sh; CI sets it)"
)]
async fn a_real_home_assistant_shows_every_agent_and_drives_the_switch() {
    let python = std::env::var("PBX2MQTT_TEST_HA_PYTHON")
        .ok()
        .filter(|python| !python.is_empty())
        .expect("set PBX2MQTT_TEST_HA_PYTHON (tests/homeassistant/install_ha.sh)");
    let broker = RealBroker::get("home_assistant").await;
    let prefix = format!("ha_{:08x}", rand::random::<u32>());
    let mut app = prepare_app(Options {
        broker_url: Some(broker.url.clone()),
        extra_toml: format!(
            "[commands]\nallowed_queues = [500]\n\
             [homeassistant]\ndiscovery_prefix = {prefix:?}\nstatus_topic = \"{prefix}/status\"\n"
        ),
        ..Options::default()
    })
    .await;
    app.start_bridge().await;
    wait_ready(&mut app.ready_subscriber().await, &app.base).await;
    app.set(1, true, "-", "idle");
    let agents: Vec<String> = (1..=3).map(|n| app.agent(n)).collect();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/homeassistant/ha_check.py"
    );
    let summary = app.dir.path().join("ha_check.json");
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(script)
        .args(["--ha-python", &python])
        .args(["--broker", &broker.url])
        .args(["--base-topic", &app.base])
        .args(["--discovery-prefix", &prefix])
        .args(["--agents", &agents.join(",")])
        .args(["--queues", "500"])
        .args(["--toggle", &format!("{}:500", agents[0])])
        .arg("--check-birth-republish")
        .arg("--json-out")
        .arg(&summary)
        .kill_on_drop(true);
    if let Ok(png) = std::env::var("PBX2MQTT_TEST_HA_SCREENSHOT") {
        command.args(["--screenshot", &png]);
    }
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("ha_check.py did not finish within 5 minutes")
        .expect("run ha_check.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(
        output.status.code(),
        Some(77),
        "PBX2MQTT_TEST_HA_PYTHON cannot run the Home Assistant check: {stdout}"
    );
    assert!(
        output.status.success(),
        "ha_check.py failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    eprintln!("{stdout}");
    // The switch went through the bridge: an add and a remove, audited.
    for word in ["true", "false"] {
        app.wait_audit(&format!("the switch command member={word}"), |row| {
            row.entry.topic.ends_with("/request/queue/500/set")
                && row.entry.outcome == pbx2mqtt::store::AuditOutcome::Ok
                && row.entry.request.contains(word)
        })
        .await;
    }
    assert!(app.simulator.counts().action("add") >= 1);
    assert!(app.simulator.counts().action("del") >= 1);
    app.stop_bridge().await;
}
