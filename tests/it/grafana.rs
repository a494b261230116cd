//! The Grafana dashboard's SQL works on the real schema: every query of
//! `deploy/grafana/dashboards/pbx2mqtt.json`, with its Grafana macros and
//! variables expanded as Grafana expands them, runs on a fresh PostgreSQL
//! database migrated by the store, over a history with intervals across
//! midnight, a daylight-saving day, a call resumed after a restart, a removed
//! agent and open intervals, and gives the numbers the reports would.

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Europe::Amsterdam;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::PgDatabase;

/// The dashboard, as Grafana provisions it.
const DASHBOARD: &str = include_str!("../../deploy/grafana/dashboards/pbx2mqtt.json");
/// The provisioned data source the dashboard refers to by uid.
const DATASOURCE: &str = include_str!("../../deploy/grafana/provisioning/datasources/pbx2mqtt.yml");
/// The data source uid.
const DATASOURCE_UID: &str = "pbx2mqtt-pg";

/// What Grafana substitutes into a query.
struct Context<'a> {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    agents: &'a [String],
    tz: &'a str,
}

/// `sql` as Grafana sends it to PostgreSQL: template variables first (in
/// the browser), then the macros (in Grafana's PostgreSQL data source).
/// Panics on anything else starting with `$`, so a new macro or variable in
/// the dashboard must be taught here before the test passes.
fn expand(sql: &str, context: &Context) -> String {
    let quoted_agents = context
        .agents
        .iter()
        .map(|agent| format!("'{}'", agent.replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(",");
    let mut sql = sql
        .replace("${agent:singlequote}", &quoted_agents)
        .replace("${tz}", context.tz)
        .replace("$tz", context.tz);
    // Grafana: '2006-01-02T15:04:05Z' (RFC 3339, UTC); $__timeFilter with
    // RFC 3339 nano, which is the same for whole seconds.
    let from = format!("'{}'", context.from.format("%Y-%m-%dT%H:%M:%SZ"));
    let to = format!("'{}'", context.to.format("%Y-%m-%dT%H:%M:%SZ"));
    sql = sql
        .replace("$__timeFrom()", &from)
        .replace("$__timeTo()", &to);
    while let Some(start) = sql.find("$__timeFilter(") {
        let open = start + "$__timeFilter(".len();
        let close = open + sql[open..].find(')').expect("$__timeFilter( is closed");
        let column = sql[open..close].trim().to_owned();
        sql.replace_range(start..=close, &format!("{column} BETWEEN {from} AND {to}"));
    }
    assert!(
        !sql.contains('$'),
        "a Grafana macro or variable this test does not expand:\n{sql}"
    );
    sql
}

/// The dashboard's panels, with their titles, queries and formats.
fn panels() -> Vec<(String, String, String)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["rawSql"].as_str().unwrap().to_owned(),
                target["format"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// The one query of the panel titled `title`.
fn panel_sql(title: &str) -> String {
    let found: Vec<_> = panels()
        .into_iter()
        .filter(|(t, _, _)| t == title)
        .collect();
    assert_eq!(found.len(), 1, "one query in panel {title:?}");
    found[0].1.clone()
}

/// The query of template variable `name`.
fn variable_sql(name: &str) -> String {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let variable = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("variable {name}"));
    variable["query"].as_str().unwrap().to_owned()
}

#[test]
fn grafana_dashboard_uses_the_provisioned_data_source_and_known_macros() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    assert!(
        DATASOURCE.contains(&format!("uid: {DATASOURCE_UID}")),
        "the provisioned data source has uid {DATASOURCE_UID}"
    );
    let mut ids = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        ids.push(panel["id"].as_u64().expect("panel id"));
        assert_eq!(
            panel["datasource"]["uid"], DATASOURCE_UID,
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(
                target["datasource"]["uid"], DATASOURCE_UID,
                "{}",
                panel["title"]
            );
            assert!(
                ["table", "time_series"].contains(&target["format"].as_str().unwrap()),
                "{}",
                panel["title"]
            );
        }
    }
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "panel ids are unique");
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            assert_eq!(variable["datasource"]["uid"], DATASOURCE_UID);
        }
    }
    // Every query expands to plain SQL (the database test runs them).
    let context = Context {
        from: Utc::now() - Duration::days(1),
        to: Utc::now(),
        agents: &["alice".to_owned()],
        tz: "Europe/Amsterdam",
    };
    assert!(panels().len() >= 6, "the dashboard has its panels");
    for (title, sql, _) in panels() {
        let expanded = expand(&sql, &context);
        assert!(
            expanded.contains("'alice'"),
            "{title} filters by the agent variable"
        );
    }
}

