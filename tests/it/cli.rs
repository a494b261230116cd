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

/// Runs the binary in `dir` with only `env` set (no `PBX2MQTT_*` from the
/// test environment), so messages are exactly what a user sees.
async fn pbx2mqtt_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pbx2mqtt"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run the pbx2mqtt binary")
}

fn example_config() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/config/pbx2mqtt.example.toml").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_on_the_example_config_exactly_where_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let example = example_config();
    let run = pbx2mqtt_in(dir.path(), &["run", "--config", &example], &[]).await;
    let run_err = text(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{run_err}");
    let check = pbx2mqtt_in(dir.path(), &["check", "--config", &example], &[]).await;
    let check_out = text(&check.stdout);
    assert_eq!(
        check.status.code(),
        Some(2),
        "{check_out}{}",
        text(&check.stderr)
    );
    for key in ["belfabriek.account_pin", "tring.key", "tring.tenant"] {
        assert!(
            run_err.contains(&format!("{key}: is not set")),
            "run: {key}:\n{run_err}"
        );
        assert!(
            check_out
                .lines()
                .any(|l| l.starts_with("FAIL  configuration: ") && l.contains(key)),
            "check: {key}:\n{check_out}"
        );
    }
    assert!(
        run_err.starts_with("error: invalid configuration (3 problems):\n"),
        "{run_err}"
    );
    // The same three, no more: every problem line of run is a FAIL line of check.
    let fails = check_out
        .lines()
        .filter(|l| l.starts_with("FAIL  configuration"))
        .count();
    assert_eq!(fails, 3, "{check_out}");
    // Both warn about what works but is probably not meant.
    for warning in ["no agents configured", "plain http://"] {
        assert!(run_err.contains(warning), "{run_err}");
        assert!(
            check_out
                .lines()
                .any(|l| l.starts_with("warn  ") && l.contains(warning)),
            "{check_out}"
        );
    }
    // The probes whose settings are broken are not tried; the rest are.
    assert!(
        check_out.contains("skip  belfabriek: not tried: belfabriek.account_pin"),
        "{check_out}"
    );
    assert!(
        check_out.contains("skip  tring: not tried: tring.key, tring.tenant"),
        "{check_out}"
    );
    assert!(check_out.contains("ok    database: "), "{check_out}");
    assert!(
        check_out.lines().any(|l| l.contains(" mqtt: ")),
        "{check_out}"
    );
    assert!(
        text(&check.stderr).contains("error: invalid configuration: 3 problems (listed above)"),
        "{}",
        text(&check.stderr)
    );
    // Neither created a database: validation comes before anything else.
    assert!(!dir.path().join("data").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_config_file_run_says_so_first_and_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out = pbx2mqtt_in(dir.path(), &["run"], &[]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "error: no configuration file found: looked for config/pbx2mqtt.toml in {}",
            dir.path().display()
        )),
        "{stderr}"
    );
    assert!(
        first.contains("--config FILE or PBX2MQTT_CONFIG=FILE"),
        "{stderr}"
    );
    assert!(first.ends_with("leave 3 problems:"), "{stderr}");
    for key in ["belfabriek.account_pin", "tring.key", "tring.tenant"] {
        assert!(
            stderr.contains(&format!("\n  {key}: is not set")),
            "{stderr}"
        );
    }
    assert!(!dir.path().join("data").exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_is_one_clean_line_and_every_problem_comes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/pbx2mqtt.toml"),
        "[poll]\nintervall = \"2s\"\n",
    )
    .unwrap();
    let out = pbx2mqtt_in(dir.path(), &["report", "summary"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: invalid configuration: config/pbx2mqtt.toml: unknown key poll.intervall \
         (allowed: interval, concurrency, stale_after, max_backoff)\n"
    );

    // Absurd values, a bad key from the environment, a short key: all named.
    std::fs::write(
        dir.path().join("config/pbx2mqtt.toml"),
        "[poll]\nconcurrency = 4000000000000000000\n[belfabriek]\ntimeout = \"0s\"\n\
         [tring]\nkey = \"k\"\ntenant = \"T\"\n",
    )
    .unwrap();
    let out = pbx2mqtt_in(
        dir.path(),
        &["run"],
        &[
            ("PBX2MQTT_POLL__INTERVALL", "1s"),
            ("PBX2MQTT_POLL__STALE_AFTER", "many"),
            ("PBX2MQTT_BELFABRIEK__ACCOUNT_PIN", "7"),
            ("PBX2MQTT_COMMANDS_CONCURRENCY", "4"),
        ],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for line in [
        "error: invalid configuration (6 problems):",
        "  environment variable PBX2MQTT_POLL__INTERVALL: unknown key poll.intervall (allowed: interval, concurrency, stale_after, max_backoff)",
        "  environment variable PBX2MQTT_POLL__STALE_AFTER: poll.stale_after: expected a whole number, found string \"many\"",
        "  config/pbx2mqtt.toml: belfabriek.timeout: \"0s\" is too short (allowed: 100ms to 5m)",
        "  environment variable PBX2MQTT_BELFABRIEK__ACCOUNT_PIN: belfabriek.account_pin: is shorter than 4 characters (allowed: the account PIN from Belfabriek; check the value)",
        "  config/pbx2mqtt.toml: tring.key: is shorter than 6 characters (allowed: the API key from your TRiNG supplier; check the value)",
        "  config/pbx2mqtt.toml: poll.concurrency: 4000000000000000000 is too large (allowed: 1 to 10000)",
        "warning: environment variable PBX2MQTT_COMMANDS_CONCURRENCY is ignored: configuration variables are PBX2MQTT_<SECTION>__<KEY>, with two underscores between section and key; did you mean PBX2MQTT_COMMANDS__CONCURRENCY?",
    ] {
        assert!(stderr.lines().any(|l| l == line), "missing {line:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains('`') && !stderr.contains("default."),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_its_warnings_once_at_start() {
    let app = prepare_app(Options::default()).await;
    // No agents, and a misspelt variable. The HTTP port is taken, so the
    // bridge stops right after logging them (before any MQTT connection).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = app.dir.path().join("no-agents.toml");
    let toml = std::fs::read_to_string(app.dir.path().join("pbx2mqtt.toml")).unwrap();
    let toml = toml.split("[[agents]]").next().unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", taken.local_addr().unwrap()),
    );
    std::fs::write(&config, toml).unwrap();
    let out = pbx2mqtt_in(
        app.dir.path(),
        &["run", "--config", &config.display().to_string()],
        &[("PBX2MQTT_POLL_INTERVALL", "1s")],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for warning in [
        "no agents configured: nothing will be polled",
        "environment variable PBX2MQTT_POLL_INTERVALL is ignored",
        "did you mean PBX2MQTT_POLL__INTERVAL?",
    ] {
        assert_eq!(stderr.matches(warning).count(), 1, "{warning}:\n{stderr}");
    }
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(" WARN ") && l.contains("no agents")),
        "{stderr}"
    );
    // Not a terminal: no colour codes.
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_bridge_on_one_sqlite_file_is_refused_with_a_clear_message() {
    let app = prepare_app(Options::default()).await;
    let config = app.dir.path().join("pbx2mqtt.toml").display().to_string();
    let mut first = tokio::process::Command::new(env!("CARGO_BIN_EXE_pbx2mqtt"))
        .args(["run", "--config", &config])
        .env_remove("PBX2MQTT_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the first bridge");
    let lock = app.dir.path().join("history.db.lock");
    let database = app.dir.path().join("history.db");
    crate::helpers::wait_until(
        std::time::Duration::from_secs(20),
        "the first bridge opens its database",
        || lock.exists() && database.exists(),
    )
    .await;

    let out = pbx2mqtt(vec!["run".into(), "--config".into(), config]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another pbx2mqtt bridge is already running on the sqlite database")
            && stderr.contains("use PostgreSQL to run several bridges"),
        "{stderr}"
    );
    assert!(
        first
            .try_wait()
            .expect("the first bridge's status")
            .is_none(),
        "the first bridge keeps running"
    );
    first.kill().await.expect("stop the first bridge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_on_a_live_bridge_and_1_otherwise() {
    let app = crate::helpers::spawn_app(Options::default()).await;
    let http = app.http.expect("the bridge's HTTP address");
    let out = pbx2mqtt(vec![
        "healthcheck".into(),
        "--url".into(),
        format!("http://{http}/healthz"),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let closed = crate::process::free_port();
    let out = pbx2mqtt(vec![
        "healthcheck".into(),
        "--timeout".into(),
        "2s".into(),
        "--url".into(),
        format!("http://127.0.0.1:{closed}/healthz"),
    ])
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no answer"), "{stderr}");
}
