//! The processes the bench runs and talks to: the broker (an external one, a
//! private Mosquitto or the embedded rumqttd), the simulator and the bridge as
//! child processes killed on drop, the simulator's control API and the bridge's
//! metrics.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[cfg(feature = "embedded-broker")]
use pbx2mqtt::broker::EmbeddedBroker;
use pbx2mqtt::simulator::RequestCounts;

use crate::settings::{
    Settings, Stage, COMMAND_QUEUE, FIRST_EXTENSION, FIRST_TRING_EXTENSION, PIN, STARTUP_LIMIT,
};

/// The release binary under test (the simulator always runs from it).
const BINARY: &str = env!("CARGO_BIN_EXE_pbx2mqtt");

/// The bridge's binary: [`BINARY`], or `PIPELINE_BRIDGE_BINARY` when set (an
/// older build compared in the same minutes by `benches/ab.sh`).
fn bridge_binary() -> std::ffi::OsString {
    std::env::var_os("PIPELINE_BRIDGE_BINARY").unwrap_or_else(|| BINARY.into())
}

/// The simulator's TRiNG key.
const KEY: &str = "bench-key-4410";

/// The simulator's TRiNG tenant.
const TENANT: &str = "BENCH";

/// The broker every client uses.
pub struct Broker {
    /// `mqtt://host:port`.
    pub url: String,
    /// What it is, for the notes.
    pub description: String,
    /// The broker's process, when it is a separate one we can name.
    pub pid: Option<u32>,
    /// Our own Mosquitto (killed when dropped). An embedded broker needs no
    /// handle: it lives until the process exits.
    _private: Option<ChildProcess>,
}

impl Broker {
    /// `PIPELINE_BROKER=mosquitto`: a private Mosquitto with
    /// `set_tcp_nodelay true`; `embedded`: rumqttd in this process; `env`:
    /// `PBX2MQTT_TEST_MQTT_URL`; unset: a private Mosquitto when `mosquitto`
    /// is on the PATH, else `PBX2MQTT_TEST_MQTT_URL`, else embedded.
    pub fn choose(dir: &Path) -> anyhow::Result<Self> {
        let choice = std::env::var("PIPELINE_BROKER").unwrap_or_default();
        match choice.as_str() {
            "mosquitto" => return Self::private_mosquitto(dir),
            "embedded" => return Self::embedded(),
            "" if on_path("mosquitto") => return Self::private_mosquitto(dir),
            "" | "env" => {}
            other => {
                bail!("PIPELINE_BROKER={other:?}: use `mosquitto`, `embedded`, `env` or leave it unset")
            }
        }
        match std::env::var("PBX2MQTT_TEST_MQTT_URL") {
            Ok(url) if !url.is_empty() => Ok(Self {
                description: format!(
                    "external broker at {url} (PBX2MQTT_TEST_MQTT_URL), configured by its owner"
                ),
                pid: find_process("mosquitto"),
                url,
                _private: None,
            }),
            _ => Self::embedded(),
        }
    }

    /// rumqttd in this process.
    #[cfg(feature = "embedded-broker")]
    pub fn embedded() -> anyhow::Result<Self> {
        let broker = EmbeddedBroker::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("cannot start the embedded broker")?;
        Ok(Self {
            url: broker.url(),
            description: format!("embedded rumqttd in the bench process at {}", broker.url()),
            pid: None,
            _private: None,
        })
    }

    /// This build has no embedded broker.
    #[cfg(not(feature = "embedded-broker"))]
    pub fn embedded() -> anyhow::Result<Self> {
        bail!(
            "no broker: set PBX2MQTT_TEST_MQTT_URL or PIPELINE_BROKER=mosquitto \
             (this build has no embedded broker: the `embedded-broker` feature is off)"
        )
    }