/// A local time in Europe/Amsterdam.
fn local(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> DateTime<Utc> {
    Amsterdam
        .with_ymd_and_hms(y, m, d, h, min, s)
        .single()
        .expect("an unambiguous local time")
        .with_timezone(&Utc)
}

async fn insert(
    pool: &PgPool,
    agent: &str,
    status: &str,
    started: DateTime<Utc>,
    ended: Option<DateTime<Utc>>,
    seq: Option<i64>,
) {
    sqlx::query(
        "INSERT INTO intervals (agent, status, started_at, ended_at, seq) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(agent)
    .bind(status)
    .bind(started.timestamp_millis())
    .bind(ended.map(|at| at.timestamp_millis()))
    .bind(seq)
    .execute(pool)
    .await
    .unwrap();
}

/// Runs `sql` and returns its rows as JSON objects (numeric and timestamp
/// columns alike), in the query's order.
async fn rows(pool: &PgPool, sql: &str) -> Vec<Value> {
    let wrapped = format!("SELECT row_to_json(q)::text AS row FROM (\n{sql}\n) q");
    let texts: Vec<String> = sqlx::query_scalar(&wrapped)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("query failed: {e}\n{sql}"));
    texts
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect()
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a timestamp"))
        .expect("an RFC 3339 timestamp")
        .with_timezone(&Utc)
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("a number, got {value}"))
}

fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual} is not {expected} (±{tolerance})"
    );
}

/// The row whose `key` columns equal `values`.
fn row<'a>(rows: &'a [Value], key: &[(&str, Value)]) -> &'a Value {
    rows.iter()
        .find(|row| key.iter().all(|(column, value)| &row[*column] == value))
        .unwrap_or_else(|| panic!("no row {key:?} in {rows:#?}"))
}

