//! Reports are bounded (issue #9, defect 5), over HTTP against the real
//! bridge and its SQLite file, and in the CLI: a request over
//! `report.max_cells` or `report.max_timeline_rows` is a 400 naming the
//! limit before any work; a report over `report.timeout` is a 504; beyond
//! `report.max_concurrent` a report is refused at once (503, `Retry-After`);
//! and the history writer keeps committing while reports run.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{spawn_app, Options, TestApp, SOON};

/// The process's resident memory in KiB (Linux), `None` elsewhere.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn base(app: &TestApp) -> String {
    format!("http://{}", app.http.expect("the test bridge serves HTTP"))
}

async fn get(
    client: &reqwest::Client,
    url: &str,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
    let response = client.get(url).send().await.expect("the bridge answers");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

async fn pbx2mqtt(args: Vec<String>) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pbx2mqtt"))
        .args(args)
        .env_remove("PBX2MQTT_CONFIG")
        .output()
        .await
        .expect("run the pbx2mqtt binary")
}

/// The issue's request: 2,000 agent ids over 13 years by day (9,496,000
/// cells) is answered 400 at once naming `report.max_cells`, without the
/// memory the report would take; the CLI refuses it with exit code 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issues_summary_is_refused_at_once_naming_the_limit() {
    let app = spawn_app(Options::default()).await;
    let client = reqwest::Client::new();
    let ids: Vec<String> = (0..2_000).map(|n| format!("agent{n:04}")).collect();
    let url = format!(
        "{}/api/reports/summary?from=2013-01-01&to=2025-12-31&by=day&agent={}",
        base(&app),
        ids.join(",")
    );
    let before = resident_kib();
    let started = Instant::now();
    let (status, _, body) = get(&client, &url).await;
    let elapsed = started.elapsed();
    let after = resident_kib();
    eprintln!(
        "2,000 agents × 13 years by day: {status} in {elapsed:?}; resident {before:?} → {after:?} KiB"
    );
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["limit"], "report.max_cells", "{body}");
    assert_eq!(body["max"], 200_000, "{body}");
    assert_eq!(body["value"], 2_000 * 4_748, "{body}");
    let message = body["error"].as_str().expect("an error message");
    assert!(message.contains("report.max_cells 200000"), "{message}");
    assert!(message.contains("2000 agents × 4748 periods"), "{message}");
    if let (Some(before), Some(after)) = (before, after) {
        // The report would have taken gigabytes; the refusal takes nothing
        // worth measuring (64 MiB of slack for the rest of the process).
        assert!(
            after < before + 64 * 1024,
            "resident memory jumped from {before} to {after} KiB"
        );
    }

    // The same request from the CLI: exit code 2, the limit named.
    let config = app.dir.path().join("pbx2mqtt.toml").display().to_string();
    let mut args: Vec<String> = [
        "report",
        "summary",
        "--from",
        "2013-01-01",
        "--to",
        "2025-12-31",
        "--by",
        "day",
        "--config",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    args.push(config);
    for id in &ids {
        args.extend(["--agent".to_owned(), id.clone()]);
    }
    let out = pbx2mqtt(args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("over report.max_cells 200000"), "{stderr}");
}

