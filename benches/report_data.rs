//! Report benchmark (`product.md` §8): generates a large synthetic status
//! history and times the reports on it.
//!
//! ```text
//! cargo bench --bench report_data                     # 10,000,000 intervals
//! cargo bench --bench report_data -- --intervals 1000000 --agents 1000 --days 14
//! PBX2MQTT_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench report_data
//! ```
//!
//! Options (or environment): `--intervals` (`REPORT_BENCH_INTERVALS`,
//! default 10,000,000), `--agents` (`REPORT_BENCH_AGENTS`, 5,000), `--days`
//! (`REPORT_BENCH_DAYS`, 28), `--runs` (`REPORT_BENCH_RUNS`, 9), `--dir`
//! (`REPORT_BENCH_DIR`, `target/report-bench`), `--no-postgres`.
//!
//! Each agent works one shift a day (start 07:00-10:00 local, about eight
//! hours) cycling through available, ringing, on_call and wrapup with
//! pauses, busy and unavailable stretches, and is offline in between (an
//! interval crossing midnight); its last interval is open. Days start on
//! Monday 2026-03-09 in Europe/Amsterdam (the range contains the
//! spring-forward day). Intervals are inserted in time order, as the bridge
//! writes them, through the real schema (`Store::open` runs the
//! migrations). The SQLite file (and the PostgreSQL database
//! `pbx2mqtt_report_bench_<n>_<agents>_<days>`) is kept and reused when it
//! holds the right number of intervals.
//!
//! Timed (median of `--runs` after one warm-up): the one-day all-agent
//! summary, one agent's day summary and timeline, and a one-week all-agent
//! total, each through `pbx2mqtt::report` exactly as the CLI and HTTP API
//! run it (query and row building; rendering excluded).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use pbx2mqtt::model::{AgentId, Status};
use pbx2mqtt::report::period::{start_of_local_day, RangeBound, ReportRange};
use pbx2mqtt::report::{
    summary, timeline, Granularity, ReportLimits, ReportSettings, SummaryRequest, TimelineRequest,
};
use pbx2mqtt::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Connection;

const TZ: chrono_tz::Tz = chrono_tz::Europe::Amsterdam;

/// Rows per multi-row INSERT on SQLite (8 parameters each).
const SQLITE_ROWS_PER_INSERT: usize = 500;

/// What to generate and how often to time.
#[derive(Debug, Clone)]
struct Params {
    /// Total intervals stored.
    intervals: u64,
    /// Distinct agents.
    agents: u32,
    /// Days of history.
    days: u32,
    /// Timed runs per case (after one warm-up).
    runs: usize,
    /// Where the SQLite file is kept.
    dir: PathBuf,
    /// Skip PostgreSQL even when its URL is set.
    no_postgres: bool,
}

impl Params {
    fn from_args_and_env() -> Result<Self, String> {
        let env = |name: &str| std::env::var(name).ok();
        let mut params = Params {
            intervals: env("REPORT_BENCH_INTERVALS").map_or(Ok(10_000_000), |v| parse(&v))?,
            agents: env("REPORT_BENCH_AGENTS").map_or(Ok(5_000), |v| parse(&v))?,
            days: env("REPORT_BENCH_DAYS").map_or(Ok(28), |v| parse(&v))?,
            runs: env("REPORT_BENCH_RUNS").map_or(Ok(9), |v| parse(&v))?,
            dir: env("REPORT_BENCH_DIR")
                .map_or_else(|| PathBuf::from("target/report-bench"), PathBuf::from),
            no_postgres: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--intervals" => params.intervals = parse(&value()?)?,
                "--agents" => params.agents = parse(&value()?)?,
                "--days" => params.days = parse(&value()?)?,
                "--runs" => params.runs = parse(&value()?)?,
                "--dir" => params.dir = PathBuf::from(value()?),
                "--no-postgres" => params.no_postgres = true,
                // `cargo bench` passes `--bench`; ignore it and test filters.
                _ => {}
            }
        }
        let per_day = (params.intervals.saturating_sub(u64::from(params.agents)))
            / (u64::from(params.agents) * u64::from(params.days)).max(1);
        if params.agents == 0 || params.days < 3 || per_day < 2 || params.runs == 0 {
            return Err(format!(
                "need agents >= 1, days >= 3, runs >= 1 and at least 2 intervals per agent and day \
                 (got {per_day})"
            ));
        }
        Ok(params)
    }

    fn tag(&self) -> String {
        format!("{}_{}_{}", self.intervals, self.agents, self.days)
    }

    fn first_day(&self) -> NaiveDate {
        // A Monday; 28 days reach past the spring-forward Sunday 2026-03-29.
        NaiveDate::from_ymd_opt(2026, 3, 9).unwrap_or_default()
    }

    /// The day the single-day reports cover: a day in the middle.
    fn report_day(&self) -> NaiveDate {
        self.first_day() + chrono::Days::new(u64::from(self.days / 2))
    }

    /// "Now" for the reports: the local midnight after the last day.
    fn now(&self) -> DateTime<Utc> {
        start_of_local_day(
            self.first_day() + chrono::Days::new(u64::from(self.days)),
            TZ,
        )
    }
}

