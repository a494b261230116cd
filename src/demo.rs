//! `pbx2mqtt demo`: the whole system on one machine with nothing installed:
//! the PBX simulator with moving agents, the embedded MQTT broker, the bridge
//! and an SQLite file. It builds a configuration in memory and runs the same
//! [`Application`] as `pbx2mqtt run`.
//!
//! `pbx2mqtt demo report ...` and `pbx2mqtt demo audit` are the `report`
//! and `audit` commands pointed at the demo's database (`--database`), so
//! a newcomer reports on what they just watched without writing a
//! configuration.
//!
//! The embedded broker is the cargo feature `embedded-broker` (on by
//! default). A build without it still has the subcommand, which then fails
//! at once saying how to get a broker.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::app::Application;
#[cfg(feature = "embedded-broker")]
use crate::broker::EmbeddedBroker;
use crate::commands::cli::AuditArgs;
use crate::config::{Config, Purpose};
use crate::report::cli::ReportCommand;
use crate::simulator::{Simulator, SimulatorConfig};

/// Where the demo keeps its history unless `--database` says otherwise.
pub const DEMO_DATABASE: &str = "sqlite://data/demo.db";

/// Options of `pbx2mqtt demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Number of simulated agents.
    #[arg(long, default_value_t = 36)]
    pub agents: u32,
    /// Port of the embedded MQTT broker (0 picks a free one).
    #[arg(long, default_value_t = 1884)]
    pub mqtt_port: u16,
    /// Address of the bridge's HTTP server (0 port picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// SQLite history file.
    #[arg(long, default_value = DEMO_DATABASE)]
    pub database: String,
    /// Mean time an agent stays in a state.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub dwell: std::time::Duration,
    /// Instead of running the demo: report on its history.
    #[command(subcommand)]
    pub command: Option<DemoCommand>,
}

/// What `pbx2mqtt demo` can do besides running.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DemoCommand {
    /// Reports on the demo's history (`--database`), like `pbx2mqtt report`.
    #[command(subcommand)]
    Report(ReportCommand),
    /// The demo's queue-command audit log, like `pbx2mqtt audit`.
    Audit(AuditArgs),
}

impl DemoArgs {
    /// Runs the demo until `shutdown`, or the report or audit subcommand on
    /// the demo's database.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if let Some(command) = self.command.clone() {
            // The demo's database with the built-in defaults (time zone
            // included); the environment may still override them.
            let config = Config::from_toml_str(&format!("[database]\nurl = {:?}\n", self.database))
                .context("demo configuration")?;
            return match command {
                DemoCommand::Report(report) => report.run(&config).await,
                DemoCommand::Audit(audit) => audit.run(&config).await,
            };
        }
        let broker = start_broker(self.mqtt_port)?;
        let simulator_config = SimulatorConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            agents: self.agents,
            mean_dwell: self.dwell,
            ..SimulatorConfig::default()
        };
        let simulator = Simulator::start(simulator_config.clone(), shutdown.clone())
            .await
            .context("cannot start the PBX simulator")?;
        // A queue with two members, so `list` and `remove` have something to show.
        if let Some(first) = simulator.agents().first() {
            simulator.set_queue_members("500", [first.tring_extension.as_str()]);
        }
        let http = if self.http.port() != 0 && TcpListener::bind(self.http).is_err() {
            SocketAddr::new(self.http.ip(), 0)
        } else {
            self.http
        };
        let toml = demo_config(
            &simulator,
            &simulator_config,
            &format!("mqtt://{broker}"),
            http,
            &self.database,
        );
        let config = Config::from_toml_str(&toml).context("demo configuration")?;
        config
            .validate_for(Purpose::Service)
            .context("demo configuration")?;
        let app = Application::build(config).await?;
        let http_addr = app.http_addr();
        println!();
        println!(
            "pbx2mqtt demo is running: {} simulated.",
            crate::text::count(self.agents as usize, "agent")
        );
        println!();
        println!(
            "  Watch the topics:   mosquitto_sub -h 127.0.0.1 -p {} -t 'pbx2mqtt/#' -v",
            broker.port()
        );
        if let Some(addr) = http_addr {
            println!("  Wallboard:          http://{addr}/");
            println!("  Report page:        http://{addr}/reports");
            println!("  Agents as JSON:     http://{addr}/api/agents");
            println!("  Today's report:     http://{addr}/api/reports/summary?format=csv");
            println!("  Metrics:            http://{addr}/metrics");
        }
        println!("  Add an agent to queue 500:");
        println!(
            "    mosquitto_pub -h 127.0.0.1 -p {} -t pbx2mqtt/request/queue/500/add -m '{{\"agent\":\"agent-1002\",\"transaction\":1}}'",
            broker.port()
        );
        println!(
            "  Simulator control:  http://{}/control/stats",
            simulator.addr()
        );
        println!("  History:            {}", self.database);
        let database = if self.database == DEMO_DATABASE {
            String::new()
        } else {
            format!(" --database {}", self.database)
        };
        println!("  Report on it:       pbx2mqtt demo{database} report summary   (also: report timeline --agent agent-1001, audit)");
        println!();
        println!("Press Ctrl-C to stop.");
        app.run(shutdown).await
    }
}

/// Starts the embedded broker on `preferred` (or any free port when that
/// is taken); its address. It runs until the process exits.
#[cfg(feature = "embedded-broker")]
fn start_broker(preferred: u16) -> anyhow::Result<SocketAddr> {
    let port = free_or_any(preferred);
    let broker = EmbeddedBroker::start(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .context("cannot start the embedded MQTT broker")?;
    Ok(broker.addr())
}

/// This build has no embedded broker: says so, and what to do instead.
#[cfg(not(feature = "embedded-broker"))]
fn start_broker(_preferred: u16) -> anyhow::Result<SocketAddr> {
    anyhow::bail!(
        "this pbx2mqtt was built without the embedded MQTT broker (cargo feature \
         `embedded-broker`), which the demo needs; build it with default features, or run \
         `pbx2mqtt simulate` and `pbx2mqtt run` against your own broker (mqtt.url)"
    )
}

/// `preferred` if it can be bound now, else 0 (any free port).
#[cfg(feature = "embedded-broker")]
fn free_or_any(preferred: u16) -> u16 {
    if preferred == 0 || TcpListener::bind((Ipv4Addr::LOCALHOST, preferred)).is_err() {
        0
    } else {
        preferred
    }
}

fn demo_config(
    simulator: &Simulator,
    simulator_config: &SimulatorConfig,
    broker_url: &str,
    http: SocketAddr,
    database: &str,
) -> String {
    let mut toml = format!(
        // The embedded broker (rumqttd) serves MQTT 3.1.1 on its port.
        "[mqtt]\nurl = {broker:?}\nclient_id = \"pbx2mqtt-demo\"\nprotocol = \"3.1.1\"\n\
         [belfabriek]\nurl = {belfabriek:?}\naccount_pin = {pin:?}\n\
         [tring]\nurl = {tring:?}\nkey = {key:?}\ntenant = {tenant:?}\n\
         [poll]\ninterval = \"1s\"\n\
         [database]\nurl = {database:?}\n\
         [http]\nlisten = \"{http}\"\n\
         [commands]\nallow_clean = true\n",
        broker = broker_url,
        belfabriek = simulator.belfabriek_url(),
        pin = simulator_config.account_pin,
        tring = simulator.tring_url(),
        key = simulator_config.tring_key,
        tenant = simulator_config.tenant,
    );
    toml.push_str(&simulator.agents_toml("agent-"));
    toml
}
