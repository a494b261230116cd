//! `pbx2mqtt demo` as a newcomer runs it, as the real binary: clients come
//! and go without a single ERROR line, logs carry no colour codes when
//! stderr is not a terminal, Ctrl-C stops it cleanly, and `pbx2mqtt demo
//! report ...` reports on what it recorded. Reports never create a
//! database.

fn binary() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pbx2mqtt"));
    command.env_remove("PBX2MQTT_CONFIG").env_remove("RUST_LOG");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_never_create_a_database_and_name_the_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pbx2mqtt.toml");
    std::fs::write(&config, "[database]\nurl = \"sqlite://history/none.db\"\n").unwrap();
    for args in [
        vec!["report", "summary"],
        vec!["report", "timeline", "--agent", "alice"],
        vec!["audit"],
    ] {
        let out = binary()
            .args(&args)
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .output()
            .await
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no history database at \"sqlite://history/none.db\""),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("does not exist"), "{args:?}: {stderr}");
        assert!(!dir.path().join("history").exists(), "{args:?} created it");
    }
    // The demo's report, before any demo ran: the same clear error.
    let out = binary()
        .args(["demo", "report", "summary"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no history database at \"sqlite://data/demo.db\""),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("data").exists());
}

#[cfg(feature = "embedded-broker")]
/// Where `mosquitto_pub` is, if installed (the way to connect and
/// disconnect; rumqttc clients and a bare TCP probe are used in any case).
fn mosquitto_pub() -> Option<&'static str> {
    ["/usr/bin/mosquitto_pub", "/usr/local/bin/mosquitto_pub"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
}

#[cfg(feature = "embedded-broker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_logs_no_error_when_clients_come_and_go_and_reports_on_its_history() {
    use std::process::Stdio;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    use crate::helpers::SOON;
    use crate::mqtt_client::TestClient;

    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("demo.db").display());
    let mut demo = binary()
        .args([
            "demo",
            "--agents",
            "3",
            "--dwell",
            "300ms",
            "--mqtt-port",
            "0",
        ])
        .args(["--http", "127.0.0.1:0", "--database", &database])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = demo.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut stdout = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    tokio::time::timeout(SOON, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            let done = line.starts_with("Press Ctrl-C");
            banner.push(line);
            if done {
                break;
            }
        }
    })
    .await
    .expect("the demo's banner");
    let banner = banner.join("\n");
    let port: u16 = banner
        .split(" -p ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no broker port in:\n{banner}"));
    // The pages come from the binary itself (it runs in an empty directory).
    let wallboard = banner
        .split("Wallboard:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no wallboard address in:\n{banner}"))
        .to_owned();
    for (path, needle) in [
        ("", "assets/wallboard.js"),
        ("assets/wallboard.js", "api/stream"),
    ] {
        let response = reqwest::get(format!("{wallboard}{path}")).await.unwrap();
        assert_eq!(
            response.status(),
            reqwest::StatusCode::OK,
            "{wallboard}{path}"
        );
        assert!(
            response.text().await.unwrap().contains(needle),
            "{wallboard}{path}"
        );
    }
    assert!(
        banner.contains(&format!(
            "Report on it:       pbx2mqtt demo --database {database} report summary"
        )),
        "{banner}"
    );

    // Clients come and go: MQTT clients, a bare TCP probe, mosquitto_pub.
    let url = format!("mqtt://127.0.0.1:{port}");
    let mut watcher = TestClient::connect(&url, &["pbx2mqtt/#".to_owned()]).await;
    for agent in ["agent-1001", "agent-1002", "agent-1003"] {
        let topic = format!("pbx2mqtt/agent/{agent}/event");
        watcher.wait_topic(&topic, SOON).await;
    }
    for _ in 0..3 {
        let client = TestClient::connect(&url, &["pbx2mqtt/bridge/state".to_owned()]).await;
        client.client.disconnect().await.unwrap();
        drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    match mosquitto_pub() {
        Some(binary) => {
            for _ in 0..3 {
                let status = tokio::process::Command::new(binary)
                    .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                    .args(["-t", "demo/test", "-m", "hello"])
                    .status()
                    .await
                    .unwrap();
                assert!(status.success());
            }
        }
        None => eprintln!("mosquitto_pub not installed: rumqttc clients only"),
    }
    drop(watcher);
    // One more client after the others left, so their disconnects are
    // logged before the demo stops.
    let last = TestClient::connect(&url, &["pbx2mqtt/bridge/state".to_owned()]).await;
    last.client.disconnect().await.unwrap();

    // Ctrl-C: a clean stop.
    let pid = demo.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), demo.wait())
        .await
        .expect("the demo stops within 30 s of Ctrl-C")
        .unwrap();
    let stderr = stderr.await.unwrap();
    assert!(status.success(), "{status}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines in a normal demo:\n{}",
        errors.join("\n")
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );
    assert!(stderr.contains(" INFO "), "{stderr}");

    // And the demo's history, reported on as the banner says.
    let out = binary()
        .args([
            "demo",
            "--database",
            &database,
            "report",
            "summary",
            "--format",
            "csv",
        ])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let csv = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(csv.starts_with("agent,name,period,"), "{csv}");
    for agent in ["agent-1001", "agent-1002", "agent-1003"] {
        assert!(
            csv.lines().any(|l| l.starts_with(&format!("{agent},"))),
            "{agent}:\n{csv}"
        );
    }
    let out = binary()
        .args([
            "demo",
            "--database",
            &database,
            "report",
            "timeline",
            "--agent",
            "agent-1001",
        ])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("agent-1001"),
        "{}",
        text(&out.stdout)
    );
    // Logs in JSON when asked through the environment.
    let out = binary()
        .args(["demo", "--database", &database, "audit"])
        .env("PBX2MQTT_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in text(&out.stderr).lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}
