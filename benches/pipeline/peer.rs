//! The plain Python peer (`benches/python_peer/peer.py`): what a user would
//! write instead of the bridge, run against a fresh simulator with the same
//! agents and seed and the same broker, after the bridge's saturation stage
//! (never at the same time: each has the machine). Its agent-polls are
//! counted by the simulator and its CPU read from `/proc`, as the bridge's.
//!
//! Python comes from `PBX2MQTT_BENCH_PYTHON`, else a venv the bench makes
//! under the target directory (`python-peer-venv`: `python3 -m venv`, then
//! pip installs `requirements.txt`). Without Python, venv or pip the peer
//! is skipped with a note saying why; a peer that fails is reported, never
//! the end of the bench.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value as Json};

use crate::processes::{start_simulator, Broker, ChildProcess, SimulatorControl};
use crate::samplers::Processes;
use crate::settings::{Settings, Stage, StageKind, FIRST_EXTENSION, PIN};
use crate::stats::thousands;
use crate::table::{cost_rows, progress, target_dir, Report, Row};
use crate::targets::TARGET_PEER_RATIO;

/// The peer's script and its pinned requirements.
const PEER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python_peer");

/// The peer's timed loop runs this much longer than the measured window,
/// so the window lies inside it.
const PEER_MARGIN: Duration = Duration::from_secs(1);

/// What the bridge did at saturation, for the ratio.
#[derive(Debug, Clone, Copy)]
pub struct BridgeFigures {
    /// Agent-polls/s (simulator count).
    pub polls_per_second: f64,
    /// The bridge's CPU per agent-poll, µs.
    pub micros_per_poll: Option<f64>,
}

/// Runs the peer and adds its rows (or a note saying why it was skipped).
pub async fn run_peer(
    settings: &Settings,
    broker: &Broker,
    base: &str,
    dir: &Path,
    bridge: Option<BridgeFigures>,
    report: &mut Report,
) {
    report.group(&format!(
        "Python peer (benches/python_peer/peer.py, one loop): same simulator ({} agents, same seed), same broker, {} window",
        settings.agents,
        humantime::format_duration(settings.peer_window)
    ));
    let python = match find_python() {
        Ok(python) => python,
        Err(reason) => {
            let message = format!("Python peer skipped: {reason}");
            progress(&message);
            report.notes.push(message);
            report.peer = json!({"skipped": reason});
            return;
        }
    };
    if let Err(error) = peer_stage(settings, broker, base, dir, bridge, &python, report).await {
        let message = format!("Python peer failed (the bench goes on): {error:#}");
        progress(&message);
        report.notes.push(message);
        report.peer["failed"] = json!(format!("{error:#}"));
    }
}

