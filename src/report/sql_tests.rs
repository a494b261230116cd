//! The SQL path against the pure reference, on a real SQLite file and, when
//! `PBX2MQTT_TEST_POSTGRES_URL` is set, on PostgreSQL (a fresh database per
//! test): the same histories, the same requests, the same reports.

use chrono::{DateTime, Utc};

use super::period::{from_millis, RangeBound, ReportRange};
use super::summary::{ReportInterval, TimelineInterval};
use super::tests::{
    agent, at, intervals, ms, random_history, settings, Spec, CROSSING_MIDNIGHT, FALL_BACK,
    OPEN_CALL, RESUMED_CALL, SPRING_FORWARD, WEEKS_AND_MONTHS,
};
use super::*;
use crate::store::test_database::{backend_tests, TestDatabase};
use crate::store::{Interval, Store};

const AMSTERDAM: chrono_tz::Tz = chrono_tz::Europe::Amsterdam;
use crate::model::Status;

/// Stores intervals as the history writer would (a resumed one without
/// `seq`), with a reason, extension status and destination for the timeline.
pub(crate) async fn insert(store: &Store, history: &[ReportInterval]) {
    let rows: Vec<Interval> = history
        .iter()
        .enumerate()
        .map(|(index, interval)| {
            let row = timeline_interval(interval);
            Interval {
                agent: row.agent,
                status: row.status,
                reason: row.reason,
                extension_status: row.extension_status,
                destination: row.destination,
                started_at: from_millis(row.started_at_ms),
                ended_at: row.ended_at_ms.map(from_millis),
                seq: (!interval.resumed).then_some(index as u64 + 1),
            }
        })
        .collect();
    store
        .import_intervals(&rows)
        .await
        .unwrap_or_else(|e| panic!("inserting {history:?}: {e}"));
}

/// The timeline view of a report interval (details derived from the status).
pub(crate) fn timeline_interval(interval: &ReportInterval) -> TimelineInterval {
    TimelineInterval {
        agent: interval.agent.clone(),
        status: interval.status,
        reason: match interval.status {
            Status::Paused => Some("pause".to_owned()),
            Status::Unavailable => Some("lunch, \"long\"".to_owned()),
            _ => None,
        },
        extension_status: (interval.status == Status::OnCall).then(|| "called".to_owned()),
        destination: Some(format!("0{}", interval.started_at_ms % 1000)),
        started_at_ms: interval.started_at_ms,
        ended_at_ms: interval.ended_at_ms,
    }
}

/// One request to compare: `(from, to, by, agents, now)`.
type Case<'a> = (&'a str, &'a str, Granularity, &'a [&'a str], &'a str);

