//! The fault suite: every network fault of the [`FaultProxy`] on every link
//! the bridge has (the broker, Belfabriek, TRiNG, PostgreSQL), one test per
//! link. Each fault holds for a moment while agents change; then the link
//! heals and the bridge must have lost nothing: every transition in history
//! once, intervals contiguous, every event delivered (at least once) to a
//! subscriber on the real broker, every command answered. Beside them: kill
//! -9 of the bridge at random moments of a storm, a PostgreSQL restart as the
//! bridge sees it (every connection reset, new ones refused for a while), and
//! a full disk (a small tmpfs; root only, skipped elsewhere).

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::fault_proxy::{Fault, FaultProxy};
use crate::helpers::{broker_url, prepare_app, Options, PgDatabase, TestApp, SOON};
use crate::mqtt_client::TestClient;

/// Every fault the proxy makes.
const FAULTS: [Fault; 7] = [
    Fault::Delay(Duration::from_millis(300)),
    Fault::Drop,
    Fault::Blackhole,
    Fault::Reset,
    Fault::HalfOpen,
    Fault::Trickle { bytes_per_sec: 200 },
    Fault::RefuseNew,
];

/// How long each fault holds.
const HOLD: Duration = Duration::from_millis(1500);

/// How long the bridge may take to catch up once a link heals (a dead
/// connection is noticed by the MQTT keep-alive, 5 s here).
const CATCH_UP: Duration = Duration::from_secs(40);

/// The socket address of `scheme://host:port/...` (port required).
fn address_of(url: &str) -> SocketAddr {
    let parsed = url::Url::parse(url).expect("a URL");
    let host = parsed.host_str().expect("a host");
    let port = parsed.port().expect("a port in the test URL");
    (host, port)
        .to_socket_addrs()
        .expect("resolve the host")
        .next()
        .expect("an address")
}

/// `url` with its `host:port` replaced by the proxy's.
fn through(url: &str, upstream: SocketAddr, proxy: &FaultProxy) -> String {
    let replaced = url.replacen(&upstream.to_string(), &proxy.addr().to_string(), 1);
    assert_ne!(replaced, url, "{url} does not name {upstream}");
    replaced
}

/// A subscriber on the real broker (never through the proxy).
async fn direct_subscriber(app: &TestApp) -> TestClient {
    TestClient::connect(&broker_url(), &[format!("{}/#", app.base)]).await
}

/// Moves agent `n` to the next status of a cycle; `round` picks it.
fn flip(app: &TestApp, n: u32, round: usize) {
    match round % 3 {
        0 => app.set(n, true, "", "idle"),
        1 => app.set(n, true, "", "called"),
        _ => app.set(n, false, "pause", "idle"),
    }
}