fn parse<T: std::str::FromStr>(raw: &str) -> Result<T, String> {
    raw.replace(['_', ','], "")
        .parse()
        .map_err(|_| format!("{raw:?} is not a number"))
}

/// One generated interval.
#[derive(Debug, Clone)]
struct Row {
    agent: u32,
    status: Status,
    started_at: i64,
    ended_at: Option<i64>,
    seq: i64,
}

impl Row {
    fn reason(&self) -> Option<&'static str> {
        match self.status {
            Status::Paused => Some("pause"),
            Status::Busy => Some("handling"),
            Status::Unavailable => Some("meeting"),
            _ => None,
        }
    }

    fn extension_status(&self) -> Option<&'static str> {
        match self.status {
            Status::Available => Some("idle"),
            Status::Ringing => Some("calling"),
            Status::OnCall => Some("called"),
            Status::Wrapup => Some("wrapup"),
            _ => None,
        }
    }

    fn destination(&self) -> String {
        format!("3120{:07}", self.agent)
    }
}

fn agent_name(agent: u32) -> String {
    format!("agent-{agent:05}")
}

/// Generates the history day by day, handing each day's rows (sorted by
/// start) to `sink`: the writer inserts them in time order.
struct Generator {
    params: Params,
    rng: StdRng,
    /// Per agent: when its current (offline) interval started.
    offline_since: Vec<i64>,
    next_seq: i64,
    base: u64,
    remainder: u64,
}

impl Generator {
    fn new(params: &Params) -> Self {
        let slots = u64::from(params.agents) * u64::from(params.days);
        let shift_intervals = params.intervals - u64::from(params.agents);
        let day_start = start_of_local_day(params.first_day(), TZ).timestamp_millis();
        Generator {
            params: params.clone(),
            rng: StdRng::seed_from_u64(20_261_122),
            offline_since: vec![day_start; params.agents as usize],
            next_seq: 1,
            base: shift_intervals / slots,
            remainder: shift_intervals % slots,
        }
    }

    fn next_status(&mut self, current: Status) -> Status {
        let roll: f64 = self.rng.gen();
        match current {
            Status::Available if roll < 0.85 => Status::Ringing,
            Status::Available if roll < 0.93 => Status::Paused,
            Status::Available if roll < 0.97 => Status::Unavailable,
            Status::Available => Status::Busy,
            Status::Ringing if roll < 0.9 => Status::OnCall,
            Status::OnCall => Status::Wrapup,
            _ => Status::Available,
        }
    }

    fn typical_seconds(status: Status) -> f64 {
        match status {
            Status::Available => 90.0,
            Status::Ringing => 8.0,
            Status::OnCall => 240.0,
            Status::Wrapup => 60.0,
            Status::Paused => 600.0,
            Status::Busy => 180.0,
            _ => 300.0,
        }
    }

    /// The rows that start on `day` (plus the offline interval each agent
    /// was in since the previous shift).
    fn day(&mut self, day: u32) -> Vec<Row> {
        let date = self.params.first_day() + chrono::Days::new(u64::from(day));
        let midnight = start_of_local_day(date, TZ).timestamp_millis();
        let mut rows = Vec::new();
        for agent in 0..self.params.agents {
            let slot = u64::from(day) * u64::from(self.params.agents) + u64::from(agent);
            let count = (self.base + u64::from(slot < self.remainder)) as usize;
            let shift_start = midnight + self.rng.gen_range(7 * 3_600_000..10 * 3_600_000);
            let shift_length: i64 = self.rng.gen_range(7 * 3_600_000..9 * 3_600_000);
            // The offline stretch since the last shift (it crosses midnight).
            rows.push(Row {
                agent,
                status: Status::Offline,
                started_at: self.offline_since[agent as usize],
                ended_at: Some(shift_start),
                seq: self.take_seq(),
            });
            // Then `count - 1` working intervals filling the shift.
            let mut statuses = Vec::with_capacity(count - 1);
            let mut weights = Vec::with_capacity(count - 1);
            let mut status = Status::Available;
            for _ in 1..count {
                statuses.push(status);
                weights.push(Self::typical_seconds(status) * self.rng.gen_range(0.3..1.7));
                status = self.next_status(status);
            }
            let total: f64 = weights.iter().sum();
            let mut at = shift_start;
            let mut elapsed = 0.0;
            for (status, weight) in statuses.into_iter().zip(weights) {
                elapsed += weight;
                let end = shift_start + (elapsed / total * shift_length as f64) as i64;
                let end = end.max(at + 1);
                rows.push(Row {
                    agent,
                    status,
                    started_at: at,
                    ended_at: Some(end),
                    seq: self.take_seq(),
                });
                at = end;
            }
            self.offline_since[agent as usize] = at;
        }
        rows.sort_by_key(|row| row.started_at);
        rows
    }

