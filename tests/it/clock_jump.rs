//! The wall clock stepped back 10 minutes under a running bridge, and a
//! bridge started while the clock is behind its history, with libfaketime
//! (Debian's `libfaketime`) on the real binary: intervals never overlap, never
//! go negative, never start in the future, and events' `at` never go back.
//!
//! Only the wall clock jumps (`DONT_FAKE_MONOTONIC=1`): timers, as on a
//! real host whose NTP steps the clock, keep running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::helpers::{prepare_app, Options, TestApp, SOON};
use crate::mqtt_client::TestClient;
use crate::process::BridgeProcess;

/// Where Debian puts the multi-threaded libfaketime.
const LIBFAKETIME: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
];

fn libfaketime() -> Option<PathBuf> {
    LIBFAKETIME.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The bridge under libfaketime, its offset read from `offset_file`.
fn start_faked(app: &TestApp, id: &str, library: &Path, offset_file: &Path) -> BridgeProcess {
    let config = app.dir.path().join("pbx2mqtt.toml");
    BridgeProcess::start(
        id,
        &config,
        app.dir.path(),
        &[
            ("LD_PRELOAD", library.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", offset_file.display().to_string()),
            ("FAKETIME_CACHE_DURATION", "0".to_owned()),
            ("FAKETIME_NO_CACHE", "1".to_owned()),
            ("DONT_FAKE_MONOTONIC", "1".to_owned()),
            (
                "PBX2MQTT_MQTT__CLIENT_ID",
                format!("clock-{id}-{}", app.base.len()),
            ),
        ],
    )
}

/// Flips agent 1 between available and paused `times` times, waiting for
/// each event; returns the events' `at`.
async fn transitions(app: &TestApp, sub: &mut TestClient, times: usize) -> Vec<DateTime<Utc>> {
    let topic = app.topic(1, "/event");
    let mut stamps = Vec::new();
    for round in 0..times {
        let (available, reason, to) = if round % 2 == 0 {
            (true, "", "available")
        } else {
            (false, "pause", "paused")
        };
        app.set(1, available, reason, "idle");
        let last = sub
            .seen
            .iter()
            .filter(|m| m.topic == topic)
            .filter_map(|m| m.json()["seq"].as_u64())
            .max()
            .unwrap_or(0);
        let event = sub
            .wait_for(SOON, &format!("event to {to}"), |m| {
                m.topic == topic && m.json()["to"] == to && m.json()["seq"].as_u64() > Some(last)
            })
            .await;
        let at = event.json()["at"]
            .as_str()
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            .expect("an event's `at` is RFC 3339")
            .with_timezone(&Utc);
        stamps.push(at);
    }
    stamps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_faketime),
    ignore = "needs libfaketime (Debian: apt-get install libfaketime; CI installs it); the monotonic clock is also covered by unit tests in src/clock.rs and src/store/rows.rs"
)]
async fn a_clock_stepped_back_never_makes_intervals_overlap() {
    let library =
        libfaketime().expect("libfaketime is not installed (Debian: apt-get install libfaketime)");
    let app = prepare_app(Options::default()).await;
    let offset = app.dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").expect("write the faketime offset");
    let mut sub = app.subscriber().await;

    // 1. Running, then the clock steps back 10 minutes, then forward again.
    let bridge = start_faked(&app, "clock-a", &library, &offset);
    let state = format!("{}/bridge/state", app.base);
    sub.wait_for(SOON, "bridge online", |m| {
        m.topic == state && m.text() == "online"
    })
    .await;
    let mut stamps = transitions(&app, &mut sub, 4).await;
    std::fs::write(&offset, "-10m\n").expect("step the clock back");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stamps.extend(transitions(&app, &mut sub, 4).await);
    std::fs::write(&offset, "+0\n").expect("set the clock right");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stamps.extend(transitions(&app, &mut sub, 2).await);
    let logs = bridge.stop(SOON).await;
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "events' `at` went back: {stamps:?}"
    );

    // 2. Started while the clock is 10 minutes behind its own history.
    std::fs::write(&offset, "-10m\n").expect("step the clock back");
    sub.forget_into_seen();
    sub.seen.clear();
    let bridge = start_faked(&app, "clock-b", &library, &offset);
    sub.wait_for(SOON, "bridge online again", |m| {
        m.topic == state && m.text() == "online"
    })
    .await;
    let more = transitions(&app, &mut sub, 3).await;
    let logs_b = bridge.stop(SOON).await;
    assert!(
        logs_b.contains("the system clock is behind the stored history"),
        "a clock behind history is logged:\n{logs_b}"
    );
    assert!(
        more.iter().all(|at| *at >= stamps[stamps.len() - 1]),
        "events after the restart dated before earlier ones: {more:?} < {stamps:?}"
    );

    // History: per agent, intervals in order, none negative, none
    // overlapping, none in the future; every one closed by the clean stop.
    let real_now = Utc::now() + chrono::Duration::seconds(1);
    for n in 1..=Options::default().agents {
        let history = app.history(n).await;
        assert!(!history.is_empty(), "agent {n} has history");
        for interval in &history {
            let ended = interval.ended_at.expect("closed at the clean stop");
            assert!(ended >= interval.started_at, "negative: {interval:?}");
            assert!(ended <= real_now, "in the future: {interval:?}");
        }
        for pair in history.windows(2) {
            assert_eq!(
                pair[0].ended_at,
                Some(pair[1].started_at),
                "agent {n}: intervals overlap or leave a hole:\n{pair:#?}\n{logs}"
            );
        }
    }
    let agent1 = app.history(1).await;
    assert!(
        agent1.iter().filter(|i| i.seq.is_some()).count() >= 10,
        "every transition recorded: {agent1:#?}"
    );
}
