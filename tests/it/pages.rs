//! The web pages in a real browser: Debian's headless Chromium, driven by
//! Playwright for Python (`tests/browser/pages.py`), against the real bridge
//! polling the simulator. The wallboard shows every agent with the right
//! status, the queues, a transition made in the simulator within 2 s, and
//! comes back by itself after its stream was cut; the report page draws a
//! strip per agent and the summary table; 5,000 agents load without the
//! page giving up. Screenshots go to `PBX2MQTT_TEST_ARTIFACTS` (default
//! `<target dir>/test-artifacts/`).
//!
//! Needs Python with `playwright` (`PBX2MQTT_TEST_BROWSER_PYTHON`, default
//! `python3`) and Chromium (`CHROMIUM`, default `/usr/bin/chromium`); a test
//! skips, saying which is missing, when one is not there. Playwright never
//! downloads a browser here: see tests/browser/README.md.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, NaiveDate, Utc};
use pbx2mqtt::model::{AgentId, Status};
use pbx2mqtt::report::period::start_of_local_day;
use pbx2mqtt::store::Interval;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::fault_proxy::{Fault, FaultProxy};
use crate::helpers::{prepare_app, Options, TestApp, SOON};

/// The longest one run of the browser script may take (it bounds each of
/// its own waits; this is the backstop).
const SCRIPT_LIMIT: Duration = Duration::from_secs(240);

/// What runs the browser checks.
struct Browser {
    python: String,
    chromium: String,
    script: PathBuf,
    artifacts: PathBuf,
}