    /// Starts `mosquitto` (from PATH) on a free port with TCP_NODELAY.
    pub fn private_mosquitto(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
            ),
        )?;
        let mut command = Command::new("mosquitto");
        command.arg("-c").arg(&config).stdout(Stdio::null());
        let mut broker = ChildProcess::spawn("mosquitto", command, dir.join("mosquitto.log"))?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            broker.check_running()?;
            if started.elapsed() > STARTUP_LIMIT {
                bail!("mosquitto did not listen on port {port} within {STARTUP_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let url = format!("mqtt://127.0.0.1:{port}");
        Ok(Self {
            description: format!(
                "private Mosquitto at {url} with set_tcp_nodelay true (PIPELINE_BROKER=env or embedded for others)"
            ),
            pid: Some(broker.pid()),
            url,
            _private: Some(broker),
        })
    }

    pub fn describe(&self) -> String {
        self.description.clone()
    }
}

/// True when an executable `name` is in a directory of the PATH.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// A free TCP port on 127.0.0.1 (bound and released: a tiny race, fine for
/// a bench).
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("cannot find a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// A child process that is killed when this value is dropped (normal end,
/// error, panic or interrupt).
pub struct ChildProcess {
    /// For messages.
    pub name: &'static str,
    /// The process.
    pub child: Child,
    /// Its stderr (logs).
    pub log: PathBuf,
}

impl ChildProcess {
    pub fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        let log_file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        // Our environment must not reconfigure the children: their settings
        // come from the arguments and the generated file only.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PBX2MQTT_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} for the {name}",
                    command.get_program().to_string_lossy()
                )
            })?;
        Ok(Self { name, child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "the {} exited early ({status})\n--- {} log (tail) ---\n{}",
                self.name,
                self.name,
                self.log_tail(30)
            ),
            Err(error) => bail!("cannot check the {}: {error}", self.name),
        }
    }

    /// Sends SIGTERM and waits up to `within` for a clean exit (then kills
    /// it); how long the exit took.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        if self.child.try_wait()?.is_some() {
            return Ok(Duration::ZERO);
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        if !matches!(sent, Ok(status) if status.success()) {
            self.child.kill()?;
        }
        while started.elapsed() < within {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "the {} exited with {status} on SIGTERM\n--- {} log (tail) ---\n{}",
                        self.name,
                        self.name,
                        self.log_tail(30)
                    );
                }
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        let _ = self.child.wait();
        bail!(
            "the {} did not stop within {within:?} of SIGTERM",
            self.name
        )
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let length = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024)));
            let _ = file.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `pbx2mqtt simulate` on a port of its choosing; returns it with the
/// address it printed.
pub fn start_simulator(
    settings: &Settings,
    stage: &Stage,
    dir: &Path,
) -> anyhow::Result<(ChildProcess, SocketAddr)> {
    let mut command = Command::new(BINARY);
    command
        .args(["simulate", "--listen", "127.0.0.1:0"])
        .args(["--agents", &settings.agents.to_string()])
        .args(["--first-extension", &FIRST_EXTENSION.to_string()])
        .args([
            "--first-tring-extension",
            &FIRST_TRING_EXTENSION.to_string(),
        ])
        .args([
            "--mean-dwell",
            &humantime::format_duration(stage.mean_dwell).to_string(),
        ])
        .args(["--account-pin", PIN, "--tring-key", KEY, "--tenant", TENANT])
        .args(["--seed", "20261122"])
        .stdout(Stdio::piped());
    let mut simulator = ChildProcess::spawn("simulator", command, dir.join("simulator.log"))?;
    let stdout = simulator
        .child
        .stdout
        .take()
        .context("the simulator's stdout is not piped")?;
    let (address_sender, address_receiver) = std::sync::mpsc::channel();
    // Reads the printed URLs, then keeps draining stdout until it closes.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("Belfabriek API:") {
                let authority = url
                    .trim()
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = address_sender.send(authority);
            }
        }
    });
    let authority = match address_receiver.recv_timeout(STARTUP_LIMIT) {
        Ok(authority) => authority,
        Err(_) => bail!(
            "the simulator did not print its address within {STARTUP_LIMIT:?}\n--- simulator log (tail) ---\n{}",
            simulator.log_tail(30)
        ),
    };
    let addr = authority
        .parse()
        .with_context(|| format!("the simulator printed an unexpected address {authority:?}"))?;
    Ok((simulator, addr))
}