async fn peer_stage(
    settings: &Settings,
    broker: &Broker,
    base: &str,
    dir: &Path,
    bridge: Option<BridgeFigures>,
    python: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let stage = Stage {
        key: "peer",
        title: String::new(),
        interval: settings.interval,
        mean_dwell: settings.mean_dwell,
        window: settings.peer_window,
        kind: StageKind::Saturation,
        commands: false,
    };
    progress(format!(
        "starting the simulator for the Python peer ({} agents, mean dwell {})",
        settings.agents,
        humantime::format_duration(stage.mean_dwell)
    ));
    let (mut simulator, simulator_addr) = start_simulator(settings, &stage, dir)?;
    let (host, port) = host_port(&broker.url)?;
    let mut command = Command::new(python);
    command
        .arg(Path::new(PEER_DIR).join("peer.py"))
        .args([
            "--belfabriek-url",
            &format!("http://{simulator_addr}/xml/agent/xml.asp"),
        ])
        .args(["--pin", PIN])
        .args(["--agents", &settings.agents.to_string()])
        .args(["--first-extension", &FIRST_EXTENSION.to_string()])
        .args(["--mqtt-host", &host, "--mqtt-port", &port.to_string()])
        .args(["--base-topic", base])
        .arg("--db")
        .arg(dir.join("peer.db"))
        .args([
            "--duration",
            &(settings.peer_window + PEER_MARGIN)
                .as_secs_f64()
                .to_string(),
        ])
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped());
    progress(format!(
        "starting the Python peer ({}); its untimed warm-up round polls every agent once",
        python.display()
    ));
    let mut peer = ChildProcess::spawn("Python peer", command, dir.join("peer.log"))?;

    // The timed loop starts when the warm-up round is done (it says so).
    let warmup_limit = Duration::from_secs(60) + Duration::from_millis(20) * settings.agents;
    let started = Instant::now();
    loop {
        peer.check_running()?;
        simulator.check_running()?;
        if std::fs::read_to_string(&peer.log)
            .unwrap_or_default()
            .contains("warm-up done")
        {
            break;
        }
        if started.elapsed() > warmup_limit {
            bail!(
                "the Python peer did not finish its warm-up round within {}\n--- peer log (tail) ---\n{}",
                humantime::format_duration(warmup_limit),
                peer.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warmup_seconds = started.elapsed().as_secs_f64();
    progress(format!(
        "Python peer warmed up in {warmup_seconds:.1} s; measuring for {}",
        humantime::format_duration(settings.peer_window)
    ));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("cannot build the HTTP client")?;
    let sim = SimulatorControl {
        http,
        base: format!("http://{simulator_addr}/control"),
    };
    let mut list = vec![
        ("peer".to_owned(), peer.pid()),
        ("simulator".to_owned(), simulator.pid()),
    ];
    if let Some(pid) = broker.pid {
        list.push(("broker".to_owned(), pid));
    }
    let processes = Processes::from_list(list);
    let stats_before = sim.stats().await?;
    let cpu_before = processes.cpu_sample();
    let clock = Instant::now();
    tokio::time::sleep(settings.peer_window).await;
    let cpu_after = processes.cpu_sample();
    let stats_after = sim.stats().await?;
    let seconds = clock.elapsed().as_secs_f64();
    peer.check_running()
        .context("the Python peer ended before the measured window did")?;

    // Its own account of the timed loop: one JSON line at the end.
    let exit_limit = Duration::from_secs(30);
    let waited = Instant::now();
    while peer.child.try_wait()?.is_none() {
        if waited.elapsed() > exit_limit {
            bail!("the Python peer did not end within {exit_limit:?} of its window");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = peer.child.wait()?;
    let mut stdout = String::new();
    if let Some(mut pipe) = peer.child.stdout.take() {
        pipe.read_to_string(&mut stdout)?;
    }
    simulator.terminate(Duration::from_secs(20))?;
    if !status.success() {
        bail!(
            "the Python peer exited with {status}\n--- peer log (tail) ---\n{}",
            peer.log_tail(20)
        );
    }
    let own: Json = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or(Json::Null);

    let avail = "ivr.getAgentAvail";
    let polls = stats_after
        .method(avail)
        .saturating_sub(stats_before.method(avail));
    let per_second = polls as f64 / seconds;
    report.push(Row::info(
        "agent-polls/s (simulator getAgentAvail count)",
        format!(
            "{} /s ({} polls in {seconds:.1} s; its own count: {} /s, {} transitions, {} errors)",
            thousands(per_second),
            thousands(polls as f64),
            own["polls_per_s"].as_f64().map_or("?".into(), thousands),
            own["transitions"],
            own["errors"],
        ),
        Some(per_second),
        "1/s",
    ));
    let (per_process, _) = processes.cpu_percentages(&cpu_before, &cpu_after, seconds);
    cost_rows(report, None, &per_process, seconds, polls);
    report.cpu["peer"] = processes.cpu_json(&cpu_before, &cpu_after, seconds);
    report.notes.push(format!(
        "peer: warm-up round {warmup_seconds:.1} s (not timed); {}",
        processes.cpu_summary(&cpu_before, &cpu_after, seconds)
    ));
    let peer_micros = per_process
        .iter()
        .find(|(name, _)| name == "peer")
        .map(|(_, percent)| percent / 100.0 * seconds * 1e6 / polls.max(1) as f64);
    if let Some(bridge) = bridge {
        if per_second > 0.0 {
            let ratio = bridge.polls_per_second / per_second;
            report.push(Row::check(
                "bridge / peer, agent-polls/s (bridge at saturation)",
                format!(
                    "{ratio:.1}× ({} /s vs {} /s)",
                    thousands(bridge.polls_per_second),
                    thousands(per_second)
                ),
                Some(ratio),
                "×",
                &format!("≥ {TARGET_PEER_RATIO:.0}×"),
                ratio >= TARGET_PEER_RATIO,
            ));
        }
        if let (Some(bridge_micros), Some(peer_micros)) = (bridge.micros_per_poll, peer_micros) {
            if bridge_micros > 0.0 {
                let ratio = peer_micros / bridge_micros;
                report.push(Row::info(
                    "peer / bridge, CPU per agent-poll (own process only)",
                    format!("{ratio:.1}× ({peer_micros:.0} µs vs {bridge_micros:.1} µs)"),
                    Some(ratio),
                    "×",
                ));
            }
        }
    } else {
        report
            .notes
            .push("peer: no saturation stage in this run, so no bridge/peer ratio".into());
    }
    report.peer = json!({
        "python": python.display().to_string(),
        "warmup_s": warmup_seconds,
        "window_s": seconds,
        "polls_in_window": polls,
        "polls_per_s": per_second,
        "micros_per_poll": peer_micros,
        "own_report": own,
    });
    Ok(())
}

/// `host` and `port` of an `mqtt://host:port` URL.
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_owned(),
            port.parse()
                .with_context(|| format!("bad port in the broker URL {url:?}"))?,
        )),
        None => Ok((authority.to_owned(), 1883)),
    }
}