    /// Each agent's final, open offline interval.
    fn open_rows(&mut self) -> Vec<Row> {
        let mut rows: Vec<Row> = (0..self.params.agents)
            .map(|agent| Row {
                agent,
                status: Status::Offline,
                started_at: self.offline_since[agent as usize],
                ended_at: None,
                seq: self.take_seq(),
            })
            .collect();
        rows.sort_by_key(|row| row.started_at);
        rows
    }

    fn take_seq(&mut self) -> i64 {
        self.next_seq += 1;
        self.next_seq - 1
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn count(store: &Store) -> Result<i64, BoxError> {
    let sql = "SELECT COUNT(*) FROM intervals";
    Ok(store.scalar_unchecked(sql).await?.unwrap_or(0))
}

fn sqlite_insert_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO intervals (agent, status, reason, extension_status, destination, \
         started_at, ended_at, seq) VALUES {values}"
    )
}

async fn sqlite_insert(
    connection: &mut sqlx::SqliteConnection,
    rows: &[Row],
) -> Result<(), BoxError> {
    let mut transaction = connection.begin().await?;
    let full = sqlite_insert_sql(SQLITE_ROWS_PER_INSERT);
    for chunk in rows.chunks(SQLITE_ROWS_PER_INSERT) {
        let partial;
        let sql = if chunk.len() == SQLITE_ROWS_PER_INSERT {
            &full
        } else {
            partial = sqlite_insert_sql(chunk.len());
            &partial
        };
        let mut query = sqlx::query(sql);
        for row in chunk {
            query = query
                .bind(agent_name(row.agent))
                .bind(row.status.as_str())
                .bind(row.reason())
                .bind(row.extension_status())
                .bind(row.destination())
                .bind(row.started_at)
                .bind(row.ended_at)
                .bind(row.seq);
        }
        query.execute(&mut *transaction).await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// Opens the cached SQLite file, or generates it.
async fn sqlite_store(params: &Params) -> Result<(Store, PathBuf), BoxError> {
    std::fs::create_dir_all(&params.dir)?;
    let path = params.dir.join(format!("history_{}.db", params.tag()));
    if path.exists() {
        let store = Store::open(&sqlite_url(&path)).await?;
        if count(&store).await? == params.intervals as i64 {
            println!("sqlite: reusing {}", path.display());
            return Ok((store, path));
        }
        store.close().await;
    }
    let partial = path.with_extension("partial.db");
    remove_with_journals(&path);
    remove_with_journals(&partial);
    println!(
        "sqlite: generating {} intervals ({} agents, {} days) into {}",
        params.intervals,
        params.agents,
        params.days,
        path.display()
    );
    let started = Instant::now();
    let store = Store::open(&sqlite_url(&partial)).await?;
    let pool = store.sqlite_pool().ok_or("expected an sqlite store")?;
    let mut connection = pool.acquire().await?;
    // Generating, not recording: durability does not matter here.
    sqlx::query("PRAGMA synchronous = OFF")
        .execute(&mut *connection)
        .await?;
    sqlx::query("PRAGMA cache_size = -1000000")
        .execute(&mut *connection)
        .await?;
    let mut generator = Generator::new(params);
    for day in 0..params.days {
        let rows = generator.day(day);
        sqlite_insert(&mut connection, &rows).await?;
        progress(day + 1, params.days, started);
    }
    sqlite_insert(&mut connection, &generator.open_rows()).await?;
    // Everything into the main file before it is renamed.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut *connection)
        .await?;
    drop(connection);
    store.close().await;
    std::fs::rename(&partial, &path)?;
    remove_with_journals(&partial);
    println!(
        "sqlite: generated in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let store = Store::open(&sqlite_url(&path)).await?;
    let stored = count(&store).await?;
    if stored != params.intervals as i64 {
        return Err(format!(
            "generated {stored} intervals, expected {}",
            params.intervals
        )
        .into());
    }
    Ok((store, path))
}

/// Removes an SQLite file and its `-wal`/`-shm` companions, if present.
fn remove_with_journals(file: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        // Missing files are fine: this only clears leftovers.
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

fn progress(done: u32, total: u32, started: Instant) {
    if done.is_multiple_of(7) || done == total {
        println!(
            "  day {done}/{total} after {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

fn copy_line(out: &mut String, row: &Row) {
    use std::fmt::Write as _;
    let text = |value: Option<&str>| value.unwrap_or("\\N").to_owned();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        agent_name(row.agent),
        row.status.as_str(),
        text(row.reason()),
        text(row.extension_status()),
        row.destination(),
        row.started_at,
        row.ended_at.map_or("\\N".to_owned(), |end| end.to_string()),
        row.seq
    );
}

async fn postgres_copy(pool: &sqlx::PgPool, rows: &[Row]) -> Result<(), BoxError> {
    use sqlx::postgres::PgPoolCopyExt;
    let mut copy = pool
        .copy_in_raw(
            "COPY intervals (agent, status, reason, extension_status, destination, started_at, \
             ended_at, seq) FROM STDIN",
        )
        .await?;
    let mut buffer = String::with_capacity(8 << 20);
    for row in rows {
        copy_line(&mut buffer, row);
        if buffer.len() > (8 << 20) - 512 {
            copy.send(buffer.as_bytes()).await?;
            buffer.clear();
        }
    }
    if !buffer.is_empty() {
        copy.send(buffer.as_bytes()).await?;
    }
    copy.finish().await?;
    Ok(())
}

/// Opens the cached PostgreSQL bench database, or generates it.
async fn postgres_store(params: &Params, server_url: &str) -> Result<Store, BoxError> {
    let database = format!("pbx2mqtt_report_bench_{}", params.tag());
    let mut url = url::Url::parse(server_url)?;
    let mut admin = sqlx::PgConnection::connect(server_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&database)
            .fetch_one(&mut admin)
            .await?;
    url.set_path(&database);
    if exists {
        let store = Store::open(url.as_str()).await?;
        if count(&store).await? == params.intervals as i64 {
            println!("postgres: reusing database {database}");
            return Ok(store);
        }
        store.close().await;
        sqlx::query(&format!("DROP DATABASE {database}"))
            .execute(&mut admin)
            .await?;
    }
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    println!(
        "postgres: generating {} intervals into database {database}",
        params.intervals
    );
    let started = Instant::now();
    let store = Store::open(url.as_str()).await?;
    let pool = store.postgres_pool().ok_or("expected a postgres store")?;
    let mut generator = Generator::new(params);
    for day in 0..params.days {
        postgres_copy(pool, &generator.day(day)).await?;
        progress(day + 1, params.days, started);
    }
    postgres_copy(pool, &generator.open_rows()).await?;
    sqlx::query("VACUUM ANALYZE intervals")
        .execute(pool)
        .await?;
    println!(
        "postgres: generated in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(store)
}

/// What [`time`] measured.
struct Timing {
    median: Duration,
    min: Duration,
    max: Duration,
    /// This process's CPU time per run (all threads; for SQLite that is all
    /// the work, for PostgreSQL only the client side).
    cpu: Duration,
    /// Rows in the last result.
    rows: usize,
}

/// Median, min and max of `runs` timed runs after one warm-up.
async fn time<F, Fut>(runs: usize, mut run: F) -> Result<Timing, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, BoxError>>,
{
    let mut rows = run().await?;
    let mut times = Vec::with_capacity(runs);
    let cpu_before = process_cpu();
    for _ in 0..runs {
        let started = Instant::now();
        rows = run().await?;
        times.push(started.elapsed());
    }
    let cpu = process_cpu().saturating_sub(cpu_before) / u32::try_from(runs).unwrap_or(1);
    times.sort();
    Ok(Timing {
        median: times[times.len() / 2],
        min: times[0],
        max: times[times.len() - 1],
        cpu,
        rows,
    })
}

/// User plus system CPU time of this process so far (Linux; zero elsewhere).
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which ends with ')'): utime is the
    // 12th, stime the 13th, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

async fn measure(store: &Store, params: &Params) -> Result<(), BoxError> {
    // Every agent configured, with a display name, as at a real site.
    let settings = ReportSettings {
        tz: TZ,
        agents: (0..params.agents)
            .map(|agent| {
                let id = AgentId::parse(&agent_name(agent))?;
                Ok((id, format!("Agent {agent}")))
            })
            .collect::<Result<_, BoxError>>()?,
        // The benchmark measures the work; it is not bounded.
        limits: ReportLimits {
            max_cells: usize::MAX,
            max_timeline_rows: usize::MAX,
            ..ReportLimits::default()
        },
    };
    let now = params.now();
    let day = RangeBound::Date(params.report_day());
    let day_range = ReportRange::resolve(Some(day), Some(day), TZ, now)?;
    let week_end = RangeBound::Date(params.report_day() + chrono::Days::new(6));
    let week_range = ReportRange::resolve(Some(day), Some(week_end), TZ, now)?;
    let one_agent = vec![AgentId::parse(&agent_name(params.agents / 2))?];
    let cases: [(&str, SummaryRequest, usize); 4] = [
        (
            "summary, all agents, one day",
            SummaryRequest {
                range: day_range,
                by: Granularity::Day,
                agents: Vec::new(),
            },
            params.runs,
        ),
        (
            "summary, one agent, one day",
            SummaryRequest {
                range: day_range,
                by: Granularity::Day,
                agents: one_agent.clone(),
            },
            params.runs * 5,
        ),
        (
            "summary, all agents, one week by day",
            SummaryRequest {
                range: week_range,
                by: Granularity::Day,
                agents: Vec::new(),
            },
            params.runs.div_ceil(3),
        ),
        (
            "summary, all agents, one week total",
            SummaryRequest {
                range: week_range,
                by: Granularity::Total,
                agents: Vec::new(),
            },
            params.runs.div_ceil(3),
        ),
    ];
    // Other work on the machine inflates the times; the load says how much.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{}: reports for {} (Europe/Amsterdam), {} intervals stored; load average {}",
        store.backend(),
        params.report_day(),
        params.intervals,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (name, request, runs) in cases {
        let timing = time(runs, || async {
            Ok(summary(store, &request, &settings, now).await?.rows.len())
        })
        .await?;
        report_line(name, &timing, runs);
    }
    let request = TimelineRequest {
        range: day_range,
        agents: one_agent,
    };
    let runs = params.runs * 5;
    let timing = time(runs, || async {
        Ok(timeline(store, &request, &settings, now)
            .await?
            .intervals
            .len())
    })
    .await?;
    report_line("timeline, one agent, one day", &timing, runs);
    Ok(())
}

fn report_line(name: &str, timing: &Timing, runs: usize) {
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    println!(
        "  {name:<38} median {:>8.2} ms  (min {:.2}, max {:.2}; cpu {:.0} ms/run; {runs} runs, {} rows)",
        ms(timing.median),
        ms(timing.min),
        ms(timing.max),
        ms(timing.cpu),
        timing.rows,
    );
}

/// Measures the reports as the bridge's users get them: with the per-day
/// totals it keeps as it writes (built here from the generated intervals,
/// once, as the bridge does at its start; kept in the cached database).
/// Ranges that are not whole days read the intervals, as the summary rows
/// "one week by day"/"total" show when run before the totals existed.
async fn measure_both_paths(mut store: Store, params: &Params) -> Result<(), BoxError> {
    match store.keep_daily_totals(TZ).await? {
        pbx2mqtt::store::DailyTotals::Current => {
            println!("{}: per-day totals already kept (the intervals-only path was measured when they were built)", store.backend());
        }
        pbx2mqtt::store::DailyTotals::Rebuilt { intervals } => {
            println!("{}: per-day totals built from {intervals} intervals, as the bridge does at its start", store.backend());
        }
    }
    println!(
        "{}: with per-day totals (as the bridge keeps them)",
        store.backend()
    );
    measure(&store, params).await?;
    store.close().await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    let params = Params::from_args_and_env()?;
    let (store, _path) = sqlite_store(&params).await?;
    measure_both_paths(store, &params).await?;
    match std::env::var("PBX2MQTT_TEST_POSTGRES_URL") {
        Ok(url) if !params.no_postgres => {
            let store = postgres_store(&params, &url).await?;
            measure_both_paths(store, &params).await?;
        }
        _ => println!("postgres: skipped (set PBX2MQTT_TEST_POSTGRES_URL to measure it)"),
    }
    Ok(())
}
