//! Memory and CPU samplers of the child processes (from /proc).

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::processes::ChildProcess;
use crate::stats::{lock, round1};

/// One reading of a process's memory, kB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Seconds since sampling started.
    pub at_s: f64,
    /// VmRSS.
    pub rss_kb: u64,
    /// VmHWM (peak RSS so far).
    pub hwm_kb: u64,
}

/// Reads a process's VmRSS and VmHWM every second.
pub struct MemorySampler {
    /// The process.
    pub pid: u32,
    /// Every reading.
    pub samples: Arc<Mutex<Vec<Memory>>>,
    /// When sampling started.
    pub started: Instant,
    /// The sampling task.
    pub task: tokio::task::JoinHandle<()>,
}

impl MemorySampler {
    pub fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let task = {
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    if let Some(memory) = read_memory(pid, started) {
                        lock(&samples).push(memory);
                    }
                }
            })
        };
        Self {
            pid,
            samples,
            started,
            task,
        }
    }

    /// A reading now (also kept with the samples).
    pub fn current(&self) -> Option<Memory> {
        let memory = read_memory(self.pid, self.started)?;
        lock(&self.samples).push(memory);
        Some(memory)
    }

    /// The highest VmHWM seen.
    pub fn peak(&self) -> Option<u64> {
        lock(&self.samples).iter().map(|m| m.hwm_kb).max()
    }

    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn samples_json(&self) -> Json {
        let mut samples = lock(&self.samples).clone();
        samples.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        Json::Array(
            samples
                .iter()
                .map(|m| json!({"at_s": (m.at_s * 10.0).round() / 10.0, "rss_kb": m.rss_kb, "hwm_kb": m.hwm_kb}))
                .collect(),
        )
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn read_memory(pid: u32, started: Instant) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|line| line.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(Memory {
        at_s: started.elapsed().as_secs_f64(),
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// The processes whose CPU time is reported.
pub struct Processes {
    /// Name and pid.
    pub list: Vec<(String, u32)>,
    /// Clock ticks per second (`getconf CLK_TCK`).
    pub ticks_per_second: f64,
}

/// CPU times at one instant: per process (ticks) and the whole machine.
pub struct CpuSample {
    /// Ticks per process, same order as [`Processes::list`].
    pub processes: Vec<Option<u64>>,
    /// Machine-wide (busy, total) ticks from `/proc/stat`.
    pub machine: Option<(u64, u64)>,
}

impl Processes {
    pub fn find(bridge: &ChildProcess, simulator: &ChildProcess, broker: Option<u32>) -> Self {
        let mut list = vec![
            ("bridge".to_owned(), bridge.pid()),
            ("simulator".to_owned(), simulator.pid()),
            ("bench (subscriber)".to_owned(), std::process::id()),
        ];
        if let Some(pid) = broker {
            list.push(("broker".to_owned(), pid));
        }
        Self::from_list(list)
    }

    /// These processes (name, pid).
    pub fn from_list(list: Vec<(String, u32)>) -> Self {
        let ticks_per_second = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        Self {
            list,
            ticks_per_second,
        }
    }

    pub fn cpu_sample(&self) -> CpuSample {
        CpuSample {
            processes: self
                .list
                .iter()
                .map(|(_, pid)| process_ticks(*pid))
                .collect(),
            machine: machine_ticks(),
        }
    }

    /// Percent of one core per process, and of all cores for the machine.
    pub fn cpu_percentages(
        &self,
        before: &CpuSample,
        after: &CpuSample,
        seconds: f64,
    ) -> (Vec<(String, f64)>, Option<f64>) {
        let per_process = self
            .list
            .iter()
            .zip(before.processes.iter().zip(&after.processes))
            .filter_map(|((name, _), (before, after))| {
                let ticks = after.as_ref()?.checked_sub(*before.as_ref()?)?;
                Some((
                    name.clone(),
                    ticks as f64 / self.ticks_per_second / seconds * 100.0,
                ))
            })
            .collect();
        let machine = match (before.machine, after.machine) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                Some((busy1 - busy0) as f64 / (total1 - total0) as f64 * 100.0)
            }
            _ => None,
        };
        (per_process, machine)
    }

    pub fn cpu_json(&self, before: &CpuSample, after: &CpuSample, seconds: f64) -> Json {
        let (per_process, machine) = self.cpu_percentages(before, after, seconds);
        json!({
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "machine_busy_percent_of_all_cores": machine.map(round1),
            "percent_of_one_core": per_process
                .into_iter()
                .map(|(name, percent)| (name, json!(round1(percent))))
                .collect::<serde_json::Map<_, _>>(),
        })
    }

    pub fn cpu_summary(&self, before: &CpuSample, after: &CpuSample, seconds: f64) -> String {
        let (per_process, machine) = self.cpu_percentages(before, after, seconds);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let parts: Vec<String> = per_process
            .iter()
            .map(|(name, percent)| format!("{name} {percent:.0}%"))
            .collect();
        let ours: f64 = per_process.iter().map(|(_, percent)| percent).sum::<f64>() / cores as f64;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        format!(
            "CPU in the window ({cores} cores shared by all processes; % of one core): {}; machine busy {}, \
             of which other processes {}; load average {}",
            parts.join(", "),
            machine.map_or("?".to_owned(), |m| format!("{m:.0}% of all cores")),
            machine.map_or("?".to_owned(), |m| format!("{:.0}%", (m - ours).max(0.0))),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        )
    }
}

/// utime + stime of a process, in clock ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at
    // field 3 (state); utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Machine-wide (busy, total) ticks.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}