/// Writes the bridge's configuration for this run; returns its path.
#[allow(clippy::too_many_arguments)]
pub fn write_bridge_config(
    settings: &Settings,
    stage: &Stage,
    broker: &Broker,
    base: &str,
    tag: &str,
    simulator: SocketAddr,
    http_port: u16,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    use std::fmt::Write as _;
    let database = dir.join("history.db");
    let mut toml = format!(
        "[mqtt]\nurl = {broker:?}\nclient_id = \"pbx2mqtt-bench-{tag}\"\nbase_topic = {base:?}\n\n\
         [belfabriek]\nurl = \"http://{simulator}/xml/agent/xml.asp\"\naccount_pin = {PIN:?}\ntimeout = \"2s\"\n\n\
         [tring]\nurl = \"http://{simulator}/pbx/proxyapi.php\"\nkey = {KEY:?}\ntenant = {TENANT:?}\ntimeout = \"2s\"\n\n\
         [poll]\ninterval = \"{interval}\"\nconcurrency = {concurrency}\nstale_after = 3\nmax_backoff = \"5s\"\n\n\
         [database]\nurl = \"sqlite://{database}\"\n\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n\n\
         [commands]\nallowed_queues = [\"{COMMAND_QUEUE}\"]\n\n",
        broker = broker.url,
        interval = humantime::format_duration(stage.interval),
        concurrency = settings.concurrency,
        database = database.display(),
    );
    for offset in 0..settings.agents {
        let extension = FIRST_EXTENSION + offset;
        let tring = FIRST_TRING_EXTENSION + offset;
        // Writing to a String cannot fail.
        let _ = write!(
            toml,
            "[[agents]]\nid = \"agent{extension}\"\nextension_id = \"{extension}\"\nqueue_extension = \"{tring}\"\n"
        );
    }
    let path = dir.join("pbx2mqtt.toml");
    std::fs::write(&path, toml).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Starts `pbx2mqtt run` with the generated configuration.
pub fn start_bridge(config: &Path, dir: &Path) -> anyhow::Result<ChildProcess> {
    let mut command = Command::new(bridge_binary());
    command
        .arg("--config")
        .arg(config)
        .arg("run")
        .current_dir(dir)
        .stdout(Stdio::null());
    ChildProcess::spawn("bridge", command, dir.join("bridge.log"))
}

/// The simulator's control API.
pub struct SimulatorControl {
    /// Shared HTTP client.
    pub http: reqwest::Client,
    /// `http://ADDR/control`.
    pub base: String,
}

impl SimulatorControl {
    pub async fn stats(&self) -> anyhow::Result<RequestCounts> {
        let body = self
            .http
            .get(format!("{}/stats", self.base))
            .send()
            .await
            .context("cannot reach the simulator's /control/stats")?
            .bytes()
            .await?;
        serde_json::from_slice(&body)
            .context("the simulator's /control/stats is not the expected JSON")
    }

    pub async fn reset_poll_gaps(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/poll-gaps", self.base))
            .send()
            .await
            .context("cannot reset the simulator's poll gaps")?;
        if !response.status().is_success() {
            bail!("DELETE /control/poll-gaps answered {}", response.status());
        }
        Ok(())
    }
}

/// One scrape of `/metrics`: series name (with labels) → value.
pub type Scrape = HashMap<String, f64>;

/// The bridge's `/metrics` as name → value, or `None` while its HTTP server
/// is not serving them.
pub async fn bridge_metrics(http: &reqwest::Client, url: &str) -> Option<Scrape> {
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let text = response.text().await.ok()?;
    let values: HashMap<String, f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect();
    (!values.is_empty()).then_some(values)
}

/// The difference of one counter between two scrapes.
pub fn metric_delta(pair: Option<(&Scrape, &Scrape)>, name: &str) -> Option<f64> {
    let (before, after) = pair?;
    Some(after.get(name)? - before.get(name)?)
}

/// The pid of the only process named `name`, if exactly one runs.
pub fn find_process(name: &str) -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
            if comm.trim() == name {
                found.push(pid);
            }
        }
    }
    (found.len() == 1).then(|| found[0])
}