/// A timeline over `report.max_timeline_rows` is a 400 naming the limit over
/// HTTP and exit code 2 in the CLI; at the limit it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_over_its_row_limit_is_refused_over_http_and_in_the_cli() {
    let app = spawn_app(Options {
        agents: 1,
        extra_toml: "[report]\nmax_timeline_rows = 3\n".into(),
        ..Options::default()
    })
    .await;
    let mut sub = app.ready_subscriber().await;
    let event_topic = app.topic(1, "/event");
    // unknown → offline, then three more: at least four intervals today.
    for (available, reason, expected) in [
        (true, "-", "available"),
        (false, "pause", "paused"),
        (true, "-", "available"),
    ] {
        sub.forget();
        app.set(1, available, reason, "idle");
        sub.wait_for(SOON, expected, |m| {
            m.topic == event_topic && m.json()["to"] == expected
        })
        .await;
    }
    let stored = app.history(1).await.len();
    assert!(stored >= 4, "{stored} intervals");

    let client = reqwest::Client::new();
    let url = format!("{}/api/reports/timeline?agent={}", base(&app), app.agent(1));
    let (status, _, body) = get(&client, &url).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["limit"], "report.max_timeline_rows", "{body}");
    assert_eq!(
        body["value"], 4,
        "read one row past the limit, no more: {body}"
    );

    let toml = std::fs::read_to_string(app.dir.path().join("pbx2mqtt.toml")).unwrap();
    let config = app.dir.path().join("cli.toml");
    let run = |toml: String| {
        std::fs::write(&config, toml).unwrap();
        pbx2mqtt(vec![
            "report".into(),
            "timeline".into(),
            "--agent".into(),
            app.agent(1),
            "--config".into(),
            config.display().to_string(),
        ])
    };
    let out = run(toml.clone()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("more than 3 intervals, over report.max_timeline_rows 3"),
        "{stderr}"
    );
    let out = run(toml.replace("max_timeline_rows = 3", "max_timeline_rows = 1000")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes every read of `intervals` slow: the table is renamed and replaced
/// by a view that first counts to a million (a database made slow from
/// outside, as a fault). Undone by [`restore_intervals`].
async fn slow_down_intervals(app: &TestApp) {
    let store = app.store().await;
    for sql in [
        "ALTER TABLE intervals RENAME TO intervals_real",
        // CROSS JOIN keeps the count as the outer loop: it runs on every
        // read, whether or not the agent has rows.
        "CREATE VIEW intervals AS SELECT r.* FROM \
         (WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 1000000) \
          SELECT MAX(n) AS slow FROM c) s CROSS JOIN intervals_real r WHERE s.slow > 0",
    ] {
        store.execute_unchecked(sql).await.expect(sql);
    }
    store.close().await;
}

async fn restore_intervals(app: &TestApp) {
    let store = app.store().await;
    for sql in [
        "DROP VIEW intervals",
        "ALTER TABLE intervals_real RENAME TO intervals",
    ] {
        store.execute_unchecked(sql).await.expect(sql);
    }
    store.close().await;
}

/// A report slower than `report.timeout` is a 504 naming the limit; beyond
/// `report.max_concurrent` reports are refused at once with a 503 and
/// `Retry-After`, and a slot is free again once a report is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reports_time_out_and_extra_ones_are_refused_at_once() {
    let app = spawn_app(Options {
        agents: 1,
        extra_toml: "[report]\ntimeout = \"1s\"\nmax_concurrent = 2\n".into(),
        ..Options::default()
    })
    .await;
    app.ready_subscriber().await;
    app.wait_polls(1).await;
    slow_down_intervals(&app).await;
    // Twenty agents: twenty slow queries, far more than a second.
    let agents: Vec<String> = (1..=20).map(|n| format!("agent{n}")).collect();
    let url = format!(
        "{}/api/reports/timeline?agent={}",
        base(&app),
        agents.join(",")
    );
    let client = reqwest::Client::new();

    let started = Instant::now();
    let (status, _, body) = get(&client, &url).await;
    eprintln!("a slow timeline: {status} after {:?}", started.elapsed());
    assert_eq!(status, reqwest::StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["limit"], "report.timeout", "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|message| message.contains("report.timeout (1 s)")),
        "{body}"
    );

    // Six at once: two run (and time out), four are refused at once.
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..6).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let (status, headers, body) = get(&client, &url).await;
            (status, headers, body, started.elapsed())
        }
    }))
    .await;
    let mut timed_out = 0;
    let mut refused = 0;
    for (status, headers, body, after) in &answers {
        eprintln!("burst: {status} after {after:?}");
        match *status {
            reqwest::StatusCode::GATEWAY_TIMEOUT => timed_out += 1,
            reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert_eq!(body["limit"], "report.max_concurrent", "{body}");
                assert_eq!(
                    headers.get("retry-after").map(|v| v.as_bytes()),
                    Some(&b"1"[..])
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(timed_out <= 2, "at most max_concurrent ran: {timed_out}");
    assert!(refused >= 4, "the others were refused: {refused}");

    // The slots are given back: the next report runs (and times out).
    let (status, _, body) = get(&client, &url).await;
    assert_eq!(status, reqwest::StatusCode::GATEWAY_TIMEOUT, "{body}");
    restore_intervals(&app).await;
    let url = format!("{}/api/reports/timeline?agent={}", base(&app), app.agent(1));
    let (status, _, body) = get(&client, &url).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
}

/// While reports run back to back from several clients, the history writer
/// keeps committing: every transition made during the burst is in the
/// history and its event arrives. Latencies are printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_writer_keeps_committing_while_reports_run() {
    let app = spawn_app(Options {
        agents: 2,
        extra_toml: "[report]\nmax_concurrent = 4\n".into(),
        ..Options::default()
    })
    .await;
    let mut sub = app.ready_subscriber().await;
    // A year of history for 40 more agents, one interval an hour, so the
    // reports have something to read (~350,000 rows).
    let store = app.store().await;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let hour = 3_600_000_i64;
    let loaded = store
        .execute_unchecked(&format!(
            "INSERT INTO intervals (agent, status, started_at, ended_at) \
             WITH RECURSIVE h(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM h WHERE n < 8760), \
             a(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM a WHERE k < 39) \
             SELECT 'load' || k, CASE n % 3 WHEN 0 THEN 'available' WHEN 1 THEN 'on_call' ELSE 'paused' END, \
               {start} + n * {hour}, {start} + (n + 1) * {hour} FROM a, h",
            start = now_ms - 8_761 * hour,
        ))
        .await
        .expect("load history");
    store.close().await;
    eprintln!("loaded {loaded} intervals");

    let stop = tokio_util::sync::CancellationToken::new();
    let load: Vec<_> = (0..6)
        .map(|client_index| {
            let stop = stop.clone();
            let base = base(&app);
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let loads: Vec<String> = (0..40).map(|k| format!("load{k}")).collect();
                let days_ago =
                    |days| (chrono::Utc::now() - chrono::Duration::days(days)).format("%Y-%m-%d");
                let paths = [
                    format!("/api/reports/summary?from={}&by=day", days_ago(360)),
                    format!(
                        "/api/reports/summary?from={}&by=week&agent={}",
                        days_ago(360),
                        loads.join(",")
                    ),
                    format!(
                        "/api/reports/timeline?from={}&agent={}",
                        days_ago(30),
                        loads[..10].join(",")
                    ),
                ];
                let mut counts = std::collections::BTreeMap::<u16, u32>::new();
                let mut n = client_index;
                while !stop.is_cancelled() {
                    let path = &paths[n % paths.len()];
                    n += 1;
                    let status = match client.get(format!("{base}{path}")).send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let _ = response.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    *counts.entry(status).or_default() += 1;
                    if status == 503 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                counts
            })
        })
        .collect();

    let event_topic = app.topic(1, "/event");
    let steps = [(true, "-", "available"), (false, "pause", "paused")];
    let mut latencies = Vec::new();
    let mut seqs = Vec::new();
    for round in 0..20 {
        let (available, reason, expected) = steps[round % 2];
        sub.forget();
        let started = Instant::now();
        app.set(1, available, reason, "idle");
        let event = sub
            .wait_for(SOON, expected, |m| {
                m.topic == event_topic && m.json()["to"] == expected
            })
            .await
            .json();
        latencies.push(started.elapsed());
        seqs.push(event["seq"].as_u64().expect("seq"));
    }
    stop.cancel();
    let mut totals = std::collections::BTreeMap::<u16, u32>::new();
    for task in load {
        for (status, count) in task.await.expect("load task") {
            *totals.entry(status).or_default() += count;
        }
    }
    latencies.sort();
    eprintln!(
        "reports answered during the burst by status: {totals:?}; transition → event latency: \
         min {:?}, median {:?}, max {:?}",
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(
        totals.get(&200).copied().unwrap_or(0) > 0,
        "reports ran: {totals:?}"
    );
    assert!(
        totals.keys().all(|status| [200, 503].contains(status)),
        "only answers or refusals: {totals:?}"
    );
    // Every transition is in the history (the last may still be open).
    let history = app.history(1).await;
    for seq in &seqs {
        assert!(
            history.iter().any(|interval| interval.seq == Some(*seq)),
            "transition seq {seq} is not in the history: {history:?}"
        );
    }
}
