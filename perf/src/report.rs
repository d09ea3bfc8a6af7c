//! What a scenario run produces: per operation HDR latencies, per server process its memory
//! and CPU time, series for plots, and notes; written into an output folder as
//! `report.json`, `summary.md` and PNG plots (see [`crate::plot`]).
//!
//! Every scenario fills one [`Report`]: a [`Run`] per target measured (`kubehub`, a peer,
//! `direct`) and round, and [`Series`] for the curves (RSS against agents, agents back over
//! time). Ratios against peers are computed from runs of the same round.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One operation's outcome in one run (latencies in microseconds, from the intended send time).
#[derive(Debug, Clone, Serialize, Default)]
pub struct OpStats {
    /// `get`, `list`, `watch`, `write`, `event`, ...
    pub name: String,
    /// Answers that succeeded.
    pub ok: u64,
    /// Failures by kind (`status 503`, `timeout`, `connect`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Successful answers per second over the measured interval.
    pub throughput: f64,
    /// Percentiles in µs.
    pub p50_us: f64,
    /// 90th percentile (µs).
    pub p90_us: f64,
    /// 99th percentile (µs).
    pub p99_us: f64,
    /// 99.9th percentile (µs).
    pub p999_us: f64,
    /// Largest (µs).
    pub max_us: f64,
    /// (percentile, µs) points for the latency-by-percentile plot.
    pub curve: Vec<(f64, f64)>,
}

impl OpStats {
    /// Figures from a histogram of microseconds, measured over `secs`.
    pub fn from_hist(
        name: &str,
        h: &Histogram<u64>,
        errors: BTreeMap<String, u64>,
        secs: f64,
    ) -> OpStats {
        let q = |p: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(p) as f64
            }
        };
        let curve = if h.is_empty() {
            Vec::new()
        } else {
            // 0, 90, 99, 99.9, ... up to the count's resolution: the "nines" axis.
            let mut pts = Vec::new();
            for i in 0..=60 {
                let nines = i as f64 / 10.0; // 0.0 .. 6.0
                let p = 1.0 - 10f64.powf(-nines);
                if (1.0 - p) * (h.len() as f64) < 1.0 && i > 0 {
                    break;
                }
                pts.push((p * 100.0, h.value_at_quantile(p) as f64));
            }
            pts.push((100.0, h.max() as f64));
            pts
        };
        OpStats {
            name: name.to_owned(),
            ok: h.len(),
            errors,
            throughput: if secs > 0.0 {
                h.len() as f64 / secs
            } else {
                0.0
            },
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0.0 } else { h.max() as f64 },
            curve,
        }
    }

    /// Errors of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One server process during a run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcStats {
    /// `hub`, `agent`, `nginx`, `rathole-server`, ...
    pub name: String,
    /// Resident memory at the end of the run (KiB).
    pub rss_kib: u64,
    /// CPU time (user + system) over the measured interval (s).
    pub cpu_secs: f64,
    /// `cpu_secs` divided by the successful requests of the run (µs), when that means
    /// something for the scenario.
    pub cpu_us_per_request: Option<f64>,
}

/// One target measured once: the hub, a peer or the direct path, in one round.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Run {
    /// `kubehub`, `nginx-static`, `nginx-proxy`, `rathole`, `direct`, or a variant
    /// (`kubehub+stall`).
    pub target: String,
    /// Round number (rounds alternate targets, so a ratio compares runs of one round).
    pub round: u32,
    /// Requests per second offered (open loop), 0 when not a rate-driven run.
    pub offered_rate: f64,
    /// Measured seconds.
    pub secs: f64,
    /// Per operation.
    pub ops: Vec<OpStats>,
    /// Per server process.
    pub procs: Vec<ProcStats>,
    /// Other figures (`MB/s`, `deliveries/s`, `KiB per agent`, ...).
    pub figures: BTreeMap<String, f64>,
}

impl Run {
    /// Sum of the server processes' CPU per request (µs), if every process has one.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        if self.procs.is_empty() {
            return None;
        }
        self.procs.iter().map(|p| p.cpu_us_per_request).sum()
    }
}

/// A curve for a plot: RSS against agents, agents back against time.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Series {
    /// File name stem of the plot (`rss-per-agent`).
    pub name: String,
    /// Title.
    pub title: String,
    /// Axis labels.
    pub x_label: String,
    /// Axis labels.
    pub y_label: String,
    /// Named lines of (x, y) points.
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Machine {
    /// CPUs online.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// Total memory (MiB).
    pub memory_mib: u64,
    /// The file-descriptor limit this process runs with (soft, hard).
    pub nofile: (u64, u64),
}

impl Machine {
    /// What this machine is.
    pub fn here() -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            memory_mib,
            nofile: crate::sys::nofile_limit(),
        }
    }
}

/// Everything one scenario run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// The scenario (`idle`, `cache-get`, ...).
    pub scenario: String,
    /// The command line that produced it.
    pub command: String,
    /// When it started (RFC 3339, UTC).
    pub started: String,
    /// Where.
    pub machine: Machine,
    /// The runs, in the order measured.
    pub runs: Vec<Run>,
    /// Curves.
    pub series: Vec<Series>,
    /// Findings worth reading with the figures (what stopped a larger N, a busy machine...).
    pub notes: Vec<String>,
}

impl Report {
    /// A report for `scenario`, stamped with the command line, the time and the machine.
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            started: kubehub_kapi::time::now_rfc3339(),
            machine: Machine::here(),
            ..Report::default()
        }
    }

    /// Writes `report.json`, `summary.md` and the plots into `dir` (created). A plot that
    /// cannot be drawn (no font found) is reported in the summary, not fatal: the figures
    /// are in the JSON and the Markdown either way.
    pub fn write(&mut self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut plots = Vec::new();
        match crate::plot::draw_all(self, dir) {
            Ok(p) => plots = p,
            Err(e) => self.notes.push(format!("plots not drawn: {e}")),
        }
        let json = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let path = dir.join("report.json");
        std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
        let md = crate::summary::markdown(self, &plots);
        let path = dir.join("summary.md");
        std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(())
    }
}