/// Runs every case through SQL and through the pure reference and compares
/// the whole reports (summary and, for each case's agents, the timeline):
/// first from the intervals, then again with per-day totals rebuilt from
/// them, so both SQL paths meet the reference.
async fn check(store: &Store, history: &[ReportInterval], cases: &[Case<'_>]) {
    check_cases(store, history, cases, "intervals").await;
    let mut daily = store.clone();
    daily.keep_daily_totals(AMSTERDAM).await.unwrap();
    check_cases(&daily, history, cases, "per-day totals").await;
}

/// [`check`] with the totals kept from the first write on (the store's
/// writes add to them, as the bridge's do), then rebuilt: both agree with
/// the reference.
async fn check_incremental(
    database: &TestDatabase,
    history: &[ReportInterval],
    cases: &[Case<'_>],
) {
    let mut store = database.open().await;
    store.keep_daily_totals(AMSTERDAM).await.unwrap();
    insert(&store, history).await;
    check_cases(&store, history, cases, "per-day totals kept while writing").await;
    store
        .execute_unchecked("DELETE FROM daily_rollup")
        .await
        .unwrap();
    store.keep_daily_totals(AMSTERDAM).await.unwrap();
    check_cases(&store, history, cases, "per-day totals rebuilt").await;
    store.close().await;
}

async fn check_cases(store: &Store, history: &[ReportInterval], cases: &[Case<'_>], path: &str) {
    let settings = settings();
    let details: Vec<TimelineInterval> = history.iter().map(timeline_interval).collect();
    for (from, to, by, agents, now) in cases {
        let now: DateTime<Utc> = at(now);
        let bound = |raw: &str| Some(raw.parse::<RangeBound>().unwrap());
        let range = ReportRange::resolve(bound(from), bound(to), AMSTERDAM, now).unwrap();
        let agents: Vec<AgentId> = agents.iter().map(|id| agent(id)).collect();
        let request = SummaryRequest {
            range,
            by: *by,
            agents: agents.clone(),
        };
        let from_sql = summary(store, &request, &settings, now).await.unwrap();
        let reference = summarize(history, &request, &settings, now).unwrap();
        assert_eq!(
            from_sql,
            reference,
            "{} summary {from}..{to} by {by} for {agents:?} at {now} from {path}",
            store.backend()
        );
        let timeline_agents = if agents.is_empty() {
            vec![agent("agent-0"), agent("agent-1"), agent("alice")]
        } else {
            agents
        };
        let request = TimelineRequest {
            range,
            agents: timeline_agents,
        };
        let from_sql = timeline(store, &request, &settings, now).await.unwrap();
        let reference = timeline_of(&details, &request, &settings, now).unwrap();
        assert_eq!(
            from_sql,
            reference,
            "{} timeline {from}..{to} at {now}",
            store.backend()
        );
    }
}

async fn random_histories_match_the_reference(database: &TestDatabase) {
    let base = ms("2026-03-25T00:00:00+01:00");
    let history = random_history(7, 4, 40, base);
    insert(&database.store, &history).await;
    let middle = from_millis(base + 4 * 86_400_000).to_rfc3339();
    let cases: &[Case] = &[
        (
            "2026-03-24",
            "2026-04-12",
            Granularity::Day,
            &[],
            "2027-01-01T00:00:00Z",
        ),
        (
            "2026-03-24",
            "2026-04-12",
            Granularity::Week,
            &[],
            "2027-01-01T00:00:00Z",
        ),
        (
            "2026-03-01",
            "2026-05-31",
            Granularity::Month,
            &[],
            "2027-01-01T00:00:00Z",
        ),
        (
            "2026-03-26",
            "2026-03-30",
            Granularity::Total,
            &["agent-1"],
            "2027-01-01T00:00:00Z",
        ),
        (
            "2026-03-26",
            "2026-04-02",
            Granularity::Day,
            &["agent-2", "nobody"],
            &middle,
        ),
        (
            "2026-03-27T13:17:00+01:00",
            "2026-03-30T02:00:00Z",
            Granularity::Day,
            &[],
            &middle,
        ),
        (
            "2026-03-29",
            "2026-03-29",
            Granularity::Day,
            &["agent-0"],
            "2026-03-29T12:00:00Z",
        ),
    ];
    check(&database.store, &history, cases).await;
}

async fn hand_computed_histories_match_the_reference(database: &TestDatabase) {
    // Each history under its own agent names, so they do not collide.
    let mut history = Vec::new();
    let histories: [(&str, &[Spec]); 6] = [
        ("midnight", CROSSING_MIDNIGHT),
        ("open", OPEN_CALL),
        ("spring", SPRING_FORWARD),
        ("fall", FALL_BACK),
        ("weeks", WEEKS_AND_MONTHS),
        ("resumed", RESUMED_CALL),
    ];
    for (prefix, specs) in histories {
        for mut interval in intervals(specs) {
            interval.agent = agent(&format!("{prefix}-{}", interval.agent));
            history.push(interval);
        }
    }
    history.sort_by_key(|interval| interval.started_at_ms);
    let cases: &[Case] = &[
        (
            "2026-03-26",
            "2026-04-05",
            Granularity::Day,
            &[],
            "2027-01-01T00:00:00Z",
        ),
        (
            "2026-03-23",
            "2026-04-05",
            Granularity::Week,
            &[],
            "2027-01-01T00:00:00Z",
        ),
        (
            "2026-03-01",
            "2026-11-30",
            Granularity::Month,
            &[],
            "2027-01-01T00:00:00Z",
        ),
        (
            "2026-10-25",
            "2026-10-25",
            Granularity::Day,
            &["fall-alice"],
            "2027-01-01T00:00:00Z",
        ),
        (
            "2026-11-22",
            "2026-11-22",
            Granularity::Day,
            &["open-bob"],
            "2026-11-22T09:30:00+01:00",
        ),
        (
            "2026-06-01",
            "2026-06-01",
            Granularity::Total,
            &["resumed-alice"],
            "2027-01-01T00:00:00Z",
        ),
    ];
    check_incremental(database, &history, cases).await;
}

async fn an_empty_history_lists_configured_and_named_agents(database: &TestDatabase) {
    let now = at("2026-05-05T12:00:00Z");
    let request = SummaryRequest {
        range: ReportRange::resolve(None, None, AMSTERDAM, now).unwrap(),
        by: Granularity::Day,
        agents: Vec::new(),
    };
    let report = summary(&database.store, &request, &settings(), now)
        .await
        .unwrap();
    assert_eq!(report.rows.len(), 1);
    assert_eq!(
        (report.rows[0].agent.as_str(), report.rows[0].recorded_s),
        ("carol", 0.0)
    );
    let request = TimelineRequest {
        range: request.range,
        agents: vec![agent("dave")],
    };
    let report = timeline(&database.store, &request, &settings(), now)
        .await
        .unwrap();
    assert!(report.intervals.is_empty());
}

backend_tests!(
    random_histories_match_the_reference,
    hand_computed_histories_match_the_reference,
    an_empty_history_lists_configured_and_named_agents,
);
