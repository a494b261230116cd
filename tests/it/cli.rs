//! The command line, run as the real binary: `check`, `migrate`, reports,
//! queue commands, `--config` before or after the subcommand, and exit code
//! 2 with the key named for a bad configuration.

use std::process::Output;

use crate::helpers::{prepare_app, Options};

async fn pbx2mqtt(args: Vec<String>) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pbx2mqtt"))
        .args(args)
        .env_remove("PBX2MQTT_CONFIG")
        .output()
        .await
        .expect("run the pbx2mqtt binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reaches_everything_and_operator_commands_work() {
    let app = prepare_app(Options::default()).await;
    let config = app.dir.path().join("pbx2mqtt.toml").display().to_string();

    // --config after the subcommand
    let out = pbx2mqtt(vec!["check".into(), "--config".into(), config.clone()]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for line in [
        "ok    configuration (3 agents)",
        "ok    database",
        "ok    belfabriek",
        "ok    tring",
        "ok    mqtt",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }

    // --config before the subcommand; migrate creates the database
    let out = pbx2mqtt(vec!["--config".into(), config.clone(), "migrate".into()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(app.dir.path().join("history.db").exists());

    // queue commands straight to TRiNG, same response shape as over MQTT
    let out = pbx2mqtt(vec![
        "queue".into(),
        "add".into(),
        "500".into(),
        "--agent".into(),
        app.agent(2),
        "--config".into(),
        config.clone(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(app.simulator.queue_members("500"), ["202"]);
    let out = pbx2mqtt(vec![
        "queue".into(),
        "list".into(),
        "500".into(),
        "--config".into(),
        config.clone(),
    ])
    .await;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(
        listed["data"]["members"],
        serde_json::json!(["202"]),
        "{listed}"
    );
    // and the same validation: nothing reaches TRiNG
    let writes = |counts: pbx2mqtt::simulator::RequestCounts| {
        counts.action("add") + counts.action("del") + counts.action("clean")
    };
    let before = writes(app.simulator.counts());
    let out = pbx2mqtt(vec![
        "queue".into(),
        "add".into(),
        "500&action=clean".into(),
        "--extension".into(),
        "201".into(),
        "--config".into(),
        config.clone(),
    ])
    .await;
    assert!(!out.status.success());
    assert_eq!(writes(app.simulator.counts()), before);

    // reports run on the (empty) history
    let out = pbx2mqtt(vec![
        "report".into(),
        "summary".into(),
        "--format".into(),
        "csv".into(),
        "--config".into(),
        config.clone(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .lines()
            .next()
            .is_some_and(|header| header.contains("agent")),
        "{}",
        text(&out.stdout)
    );

    // the audit log shows the CLI commands
    let out = pbx2mqtt(vec![
        "audit".into(),
        "--since".into(),
        "1h".into(),
        "--format".into(),
        "json".into(),
        "--config".into(),
        config,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("cli/queue/500/add"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, key) in [
        ("[poll]\ninterval = \"fast\"\n", "poll.interval"),
        ("[mqtt]\nurl = \"http://broker\"\n", "mqtt.url"),
        ("[poll]\nintervall = \"2s\"\n", "intervall"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, toml).unwrap();
        let out = pbx2mqtt(vec![
            "run".into(),
            "--config".into(),
            path.display().to_string(),
        ])
        .await;
        assert_eq!(out.status.code(), Some(2), "{toml}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(key),
            "{toml}: {}",
            text(&out.stderr)
        );
    }
    let out = pbx2mqtt(vec![
        "run".into(),
        "--config".into(),
        "/no/such/file.toml".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/no/such/file.toml"));
}

/// A build without the `embedded-broker` feature still has `demo`, which
/// fails at once saying what it lacks and what to do instead.
#[cfg(not(feature = "embedded-broker"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_without_the_embedded_broker_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("demo.db").display());
    let out = pbx2mqtt(vec![
        "demo".into(),
        "--database".into(),
        database,
        "--http".into(),
        "127.0.0.1:0".into(),
    ])
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`embedded-broker`"), "{stderr}");
    assert!(stderr.contains("your own broker"), "{stderr}");
    assert!(
        !dir.path().join("demo.db").exists(),
        "nothing is started without a broker"
    );
}
