//! The bridge as a real process (`pbx2mqtt run`): started with a config
//! file and extra environment, its log in a file, stopped by signals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("the bound address")
        .port()
}

/// GETs `url` and parses its JSON body (panics if it cannot).
pub async fn get_json(url: &str) -> Value {
    let response = reqwest::get(url).await.expect("an HTTP answer");
    serde_json::from_slice(&response.bytes().await.expect("a body")).expect("a JSON body")
}

/// One `pbx2mqtt run` process; killed when dropped.
pub struct BridgeProcess {
    /// Its `bridge.id`.
    pub id: String,
    child: Child,
    /// Its HTTP port.
    pub http: u16,
    log: PathBuf,
}

impl BridgeProcess {
    /// Starts `pbx2mqtt run --config <config>` as bridge `id`, HTTP on a
    /// free port, logging to `<dir>/<id>.log`, with `env` added.
    pub fn start(id: &str, config: &Path, dir: &Path, env: &[(&str, String)]) -> BridgeProcess {
        let http = free_port();
        let log = dir.join(format!("{id}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_pbx2mqtt"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("PBX2MQTT_CONFIG")
            .env("PBX2MQTT_BRIDGE__ID", id)
            .env("PBX2MQTT_HTTP__LISTEN", format!("127.0.0.1:{http}"))
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the bridge's log file"))
            .spawn()
            .expect("start the pbx2mqtt binary");
        BridgeProcess {
            id: id.to_owned(),
            child,
            http,
            log,
        }
    }

    /// `/readyz` as JSON, `None` while it does not answer.
    pub async fn readyz(&self) -> Option<Value> {
        let response = reqwest::get(format!("http://127.0.0.1:{}/readyz", self.http))
            .await
            .ok()?;
        serde_json::from_slice(&response.bytes().await.ok()?).ok()
    }

    /// Sends `signal` (e.g. `-STOP`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}", self.id);
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (at most `patience`) for a clean exit; its logs.
    pub async fn stop(mut self, patience: Duration) -> String {
        self.signal("-TERM");
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("the bridge's status") {
                assert!(
                    status.success(),
                    "{} exited with {status}: {}",
                    self.id,
                    self.logs()
                );
                return self.logs();
            }
            assert!(Instant::now() < deadline, "{} did not stop", self.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