/// Agents change while `fault` holds on `proxy`, then the link heals.
async fn hold(app: &TestApp, proxy: &FaultProxy, fault: Fault, round: &mut usize) {
    proxy.set(fault);
    let until = Instant::now() + HOLD;
    while Instant::now() < until {
        for n in 1..=Options::default().agents {
            flip(app, n, *round + n as usize);
        }
        *round += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    proxy.set(Fault::Pass);
}

/// The seqs of every transition in history (per agent contiguous), and
/// whether every agent's latest interval is `status`.
async fn history_seqs(app: &TestApp, status: &str) -> (BTreeSet<u64>, bool) {
    let mut seqs = BTreeSet::new();
    let mut all_in = true;
    for n in 1..=Options::default().agents {
        let history = app.history(n).await;
        all_in &= history
            .last()
            .is_some_and(|interval| interval.status.as_str() == status);
        for pair in history.windows(2) {
            assert_eq!(
                pair[0].ended_at,
                Some(pair[1].started_at),
                "agent {n}: intervals overlap or leave a hole: {pair:#?}"
            );
        }
        for seq in history.iter().filter_map(|interval| interval.seq) {
            assert!(seqs.insert(seq), "seq {seq} twice in history");
        }
    }
    (seqs, all_in)
}

/// Waits until the subscriber saw an event for every transition in history
/// and every agent's retained state is the simulator's; the seqs.
async fn assert_nothing_lost(app: &TestApp, sub: &mut TestClient, link: &str) -> BTreeSet<u64> {
    // Settle: every agent in a known status, then wait for the bridge.
    for n in 1..=Options::default().agents {
        app.set(n, true, "", "called");
    }
    let deadline = Instant::now() + CATCH_UP;
    loop {
        sub.forget_into_seen();
        let (seqs, recorded) = history_seqs(app, "on_call").await;
        let seen: BTreeSet<u64> = sub
            .seen
            .iter()
            .filter(|m| m.topic.ends_with("/event"))
            .filter_map(|m| m.json()["seq"].as_u64())
            .collect();
        let missing: Vec<u64> = seqs.difference(&seen).copied().collect();
        let settled = (1..=Options::default().agents).all(|n| {
            let topic = app.topic(n, "");
            sub.seen
                .iter()
                .rev()
                .find(|m| m.topic == topic)
                .is_some_and(|m| m.json()["status"] == "on_call")
        });
        if missing.is_empty() && settled && recorded {
            return seqs;
        }
        assert!(
            Instant::now() < deadline,
            "{link}: events never delivered for seqs {missing:?} (state settled: {settled}, \
             history settled: {recorded})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Dense: no seq skipped between the first and the last.
fn assert_dense(seqs: &BTreeSet<u64>, link: &str) {
    if let (Some(first), Some(last)) = (seqs.first(), seqs.last()) {
        assert_eq!(
            seqs.len() as u64,
            last - first + 1,
            "{link}: seqs not dense: {seqs:?}"
        );
    }
}

/// A short graceful stop, whatever a fault left behind.
fn short_shutdown() -> String {
    "[bridge]\nshutdown_timeout = \"5s\"\n".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_mqtt),
    ignore = "needs a real broker (set PBX2MQTT_TEST_MQTT_URL; CI does): through the embedded broker the delayed link's events are not delivered, with Mosquitto they are (not yet explained)"
)]
async fn broker_link_faults_lose_no_event() {
    let upstream = address_of(&broker_url());
    let proxy = FaultProxy::start(upstream).await;
    let mut app = prepare_app(Options {
        broker_url: Some(through(&broker_url(), upstream, &proxy)),
        extra_toml: short_shutdown(),
        ..Options::default()
    })
    .await;
    app.config.mqtt.keep_alive = Duration::from_secs(5);
    let mut sub = direct_subscriber(&app).await;
    app.start_bridge().await;
    let mut round = 0;
    for fault in FAULTS {
        hold(&app, &proxy, fault, &mut round).await;
        assert_nothing_lost(&app, &mut sub, &format!("broker link, {fault:?}")).await;
    }
    let seqs = assert_nothing_lost(&app, &mut sub, "broker link").await;
    assert_dense(&seqs, "broker link");
    app.stop_bridge().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn belfabriek_link_faults_end_in_unknown_or_nothing_and_recover() {
    let mut app = prepare_app(Options::default()).await;
    let upstream = app.simulator.addr();
    let proxy = FaultProxy::start(upstream).await;
    app.config.belfabriek.url = through(&app.simulator.belfabriek_url(), upstream, &proxy);
    let mut sub = direct_subscriber(&app).await;
    app.start_bridge().await;
    let mut round = 0;
    for fault in FAULTS {
        hold(&app, &proxy, fault, &mut round).await;
        assert_nothing_lost(&app, &mut sub, &format!("belfabriek link, {fault:?}")).await;
    }
    // Failed polls were counted, and every failure became `unknown` (never
    // a made-up status): the only statuses in history are real ones.
    assert!(app.counter(|m| &m.polls_failed) > 0, "polls failed");
    for n in 1..=Options::default().agents {
        for interval in app.history(n).await {
            let status = interval.status.as_str();
            assert!(
                ["available", "on_call", "paused", "unknown"].contains(&status),
                "agent {n}: {status}"
            );
        }
    }
    let seqs = assert_nothing_lost(&app, &mut sub, "belfabriek link").await;
    assert_dense(&seqs, "belfabriek link");
    app.stop_bridge().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tring_link_faults_answer_every_command() {
    let mut app = prepare_app(Options::default()).await;
    let upstream = app.simulator.addr();
    let proxy = FaultProxy::start(upstream).await;
    app.config.tring.url = through(&app.simulator.tring_url(), upstream, &proxy);
    let mut sub = direct_subscriber(&app).await;
    app.start_bridge().await;
    let online = format!("{}/bridge/state", app.base);
    sub.wait_for(SOON, "bridge online", |m| {
        m.topic == online && m.text() == "online"
    })
    .await;
    let request = format!("{}/request/queue/500/list", app.base);
    let response = format!("{}/response/queue/500/list", app.base);
    for (i, fault) in FAULTS.into_iter().chain([Fault::Pass]).enumerate() {
        proxy.set(fault);
        let transaction = format!("fault-{i}");
        sub.publish(
            &request,
            format!(r#"{{"transaction":"{transaction}"}}"#),
            false,
        )
        .await;
        // tring.timeout is 1 s: an answer comes, whatever the link does.
        let answer = sub
            .wait_for(
                Duration::from_secs(15),
                &format!("answer under {fault:?}"),
                |m| m.topic == response && m.json()["transaction"] == transaction.as_str(),
            )
            .await
            .json();
        eprintln!("tring link, {fault:?}: {answer}");
        if fault == Fault::Pass || matches!(fault, Fault::Delay(_)) {
            assert_eq!(answer["status"], "ok", "{fault:?}: {answer}");
        } else if answer["status"] != "ok" {
            let code = answer["code"].as_str().unwrap_or_default();
            assert!(
                ["upstream_timeout", "upstream_error"].contains(&code),
                "{fault:?}: a precise error code: {answer}"
            );
        }
        let text = serde_json::to_string(&answer).unwrap_or_default();
        assert!(
            !text.contains(crate::helpers::TEST_KEY),
            "the key leaked: {text}"
        );
        proxy.set(Fault::Pass);
    }
    app.stop_bridge().await;
}

#[cfg_attr(not(pbx2mqtt_postgres), ignore = "needs PBX2MQTT_TEST_POSTGRES_URL")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_link_faults_lose_no_transition() {
    let database = PgDatabase::create("faults").await;
    let upstream = address_of(&database.url);
    let proxy = FaultProxy::start(upstream).await;
    let mut app = prepare_app(Options::default()).await;
    app.database_url = database.url.clone();
    app.config.database.url = through(&database.url, upstream, &proxy);
    let mut sub = direct_subscriber(&app).await;
    app.start_bridge().await;
    let mut round = 0;
    for fault in FAULTS {
        hold(&app, &proxy, fault, &mut round).await;
        assert_nothing_lost(&app, &mut sub, &format!("postgres link, {fault:?}")).await;
    }
    // A server restart as the bridge sees it, during a storm: every
    // connection reset (uncommitted work lost), new ones refused while the
    // server starts, then accepted again.
    let stop = tokio_util::sync::CancellationToken::new();
    let storm = storm(&app, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set(Fault::RefuseNew);
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set(Fault::Pass);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    storm.await.expect("the storm task");
    let seqs = assert_nothing_lost(&app, &mut sub, "postgres link").await;
    assert_dense(&seqs, "postgres link");
    app.stop_bridge().await;
    database.drop_database().await;
}

/// Agents change every few milliseconds until `stop` is cancelled.
fn storm(app: &TestApp, stop: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
    let simulator = app.simulator.clone();
    let agents: Vec<String> = (1..=Options::default().agents)
        .map(|n| app.ext(n))
        .collect();
    tokio::spawn(async move {
        let mut round = 0usize;
        while !stop.is_cancelled() {
            for (i, ext) in agents.iter().enumerate() {
                let (available, reason, extension_status) = match (round + i) % 3 {
                    0 => (true, "", "idle"),
                    1 => (true, "", "called"),
                    _ => (false, "pause", "idle"),
                };
                let _ = simulator.set_agent(
                    ext,
                    pbx2mqtt::simulator::VirtualState {
                        available,
                        reason: reason.into(),
                        destination: None,
                        extension_status: extension_status.into(),
                    },
                );
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(70)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_of_a_storm_loses_nothing() {
    use rand::Rng;
    let app = prepare_app(Options {
        poll_interval: "100ms",
        ..Options::default()
    })
    .await;
    let mut sub = direct_subscriber(&app).await;
    let config = app.dir.path().join("pbx2mqtt.toml");
    let stop = tokio_util::sync::CancellationToken::new();
    let storm = storm(&app, stop.clone());
    let kills = 8;
    // Each run under another `bridge.id` (a host renamed, a container
    // recreated): on SQLite the next bridge still resends what the killed
    // one left unacknowledged.
    for round in 0..kills {
        let bridge = crate::process::BridgeProcess::start(
            &format!("kill-{round}"),
            &config,
            app.dir.path(),
            &[],
        );
        let lived = Duration::from_millis(rand::thread_rng().gen_range(300..2000));
        tokio::time::sleep(lived).await;
        bridge.signal("-KILL");
        eprintln!("kill -9 after {lived:?}");
        drop(bridge);
    }
    stop.cancel();
    storm.await.expect("the storm task");
    // A last clean run delivers what the killed ones could not.
    let mut app = app;
    app.start_bridge().await;
    let seqs = assert_nothing_lost(&app, &mut sub, "kill -9 loop").await;
    app.stop_bridge().await;
    assert_dense(&seqs, "kill -9 loop");
    assert!(
        seqs.len() > kills,
        "the storm made transitions: {}",
        seqs.len()
    );
    for n in 1..=Options::default().agents {
        let history = app.history(n).await;
        for pair in history.windows(2) {
            assert!(
                !(pair[0].status == pair[1].status && pair[1].seq.is_some()),
                "agent {n}: a transition to the status it was in (a duplicate): {pair:#?}"
            );
        }
        assert!(
            history.iter().all(|interval| interval.ended_at.is_some()),
            "agent {n}: open interval after a clean stop"
        );
    }
}

/// A tmpfs of `size` mounted on a fresh directory; `None` (with the reason)
/// where mounting is not allowed (not root, no tmpfs).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    /// Fills the file system with `filler` until it is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let chunk = vec![0u8; 64 * 1024];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
        // What is left is smaller than a chunk: fill it byte-wise.
        while file
            .write_all(&chunk[..512])
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_root),
    ignore = "needs root, to mount a small tmpfs (CI runs as root)"
)]
async fn a_full_disk_pauses_history_not_the_bridge_and_loses_nothing() {
    let tmpfs =
        Tmpfs::mount("8m").unwrap_or_else(|why| panic!("a full disk needs a small tmpfs: {why}"));
    let mut app = prepare_app(Options::default()).await;
    let url = format!("sqlite://{}", tmpfs.dir.path().join("history.db").display());
    app.database_url = url.clone();
    app.config.database.url = url;
    let mut sub = direct_subscriber(&app).await;
    app.start_bridge().await;
    let mut round = 0;
    for _ in 0..3 {
        for n in 1..=Options::default().agents {
            flip(&app, n, round + n as usize);
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_nothing_lost(&app, &mut sub, "before the disk is full").await;

    let filler = tmpfs.fill();
    let http = app.http.expect("the bridge's HTTP address");
    let polls_before = app.counter(|m| &m.polls_ok);
    let deadline = Instant::now() + CATCH_UP;
    let readyz = loop {
        for n in 1..=Options::default().agents {
            flip(&app, n, round + n as usize);
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let response = reqwest::get(format!("http://{http}/readyz"))
            .await
            .expect("readyz answers");
        let status = response.status();
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.expect("readyz body"))
                .expect("readyz JSON");
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && body["history"]
                .as_str()
                .is_some_and(|h| h.starts_with("failing"))
        {
            break body;
        }
        assert!(Instant::now() < deadline, "readyz never said why: {body}");
    };
    eprintln!("full disk: /readyz says {readyz}");
    assert!(
        app.counter(|m| &m.polls_ok) > polls_before,
        "polling goes on while the disk is full"
    );
    assert!(app.counter(|m| &m.history_errors) > 0);
    let metrics = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("pbx2mqtt_history_failing 1"),
        "metrics say history fails"
    );

    // Space comes back: history catches up, every event is delivered.
    std::fs::remove_file(filler).expect("free the disk");
    let seqs = assert_nothing_lost(&app, &mut sub, "after the disk had room again").await;
    assert_dense(&seqs, "full disk");
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let body = crate::process::get_json(&format!("http://{http}/readyz")).await;
        if body["history"] == "ok" && body["ready"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history never recorded again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop_bridge().await;
}
