//! The Docker deployment works without Docker: `config/docker.toml`, as
//! docker-compose.yml's demo profile runs it (the simulator's default
//! agents and credentials), polls every configured agent and answers queue
//! commands; and the Dockerfile and the compose file agree with it.

use std::net::SocketAddr;
use std::path::Path;

use pbx2mqtt::app::Application;
use pbx2mqtt::config::Config;
use pbx2mqtt::simulator::{Simulator, SimulatorConfig};
use tokio_util::sync::CancellationToken;

use crate::helpers::{clear_retained, wait_until, RealBroker, SOON};
use crate::mqtt_client::TestClient;

const DOCKERFILE: &str = include_str!("../../Dockerfile");
const COMPOSE: &str = include_str!("../../docker-compose.yml");

fn docker_toml() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/docker.toml")
}

#[test]
fn dockerfile_and_compose_agree_with_the_docker_config() {
    // The image reads the file the compose file mounts.
    assert!(DOCKERFILE.contains("ENV PBX2MQTT_CONFIG=/etc/pbx2mqtt/docker.toml"));
    assert!(COMPOSE.contains("- ./config:/etc/pbx2mqtt:ro"));
    assert!(docker_toml().exists());
    // The bridge's fallback credentials are the simulator's defaults.
    let simulator = SimulatorConfig::default();
    assert!(COMPOSE.contains(&format!(
        "${{PBX2MQTT_BELFABRIEK__ACCOUNT_PIN:-{}}}",
        simulator.account_pin
    )));
    assert!(COMPOSE.contains(&format!(
        "${{PBX2MQTT_TRING__KEY:-{}}}",
        simulator.tring_key
    )));
    assert!(COMPOSE.contains(r#"command: ["simulate", "--listen", "0.0.0.0:8090""#));

    let config = Config::load(Some(&docker_toml())).expect("config/docker.toml loads");
    assert_eq!(config.mqtt.url.as_str(), "mqtt://mosquitto:1883");
    assert_eq!(
        config.belfabriek.url,
        format!(
            "http://simulator:8090{}",
            pbx2mqtt::simulator::BELFABRIEK_PATH
        )
    );
    assert_eq!(
        config.tring.url,
        format!("http://simulator:8090{}", pbx2mqtt::simulator::TRING_PATH)
    );
    assert_eq!(config.tring.tenant, simulator.tenant);
    assert_eq!(config.http.listen, "0.0.0.0:8080");
    assert_eq!(config.database.url, "sqlite:///var/lib/pbx2mqtt/history.db");
    // The image's HEALTHCHECK (`pbx2mqtt healthcheck`, no flags) asks the
    // bridge's /healthz on loopback, from the file the image reads.
    assert!(DOCKERFILE.contains(r#"CMD ["pbx2mqtt", "healthcheck"]"#));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pbx2mqtt"))
        .args(["healthcheck", "--timeout", "2s"])
        .env("PBX2MQTT_CONFIG", docker_toml())
        .output()
        .expect("run pbx2mqtt healthcheck");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("http://127.0.0.1:8080/healthz"), "{said}");
    // No secret in the file: they come from the environment.
    let text = std::fs::read_to_string(docker_toml()).unwrap();
    for key in ["account_pin =", "key =", "password ="] {
        assert!(
            !text.lines().any(|line| line.trim_start().starts_with(key)),
            "config/docker.toml sets {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(any(pbx2mqtt_mqtt, pbx2mqtt_mosquitto)),
    ignore = "config/docker.toml names a bridge id (a cluster member, on shared subscriptions): needs Mosquitto, set PBX2MQTT_TEST_MQTT_URL or install mosquitto (CI has both)"
)]
async fn docker_config_polls_the_simulators_default_agents() {
    // A cluster member subscribes with `$share/`: a real broker.
    let broker = RealBroker::get("docker_config").await;
    let stop = CancellationToken::new();
    // The demo profile's simulator: default agents and credentials, moving.
    let simulator_config = SimulatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        mean_dwell: std::time::Duration::from_millis(300),
        seed: Some(11),
        ..SimulatorConfig::default()
    };
    let simulator = Simulator::start(simulator_config.clone(), stop.clone())
        .await
        .expect("simulator");
    simulator.set_queue_members("500", ["201"]);

    // config/docker.toml with only the addresses changed (compose's service
    // names do not resolve here) and the credentials compose passes when
    // .env sets none.
    let dir = tempfile::tempdir().unwrap();
    let base = format!("pbx2mqtt-test/{:08x}", rand::random::<u32>());
    let figment = Config::figment(Some(&docker_toml()))
        .expect("config/docker.toml")
        .merge(("mqtt.url", broker.url.clone()))
        .merge(("mqtt.base_topic", base.clone()))
        .merge(("mqtt.client_id", format!("docker-{base}")))
        .merge(("belfabriek.url", simulator.belfabriek_url()))
        .merge((
            "belfabriek.account_pin",
            simulator_config.account_pin.clone(),
        ))
        .merge(("tring.url", simulator.tring_url()))
        .merge(("tring.key", simulator_config.tring_key.clone()))
        .merge((
            "database.url",
            format!("sqlite://{}", dir.path().join("history.db").display()),
        ))
        .merge(("http.listen", "127.0.0.1:0"));
    let config = Config::from_figment(figment).expect("config");
    let configured: Vec<String> = config.agents.iter().map(|a| a.id.to_string()).collect();
    assert!(configured.len() >= 6, "a handful of agents");

    // Every configured agent is one of the simulator's, as the demo names them.
    let toml = simulator.agents_toml("agent-");
    for agent in &config.agents {
        let table = format!(
            "id = \"{}\"\nname = {:?}\nextension_id = \"{}\"\nqueue_extension = \"{}\"\n",
            agent.id,
            agent.display_name(),
            agent.extension_id,
            agent.queue_extension.as_deref().unwrap_or_default()
        );
        assert!(
            toml.contains(&table),
            "{} is not a simulator agent",
            agent.id
        );
    }

    let mut sub = TestClient::connect(&broker.url, &[format!("{base}/#")]).await;
    let app = Application::build(config).await.expect("bridge");
    let http = app.http_addr().expect("http server");
    let metrics = app.metrics();
    let bridge = tokio::spawn(app.run(stop.clone()));
    sub.wait_for(SOON, "online", |m| {
        m.topic == format!("{base}/bridge/state") && m.text() == "online"
    })
    .await;

    // Every agent polled (the PIN is right) and moving.
    wait_until(SOON, "two rounds of polls", || {
        metrics.polls_ok.load(std::sync::atomic::Ordering::Relaxed) >= 2 * configured.len() as u64
    })
    .await;
    let body = reqwest::get(format!("http://{http}/api/agents"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let agents: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = agents.as_array().expect("a list");
    assert_eq!(listed.len(), configured.len());
    for agent in listed {
        assert_ne!(agent["status"], "unknown", "{agent}");
    }
    sub.wait_for(SOON, "a transition", |m| m.topic.ends_with("/event"))
        .await;

    // Queue commands reach TRiNG (the key and tenant are right).
    sub.publish(
        &format!("{base}/request/queue/500/list"),
        r#"{"transaction":"docker"}"#,
        false,
    )
    .await;
    let answer = sub
        .wait_topic(&format!("{base}/response/queue/500/list"), SOON)
        .await
        .json();
    assert_eq!(answer["status"], "ok", "{answer}");
    assert_eq!(answer["data"]["members"], serde_json::json!(["201"]));

    stop.cancel();
    bridge.await.unwrap().unwrap();
    clear_retained(&broker.url, &base).await.unwrap();
}