/// `time_series` rows as (time, metric, value).
fn series(rows: &[Value]) -> Vec<(DateTime<Utc>, String, f64)> {
    rows.iter()
        .map(|row| {
            (
                time(&row["time"]),
                row["metric"].as_str().unwrap().to_owned(),
                number(&row["value"]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_postgres),
    ignore = "set PBX2MQTT_TEST_POSTGRES_URL to run (the Grafana SQL needs PostgreSQL)"
)]
async fn grafana_panels_give_the_report_numbers_on_postgres() {
    // A fresh database, migrated by the store as the bridge would.
    let database = PgDatabase::create("pbx2mqtt_grafana").await;
    let store = pbx2mqtt::store::Store::open(&database.url).await.unwrap();
    store.close().await;
    let pool = PgPool::connect(&database.url).await.unwrap();

    check_fixed_days(&pool).await;
    check_open_intervals_up_to_now(&pool).await;

    pool.close().await;
    database.drop_database().await;
}

/// 2026-03-28 (24 h) and 2026-03-29 (23 h: clocks go forward at 02:00) in
/// Europe/Amsterdam. alice works across midnight, takes a call, pauses, the
/// bridge is down for a minute (a resumed call is not a new call), then goes
/// offline (still open). carol was removed from the configuration: her last
/// interval is closed and nothing follows it. bob's history is elsewhere.
async fn check_fixed_days(pool: &PgPool) {
    let d1 = local(2026, 3, 28, 0, 0, 0);
    let d2 = local(2026, 3, 29, 0, 0, 0);
    let d3 = local(2026, 3, 30, 0, 0, 0);
    assert_eq!((d3 - d2).num_seconds(), 82_800, "the spring-forward day");
    let alice = [
        ("available", local(2026, 3, 28, 22, 0, 0), Some(1)),
        ("ringing", local(2026, 3, 29, 0, 30, 0), Some(2)),
        ("on_call", local(2026, 3, 29, 0, 30, 10), Some(3)),
        ("wrapup", local(2026, 3, 29, 0, 40, 10), Some(4)),
        ("paused", local(2026, 3, 29, 0, 45, 0), Some(5)),
        ("unknown", local(2026, 3, 29, 1, 15, 0), None),
        ("on_call", local(2026, 3, 29, 1, 16, 0), None),
        ("offline", local(2026, 3, 29, 1, 20, 0), Some(6)),
    ];
    for (index, (status, started, seq)) in alice.iter().enumerate() {
        let ended = alice.get(index + 1).map(|next| next.1);
        insert(pool, "alice", status, *started, ended, *seq).await;
    }
    let carol_start = local(2026, 3, 28, 10, 0, 0);
    let carol_end = local(2026, 3, 28, 11, 0, 0);
    insert(
        pool,
        "carol",
        "available",
        carol_start,
        Some(carol_end),
        Some(7),
    )
    .await;
    // bob is on a call now (the other check looks at it).
    let today = Utc::now().with_timezone(&Amsterdam).date_naive();
    let today_start = local_midnight(today);
    insert(
        pool,
        "bob",
        "on_call",
        today_start - Duration::hours(1),
        None,
        Some(8),
    )
    .await;

    // The agent variable lists every agent with history.
    let agents: Vec<String> = rows(pool, &variable_sql("agent"))
        .await
        .iter()
        .map(|row| {
            row.as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(agents, ["alice", "bob", "carol"]);

    let context = Context {
        from: d1,
        to: d3,
        agents: &agents,
        tz: "Europe/Amsterdam",
    };
    let run = |title: &str| {
        let sql = expand(&panel_sql(title), &context);
        async move { rows(pool, &sql).await }
    };

    // Status timeline: a point per change, -1 where history stops (carol's
    // end; alice's open interval runs past the range, so at its end).
    let mut timeline = series(&run("Status timeline").await);
    timeline.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
    let expected: Vec<(DateTime<Utc>, String, f64)> = [
        (local(2026, 3, 28, 22, 0, 0), "alice", 4.0),
        (local(2026, 3, 29, 0, 30, 0), "alice", 5.0),
        (local(2026, 3, 29, 0, 30, 10), "alice", 6.0),
        (local(2026, 3, 29, 0, 40, 10), "alice", 7.0),
        (local(2026, 3, 29, 0, 45, 0), "alice", 1.0),
        (local(2026, 3, 29, 1, 15, 0), "alice", 8.0),
        (local(2026, 3, 29, 1, 16, 0), "alice", 6.0),
        (local(2026, 3, 29, 1, 20, 0), "alice", 0.0),
        (d3, "alice", -1.0),
        (carol_start, "carol", 4.0),
        (carol_end, "carol", -1.0),
    ]
    .into_iter()
    .map(|(at, agent, code)| (at, agent.to_owned(), code))
    .collect();
    assert_eq!(timeline, expected);

    // Hours per day and status (offline left out), split at midnight: alice's
    // 22:00-00:30 is 2 h on the 28th and 0.5 h on the 29th.
    let status = series(&run("Time in status per day").await);
    let hours = |day: DateTime<Utc>, name: &str| {
        status
            .iter()
            .find(|(at, metric, _)| *at == day && metric == name)
            .map(|(_, _, value)| *value)
            .unwrap_or_else(|| panic!("no {name} on {day} in {status:?}"))
    };
    assert_close(
        hours(d1, "available"),
        3.0,
        1e-9,
        "28th available (alice 2 h + carol 1 h)",
    );
    assert_close(hours(d2, "available"), 0.5, 1e-9, "29th available");
    assert_close(hours(d2, "ringing"), 10.0 / 3600.0, 1e-9, "29th ringing");
    assert_close(
        hours(d2, "on_call"),
        840.0 / 3600.0,
        1e-9,
        "29th on_call (with the resumed call)",
    );
    assert_close(hours(d2, "wrapup"), 290.0 / 3600.0, 1e-9, "29th wrapup");
    assert_close(hours(d2, "paused"), 0.5, 1e-9, "29th paused");
    assert_close(hours(d2, "unknown"), 60.0 / 3600.0, 1e-9, "29th unknown");
    assert!(status.iter().all(|(_, metric, _)| metric != "offline"));
    assert_eq!(status.len(), 7, "{status:?}");

    // The same in UTC: alice's 21:00Z-23:30Z is all on the 28th.
    let utc = Context {
        tz: "UTC",
        ..context
    };
    let status_utc = series(&rows(pool, &expand(&panel_sql("Time in status per day"), &utc)).await);
    let utc_28 = Utc.with_ymd_and_hms(2026, 3, 28, 0, 0, 0).unwrap();
    let available_28 = status_utc
        .iter()
        .find(|(at, metric, _)| *at == utc_28 && metric == "available")
        .unwrap();
    assert_close(
        available_28.2,
        3.5,
        1e-9,
        "28th UTC available (alice 2.5 h + carol 1 h)",
    );

    // One call (the resumed on_call is not a new one): 600 s, handle time
    // 600 + 290 s of wrap-up.
    let calls = run("Calls per day and average handle time").await;
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(time(&calls[0]["time"]), d2);
    assert_close(number(&calls[0]["calls"]), 1.0, 0.0, "calls");
    assert_close(
        number(&calls[0]["average call"]),
        600.0,
        1e-9,
        "average call",
    );
    assert_close(
        number(&calls[0]["average handle time"]),
        890.0,
        1e-9,
        "average handle time",
    );

    // Occupancy: alice (10 + 840 + 290) / (7200 + 4740 - 1800); carol never
    // handled anything.
    let occupancy = run("Occupancy per agent").await;
    assert_eq!(occupancy.len(), 2, "{occupancy:#?}");
    let alice_occupancy = number(&row(&occupancy, &[("agent", "alice".into())])["occupancy"]);
    assert_close(alice_occupancy, 1140.0 / 10140.0, 1e-9, "alice's occupancy");
    let carol_occupancy = number(&row(&occupancy, &[("agent", "carol".into())])["occupancy"]);
    assert_close(carol_occupancy, 0.0, 0.0, "carol's occupancy");

    // Now: alice offline, bob on a call, carol nowhere.
    let now = run("Agents by status now").await;
    assert_eq!(now.len(), 1);
    for (name, count) in [
        ("offline", 1.0),
        ("on_call", 1.0),
        ("available", 0.0),
        ("unknown", 0.0),
    ] {
        assert_close(number(&now[0][name]), count, 0.0, name);
    }

    // Longest calls: only alice's real call.
    let longest = run("Longest calls").await;
    assert_eq!(longest.len(), 1, "{longest:#?}");
    assert_eq!(longest[0]["agent"], "alice");
    assert_close(number(&longest[0]["duration"]), 600.0, 1e-9, "longest call");
    assert_eq!(time(&longest[0]["started"]), local(2026, 3, 29, 0, 30, 10));

    // The whole-history views agree, and a day adds up to its 23 hours.
    let day: Vec<Value> = rows(
        pool,
        "SELECT status, seconds FROM pbx2mqtt_status_seconds_daily \
         WHERE agent = 'alice' AND day = DATE '2026-03-29'",
    )
    .await;
    let total: f64 = day.iter().map(|r| number(&r["seconds"])).sum();
    assert_close(total, 82_800.0, 1e-6, "alice's 29th adds up to 23 h");
    assert_close(
        number(&row(&day, &[("status", "offline".into())])["seconds"]),
        78_000.0,
        1e-6,
        "offline from 01:20 to midnight",
    );
    let calls_view = rows(
        pool,
        "SELECT calls, average_call_s, longest_call_s FROM pbx2mqtt_calls_daily WHERE agent = 'alice'",
    )
    .await;
    assert_eq!(calls_view.len(), 1);
    assert_close(number(&calls_view[0]["calls"]), 1.0, 0.0, "calls view");
    assert_close(
        number(&calls_view[0]["longest_call_s"]),
        600.0,
        1e-9,
        "longest call view",
    );
    let occupancy_view = rows(
        pool,
        "SELECT occupancy FROM pbx2mqtt_occupancy_daily WHERE agent = 'alice' AND day = DATE '2026-03-29'",
    )
    .await;
    // (10 + 840 + 290) / (4740 - 1800), rounded to four decimals.
    assert_close(
        number(&occupancy_view[0]["occupancy"]),
        0.3878,
        1e-12,
        "occupancy view",
    );
}

/// bob has been on a call since an hour before today's local midnight: his
/// open interval is split at midnight and counts up to now.
async fn check_open_intervals_up_to_now(pool: &PgPool) {
    let before = Utc::now();
    let today = before.with_timezone(&Amsterdam).date_naive();
    let today_start = local_midnight(today);
    let yesterday_start = local_midnight(today.pred_opt().unwrap());
    let tomorrow_start = local_midnight(today.succ_opt().unwrap());
    let call_start = today_start - Duration::hours(1);
    let agents = ["bob".to_owned()];
    let context = Context {
        from: yesterday_start,
        to: tomorrow_start,
        agents: &agents,
        tz: "Europe/Amsterdam",
    };
    let run = |title: &str| {
        let sql = expand(&panel_sql(title), &context);
        async move { rows(pool, &sql).await }
    };
    let timeline = series(&run("Status timeline").await);
    let status = series(&run("Time in status per day").await);
    let calls = run("Calls per day and average handle time").await;
    let occupancy = run("Occupancy per agent").await;
    let longest = run("Longest calls").await;
    let after = Utc::now();
    let seconds =
        |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_milliseconds() as f64 / 1000.0;
    // Anything "up to now" lies between these.
    let (low, high) = (
        seconds(today_start, before) - 1.0,
        seconds(today_start, after) + 1.0,
    );
    let within = |value: f64, offset: f64, what: &str| {
        assert!(
            value >= low + offset && value <= high + offset,
            "{what}: {value} is not in [{}, {}]",
            low + offset,
            high + offset
        );
    };

    assert_eq!(timeline.len(), 2, "{timeline:?}");
    assert_eq!(timeline[0], (call_start, "bob".to_owned(), 6.0));
    assert_eq!((timeline[1].1.as_str(), timeline[1].2), ("bob", -1.0));
    within(
        seconds(today_start, timeline[1].0),
        0.0,
        "the timeline stops at now",
    );

    let on_call = |day: DateTime<Utc>| {
        status
            .iter()
            .find(|(at, metric, _)| *at == day && metric == "on_call")
            .unwrap_or_else(|| panic!("no on_call on {day}: {status:?}"))
            .2
    };
    assert_close(
        on_call(yesterday_start),
        1.0,
        1e-9,
        "yesterday's hour of the call",
    );
    within(
        on_call(today_start) * 3600.0,
        0.0,
        "today's part of the call",
    );

    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(
        time(&calls[0]["time"]),
        yesterday_start,
        "counted on the day it started"
    );
    within(
        number(&calls[0]["average call"]),
        3600.0,
        "the open call's duration",
    );

    assert_eq!(occupancy.len(), 1);
    assert_close(
        number(&occupancy[0]["occupancy"]),
        1.0,
        1e-9,
        "bob only handles",
    );

    assert_eq!(longest.len(), 1);
    within(
        number(&longest[0]["duration"]),
        3600.0,
        "the open call in longest calls",
    );
}

/// Local midnight of `day` in Europe/Amsterdam, in UTC.
fn local_midnight(day: chrono::NaiveDate) -> DateTime<Utc> {
    Amsterdam
        .from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap())
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}