impl Browser {
    /// The interpreter and browser. The tests are built as ignored where
    /// `build.rs` found neither; run anyway, a missing one is a failure
    /// saying what is missing.
    async fn find(test: &str) -> Browser {
        let python =
            std::env::var("PBX2MQTT_TEST_BROWSER_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        let import = Command::new(&python)
            .args(["-c", "import playwright.sync_api"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        assert!(
            matches!(import, Ok(status) if status.success()),
            "{test}: `{python} -c 'import playwright.sync_api'` failed; install Playwright \
             for Python (pip install playwright, no browser download needed) or point \
             PBX2MQTT_TEST_BROWSER_PYTHON at an interpreter that has it"
        );
        assert!(
            Path::new(&chromium).is_file(),
            "{test}: no Chromium at {chromium}; apt-get install chromium, or set CHROMIUM"
        );
        let artifacts = std::env::var_os("PBX2MQTT_TEST_ARTIFACTS")
            .map(PathBuf::from)
            .unwrap_or_else(default_artifacts);
        std::fs::create_dir_all(&artifacts).expect("create the test artifacts directory");
        Browser {
            python,
            chromium,
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/pages.py"),
            artifacts,
        }
    }

    /// A path for a screenshot.
    fn artifact(&self, name: &str) -> String {
        self.artifacts.join(name).display().to_string()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.python);
        command
            .arg(&self.script)
            .args(args)
            .args(["--chromium", &self.chromium])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs one check to the end; panics with its output unless it passed.
    async fn check(&self, args: &[&str]) -> String {
        let output = tokio::time::timeout(SCRIPT_LIMIT, self.command(args).output())
            .await
            .expect("the browser check ends")
            .expect("run the browser check");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "pages.py {args:?} failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
        eprintln!("{stdout}");
        stdout
    }

    /// Starts a check that prints `READY` when the page is live, runs
    /// `meanwhile`, then waits for the check to pass.
    async fn check_around<F: std::future::Future<Output = ()>>(
        &self,
        args: &[&str],
        meanwhile: impl FnOnce() -> F,
    ) -> String {
        let mut child = self.command(args).spawn().expect("run the browser check");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut seen = String::new();
        let ready = tokio::time::timeout(SCRIPT_LIMIT, async {
            while let Some(line) = stdout.next_line().await.expect("read the check's output") {
                seen.push_str(&line);
                seen.push('\n');
                if line == "READY" {
                    return true;
                }
            }
            false
        })
        .await
        .expect("the browser check gets ready");
        if !ready {
            let output = child.wait_with_output().await.expect("the check's output");
            panic!(
                "pages.py {args:?} ended before READY:\n{seen}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        meanwhile().await;
        let rest = tokio::time::timeout(SCRIPT_LIMIT, async {
            while let Some(line) = stdout.next_line().await.expect("read the check's output") {
                seen.push_str(&line);
                seen.push('\n');
            }
        });
        rest.await.expect("the browser check ends");
        let output = child.wait_with_output().await.expect("the check's status");
        assert!(
            output.status.success(),
            "pages.py {args:?} failed ({}):\n{seen}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("{seen}");
        seen
    }
}

/// `<target dir>/test-artifacts`, the target directory found from this
/// test binary's path (`<target>/<profile>/deps/it-...`).
fn default_artifacts() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("test-artifacts")
}

/// Every agent's state from the bridge's `/api/agents`.
async fn agents(base: &str) -> Vec<Value> {
    let response = reqwest::get(format!("{base}api/agents"))
        .await
        .expect("GET /api/agents");
    let text = response.text().await.expect("read /api/agents");
    serde_json::from_str(&text).expect("/api/agents is JSON")
}

/// Waits until the bridge shows every agent in `expected` (id → status).
async fn wait_for_statuses(base: &str, expected: &[(String, &str)], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let states = agents(base).await;
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(agent, status)| {
                !states
                    .iter()
                    .any(|state| state["agent"] == agent.as_str() && state["status"] == *status)
            })
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge never showed {wrong:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stores a working day for each agent on `day` (report time zone): offline
/// until a start between 08:00 and 10:00, then calls (available, ringing,
/// on call, wrap-up) with a lunch pause and the odd busy or unavailable
/// stretch, offline again from about 17:00 to midnight.
async fn seed_day(app: &TestApp, agents: u32, day: NaiveDate) {
    let tz = app.config.report.tz();
    let midnight = start_of_local_day(day, tz);
    let next_midnight = start_of_local_day(day.succ_opt().expect("a next day"), tz);
    let mut rng = StdRng::seed_from_u64(11);
    let mut intervals = Vec::new();
    for n in 1..=agents {
        let agent = AgentId::parse(&app.agent(n)).expect("a valid agent id");
        let mut push = |status: Status, reason: Option<&str>, from: DateTime<Utc>, to| {
            intervals.push(Interval {
                agent: agent.clone(),
                status,
                reason: reason.map(str::to_owned),
                extension_status: None,
                destination: None,
                started_at: from,
                ended_at: Some(to),
                seq: None,
            });
        };
        let start = midnight + Span::minutes(rng.gen_range(8 * 60..10 * 60));
        let lunch = midnight + Span::minutes(rng.gen_range(12 * 60..13 * 60));
        let end = midnight + Span::minutes(rng.gen_range(16 * 60 + 30..18 * 60));
        push(Status::Offline, None, midnight, start);
        let mut at = start;
        let mut lunched = false;
        while at < end {
            let (status, reason, minutes) = if !lunched && at >= lunch {
                lunched = true;
                (Status::Paused, Some("pause"), rng.gen_range(25..45))
            } else {
                match rng.gen_range(0..20) {
                    0 => (Status::Busy, Some("handling"), rng.gen_range(5..20)),
                    1 => (Status::Unavailable, Some("training"), rng.gen_range(10..40)),
                    _ => (Status::Available, None, rng.gen_range(1..12)),
                }
            };
            let next = (at + Span::minutes(minutes)).min(end);
            push(status, reason, at, next);
            at = next;
            if status == Status::Available && at < end {
                let ring = (at + Span::seconds(rng.gen_range(5..30))).min(end);
                push(Status::Ringing, None, at, ring);
                let call = (ring + Span::seconds(rng.gen_range(60..900))).min(end);
                push(Status::OnCall, None, ring, call);
                let wrapup = (call + Span::seconds(rng.gen_range(20..120))).min(end);
                push(Status::Wrapup, None, call, wrapup);
                at = wrapup;
            }
        }
        push(Status::Offline, None, end, next_midnight);
    }
    intervals.retain(|interval| interval.ended_at > Some(interval.started_at));
    // Transitions carry their seq, as the history writer stores them (an
    // interval without one is a resumed status, not a new call).
    for (seq, interval) in (1..).zip(intervals.iter_mut()) {
        interval.seq = Some(seq);
    }
    let store = app.store().await;
    store
        .import_intervals(&intervals)
        .await
        .expect("store yesterday's history");
    let last = intervals.len();
    store
        .execute_unchecked(&format!(
            "INSERT INTO bridge_meta (key, value) VALUES ('last_seq', {last}) \
             ON CONFLICT (key) DO UPDATE SET value = {last}"
        ))
        .await
        .expect("the bridge's seq counter continues after the seeded history");
    store.close().await;
}

/// (available, reason, extension status, the status it gives), a spread
/// for a board with every working status on it.
const BOARD: [(bool, &str, &str, &str); 12] = [
    (true, "-", "idle", "available"),
    (true, "-", "called", "on_call"),
    (true, "-", "calling", "ringing"),
    (true, "-", "idle", "available"),
    (true, "-", "wrapup", "wrapup"),
    (false, "pause", "idle", "paused"),
    (true, "-", "called", "on_call"),
    (false, "handling", "idle", "busy"),
    (false, "training", "idle", "unavailable"),
    (true, "-", "called", "on_call"),
    (false, "-", "idle", "offline"),
    (true, "-", "idle", "available"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_browser),
    ignore = "needs Chromium and Python playwright (see PBX2MQTT_TEST_BROWSER_PYTHON in the README; CI installs them)"
)]
async fn the_wallboard_and_the_report_page_in_chromium() {
    let browser = Browser::find("the_wallboard_and_the_report_page_in_chromium").await;
    let agents_n = BOARD.len() as u32;
    let mut app = prepare_app(Options {
        agents: agents_n,
        extra_toml: "[commands]\nallowed_queues = [500, 501]\n".into(),
        ..Options::default()
    })
    .await;
    let tz = app.config.report.tz();
    let yesterday = Utc::now().with_timezone(&tz).date_naive() - Span::days(1);
    seed_day(&app, agents_n, yesterday).await;
    // Queue members by TRiNG extension (the simulator's agents are 201...),
    // with one custom destination that is no agent.
    app.simulator
        .set_queue_members("500", ["201", "202", "203", "204", "205", "206"]);
    app.simulator
        .set_queue_members("501", ["204", "205", "206", "207", "299"]);
    app.start_bridge().await;
    let base = format!("http://{}/", app.http.expect("the test config listens"));
    let mut expected = Vec::new();
    for (n, (available, reason, extension, status)) in (1..).zip(BOARD) {
        app.set(n, available, reason, extension);
        expected.push((app.agent(n), status));
    }
    wait_for_statuses(&base, &expected, SOON).await;
    let count = agents_n.to_string();

    // Every agent with its status, the counts, the queues; screenshots.
    let tv = browser.artifact("wallboard-tv.png");
    let phone = browser.artifact("wallboard-phone.png");
    browser
        .check(&[
            "wallboard",
            "--url",
            &base,
            "--expect-agents",
            &count,
            "--screenshot",
            &tv,
            "--phone-screenshot",
            &phone,
        ])
        .await;

    // A transition made in the simulator is on the page within 2 s.
    let agent = app.agent(1);
    browser
        .check_around(
            &[
                "wait-status",
                "--url",
                &base,
                "--agent",
                &agent,
                "--status",
                "paused",
                "--within",
                "2",
                "--since-update-within",
                "2",
            ],
            || async { app.set(1, false, "pause", "idle") },
        )
        .await;

    // The stream is cut (through a TCP proxy) while an agent changes: the
    // page says so, reconnects by itself and shows the change.
    let proxy = FaultProxy::start(app.http.expect("listening")).await;
    let proxied = format!("http://{}/", proxy.addr());
    let changed = app.agent(2);
    browser
        .check_around(
            &[
                "reconnect",
                "--url",
                &proxied,
                "--expect-agents",
                &count,
                "--require-last-event-id",
            ],
            || async {
                proxy.set(Fault::Drop);
                app.set(2, true, "-", "wrapup");
                wait_for_statuses(&base, &[(changed.clone(), "wrapup")], SOON).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                proxy.set(Fault::Pass);
            },
        )
        .await;
    proxy.stop().await;

    // Yesterday's report: a strip per agent, the table, the CSV link, a
    // refused range shown with its parameter.
    let day = yesterday.to_string();
    let reports = browser.artifact("reports.png");
    browser
        .check(&[
            "reports",
            "--url",
            &base,
            "--date",
            &day,
            "--expect-strips",
            &count,
            "--screenshot",
            &reports,
        ])
        .await;
    // Today's, from what the bridge recorded since it started.
    browser
        .check(&[
            "reports",
            "--url",
            &base,
            "--expect-strips",
            &count,
            "--no-error-check",
        ])
        .await;
    app.stop_bridge().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_browser),
    ignore = "needs Chromium and Python playwright (see PBX2MQTT_TEST_BROWSER_PYTHON in the README; CI installs them)"
)]
async fn five_thousand_agents_on_the_wallboard() {
    let browser = Browser::find("five_thousand_agents_on_the_wallboard").await;
    const AGENTS: u32 = 5_000;
    let mut app = prepare_app(Options {
        agents: AGENTS,
        ..Options::default()
    })
    .await;
    // Polled every 2 s, not the tests' 100 ms: a modest machine also runs
    // the browser.
    app.config.poll.interval = Duration::from_secs(2);
    app.config.poll.max_backoff = Duration::from_secs(10);
    app.start_bridge().await;
    let base = format!("http://{}/", app.http.expect("the test config listens"));
    // Every agent polled once (offline, as the simulator starts them), then
    // a few hundred in other statuses.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while agents(&base)
        .await
        .iter()
        .any(|state| state["status"] == "unknown")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "5,000 agents never all polled"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for n in (1..=AGENTS).step_by(13) {
        let (available, reason, extension, _) = BOARD[n as usize % BOARD.len()];
        app.set(n, available, reason, extension);
    }
    let screenshot = browser.artifact("wallboard-5000.png");
    let output = browser
        .check(&[
            "wallboard",
            "--url",
            &base,
            "--expect-agents",
            &AGENTS.to_string(),
            "--timeout",
            "90",
            "--screenshot",
            &screenshot,
        ])
        .await;
    assert!(output.contains("shows 5000 agents"), "{output}");
    app.stop_bridge().await;
}