/// A Python that can import the peer's packages, or why there is none.
fn find_python() -> Result<PathBuf, String> {
    if let Some(python) = std::env::var_os("PBX2MQTT_BENCH_PYTHON").filter(|p| !p.is_empty()) {
        let python = PathBuf::from(python);
        return imports_ok(&python)
            .map(|()| python.clone())
            .map_err(|why| format!("PBX2MQTT_BENCH_PYTHON={}: {why}", python.display()));
    }
    let venv = target_dir().join("python-peer-venv");
    let python = venv.join("bin").join("python");
    if python.exists() && imports_ok(&python).is_ok() {
        return Ok(python);
    }
    progress(format!(
        "creating the Python peer's venv in {} (python3 -m venv; pip install -r requirements.txt)",
        venv.display()
    ));
    run_quietly(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .map_err(|why| format!("`python3 -m venv {}` failed: {why}", venv.display()))?;
    let pinned = run_quietly(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(Path::new(PEER_DIR).join("requirements.txt")),
    );
    if let Err(why) = pinned {
        progress(format!(
            "pinned requirements did not install ({why}); trying the latest requests and paho-mqtt"
        ));
        run_quietly(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "requests",
            "paho-mqtt>=2",
        ]))
        .map_err(|why| format!("pip could not install requests and paho-mqtt: {why}"))?;
    }
    imports_ok(&python).map(|()| python)
}

/// Checks that `python` imports what the peer needs.
fn imports_ok(python: &Path) -> Result<(), String> {
    run_quietly(Command::new(python).args([
        "-c",
        "import sys, tomllib, requests, paho.mqtt.client; assert sys.version_info >= (3, 11)",
    ]))
    .map_err(|why| {
        format!("cannot import the peer's packages (Python ≥ 3.11, requests, paho-mqtt): {why}")
    })
}

/// Runs a command to its end; on failure, the last lines of its stderr.
fn run_quietly(command: &mut Command) -> Result<(), String> {
    let output = command.stdin(Stdio::null()).output().map_err(|error| {
        format!(
            "cannot run {}: {error}",
            command.get_program().to_string_lossy()
        )
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
    Err(format!(
        "{} ({})",
        output.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    ))
}
