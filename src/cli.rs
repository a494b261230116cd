//! The command line: parses arguments, loads the configuration, sets up
//! logging and runs one subcommand. `main.rs` only calls [`main`].
//!
//! One pattern for arguments: every subcommand's clap type lives beside the
//! code that runs it ([`DemoArgs`] in `demo`, [`SimulatorConfig`] in
//! `simulator`, [`ReportCommand`] in `report::cli`, [`QueueCommand`],
//! [`AgentCommand`] and [`AuditArgs`] in `commands::cli`); this file only
//! assembles them into [`Cli`] and holds the global options.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app::Application;
use crate::commands::cli::{AgentCommand, AuditArgs, QueueCommand};
use crate::config::{Config, ConfigError, Purpose, LOG_FORMAT_ENV};
use crate::demo::DemoArgs;
use crate::healthcheck::HealthcheckArgs;
pub use crate::logging::LogFormat;
use crate::report::cli::ReportCommand;
use crate::simulator::{Simulator, SimulatorConfig};

/// pbx2mqtt: call-center agent status to MQTT, queue commands from MQTT,
/// status history and reports.
#[derive(Debug, Parser)]
#[command(name = "pbx2mqtt", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file [default: $PBX2MQTT_CONFIG, else config/pbx2mqtt.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log output format [env: PBX2MQTT_LOG_FORMAT; the flag wins]
    #[arg(long, global = true, value_enum, env = LOG_FORMAT_ENV, hide_env = true,
          default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge (the service).
    Run,
    /// Run everything locally: PBX simulator, embedded broker, bridge, SQLite.
    Demo(DemoArgs),
    /// Serve the simulated Belfabriek and TRiNG APIs.
    Simulate(SimulatorConfig),
    /// Reports on status history (never creates or writes a database).
    #[command(subcommand)]
    Report(ReportCommand),
    /// Manage call-queue members through TRiNG.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Agent operations through TRiNG.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Show the queue-command audit log.
    Audit(AuditArgs),
    /// Validate the configuration as `run` does, then try the database, both
    /// APIs and the broker (changes nothing).
    Check,
    /// Apply database migrations and exit.
    Migrate,
    /// GET the bridge's /healthz (or --url): exit 0 when it answers 2xx, 1
    /// otherwise (for container health checks).
    Healthcheck(HealthcheckArgs),
}

/// Runtime workers for `run`. The poller has a thread of its own
/// ([`crate::poller::Poller::spawn_on_own_thread`]); what is left (the
/// history writer, both MQTT connections, the HTTP API) waits on sockets
/// and on SQLite's and PostgreSQL's connections, and a second worker only
/// adds wake-ups between the two: at 5,000 agents polled every second,
/// 39–40% of a core with two workers, 32–33% with one. Other commands (the
/// simulator above all) keep one worker per core.
const RUN_WORKERS: usize = 1;

/// Parses the command line and runs; the process exit code.
pub fn main() -> ExitCode {
    crate::malloc::tune();
    let cli = Cli::parse();
    crate::logging::init(cli.log_format);
    // Before any database opens; SQLite's defaults stay if it cannot.
    if !crate::store::configure_sqlite() {
        tracing::warn!("SQLite had started before its settings were made; its defaults stay");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, Command::Run) {
        runtime.worker_threads(RUN_WORKERS);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A wrong configuration, or a report request that is wrong or
            // over a `[report]` limit: the user's to fix, like a bad flag.
            let usage = error.chain().any(|cause| {
                cause.is::<ConfigError>()
                    || cause
                        .downcast_ref::<crate::report::ReportError>()
                        .is_some_and(crate::report::ReportError::is_bad_request)
            });
            eprintln!("error: {error:#}");
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let file = cli.config.as_deref();
    let load = |purpose| Config::load_for(file, purpose).map(|loaded| loaded.config);
    match cli.command {
        Command::Run => run(file).await,
        Command::Demo(args) => demo(args).await,
        Command::Simulate(config) => simulate(config).await,
        Command::Report(command) => command.run(&load(Purpose::History)?).await,
        Command::Queue(command) => command.run(&load(Purpose::QueueCommands)?).await,
        Command::Agent(command) => command.run(&load(Purpose::QueueCommands)?).await,
        Command::Audit(args) => args.run(&load(Purpose::History)?).await,
        Command::Check => crate::preflight::run(file).await,
        Command::Healthcheck(args) => args.run(file).await,
        Command::Migrate => {
            let config = load(Purpose::History)?;
            let store = crate::store::Store::open(&config.database.url)
                .await
                .context("cannot open the history database (database.url)")?;
            store.close().await;
            println!(
                "migrations applied to {}",
                crate::store::redact_url(&config.database.url)
            );
            Ok(())
        }
    }
}

/// Cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received; shutting down gracefully");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `pbx2mqtt run`: the same loading and validation as `check`, every
/// problem at once before anything touches the database; the warnings are
/// logged once.
async fn run(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let loaded = Config::load_for(file, Purpose::Service)?;
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    let app = Application::build(crate::malloc::settle(loaded.config)).await?;
    if let Some(addr) = app.http_addr() {
        info!(%addr, "http server listening");
    }
    app.run(shutdown_on_signal()).await
}

async fn simulate(config: SimulatorConfig) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    let simulator = Simulator::start(config, shutdown.clone()).await?;
    println!("Belfabriek API: {}", simulator.belfabriek_url());
    println!("TRiNG API:      {}", simulator.tring_url());
    println!("Control API:    http://{}/control/stats", simulator.addr());
    shutdown.cancelled().await;
    Ok(())
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    args.run(shutdown_on_signal()).await
}
