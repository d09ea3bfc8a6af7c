//! `summary`: the JSON lines `get --record` wrote, as Markdown tables.
//!
//! One table per case (what was requested), one row per path (label), in the order they were
//! first recorded. Latencies and CPU are medians over the rounds with (min–max); ratios are
//! taken within each round (the path's server CPU per request over the baseline's in the same
//! round) and then their median, so drift between rounds falls on both sides alike.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

/// Options of `kubehub-perf summary`.
#[derive(Debug, clap::Args)]
pub struct SummaryArgs {
    /// Files of JSON lines written by `kubehub-perf get --record`.
    #[arg(required = true)]
    records: Vec<PathBuf>,
    /// Paths (labels) the others' server CPU per request is compared with, round by round.
    #[arg(long, value_delimiter = ',', default_value = "direct,nginx")]
    baselines: Vec<String>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
            (l.min(*x), h.max(*x))
        })
}

/// `median (min–max)`, with `d` decimals; the range only when there are several values.
fn mr(v: &[f64], d: usize) -> String {
    if v.is_empty() {
        return String::new();
    }
    let m = median(v);
    if v.len() == 1 {
        return format!("{m:.d$}");
    }
    let (lo, hi) = range(v);
    format!("{m:.d$} ({lo:.d$}–{hi:.d$})")
}

/// Server CPU per request of a record: every process listed, this client excluded.
fn server_us(r: &Value) -> f64 {
    r["cpu_us"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_f64).sum())
        .unwrap_or(f64::NAN)
}

fn num(r: &Value, k: &str) -> f64 {
    r[k].as_f64().unwrap_or(f64::NAN)
}

/// The tables, as text.
pub fn render(records: &[Value], baselines: &[String]) -> String {
    let mut cases: Vec<String> = Vec::new();
    for r in records {
        let c = r["case"].as_str().unwrap_or("").to_owned();
        if !cases.contains(&c) {
            cases.push(c);
        }
    }
    let mut out = String::new();
    for case in &cases {
        let rs: Vec<&Value> = records
            .iter()
            .filter(|r| r["case"].as_str().unwrap_or("") == case)
            .collect();
        let mut labels: Vec<String> = Vec::new();
        for r in &rs {
            let l = r["label"].as_str().unwrap_or("").to_owned();
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
        // label -> round -> server µs per request
        let mut by_round: BTreeMap<&str, BTreeMap<u64, f64>> = BTreeMap::new();
        for r in &rs {
            by_round
                .entry(r["label"].as_str().unwrap_or(""))
                .or_default()
                .insert(r["round"].as_u64().unwrap_or(0), server_us(r));
        }
        let bases: Vec<&String> = baselines.iter().filter(|b| labels.contains(b)).collect();
        let first = rs.first().copied().cloned().unwrap_or(Value::Null);
        out += &format!(
            "\n### {case}\n\n{} requests/s, {} s per run, {} connections; medians over runs with (min–max)\n\n",
            num(&first, "rate"),
            first["duration"].as_u64().unwrap_or(0),
            first["connections"].as_u64().unwrap_or(0),
        );
        out += "| path | runs | B/answer | p50 ms | p99 ms | p99.9 ms | max ms | server CPU µs/request | servers µs/req |";
        for b in &bases {
            out += &format!(" ÷ {b} |");
        }
        out += " client µs/req | edge requests per read | errors | others % of a core |\n";
        out += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |";
        for _ in &bases {
            out += " --- |";
        }
        out += " --- | --- | --- | --- |\n";
        for label in &labels {
            let mine: Vec<&Value> = rs
                .iter()
                .copied()
                .filter(|r| r["label"].as_str().unwrap_or("") == label)
                .collect();
            let col = |k: &str| mine.iter().map(|r| num(r, k)).collect::<Vec<_>>();
            // Per process, in the order first recorded.
            let mut procs: Vec<String> = Vec::new();
            for r in &mine {
                for p in r["cpu_order"].as_array().into_iter().flatten() {
                    if let Some(p) = p.as_str() {
                        if !procs.iter().any(|x| x == p) {
                            procs.push(p.to_owned());
                        }
                    }
                }
                if let Some(m) = r["cpu_us"].as_object() {
                    for k in m.keys() {
                        if !procs.contains(k) {
                            procs.push(k.clone());
                        }
                    }
                }
            }
            let per_proc = procs
                .iter()
                .map(|p| {
                    let v: Vec<f64> = mine
                        .iter()
                        .filter_map(|r| r["cpu_us"][p.as_str()].as_f64())
                        .collect();
                    format!("{p} {:.1}", median(&v))
                })
                .collect::<Vec<_>>()
                .join(" + ");
            let totals: Vec<f64> = mine.iter().map(|r| server_us(r)).collect();
            let bytes = median(&col("bytes"));
            out += &format!(
                "| {label} | {} | {bytes:.0} | {} | {} | {} | {} | {per_proc} | {} |",
                mine.len(),
                mr(&col("p50_ms"), 3),
                mr(&col("p99_ms"), 3),
                mr(&col("p999_ms"), 3),
                mr(&col("max_ms"), 3),
                mr(&totals, 1),
            );
            for b in &bases {
                let mut ratios = Vec::new();
                if let (Some(mine), Some(base)) =
                    (by_round.get(label.as_str()), by_round.get(b.as_str()))
                {
                    for (round, us) in mine {
                        if let Some(bu) = base.get(round) {
                            if *bu > 0.0 {
                                ratios.push(us / bu);
                            }
                        }
                    }
                }
                out += &format!(
                    " {} |",
                    if label == *b {
                        "1".into()
                    } else {
                        mr(&ratios, 2)
                    }
                );
            }
            let edge: Vec<String> = mine
                .iter()
                .filter(|r| r["edge"].is_object())
                .map(|r| {
                    let n = num(r, "requests").max(1.0);
                    let e = &r["edge"];
                    format!(
                        "{:.3} ({:.3} probes, {:.3} this path)",
                        e["total"].as_f64().unwrap_or(0.0) / n,
                        e["probes"].as_f64().unwrap_or(0.0) / n,
                        e["target"].as_f64().unwrap_or(0.0) / n
                    )
                })
                .collect();
            // The edge column: the median run's figures would hide a stray read: show the
            // largest (runs sorted by total per read).
            let edge_col = edge
                .iter()
                .max_by(|a, b| {
                    let f = |s: &String| {
                        s.split_whitespace()
                            .next()
                            .and_then(|x| x.parse::<f64>().ok())
                            .unwrap_or(0.0)
                    };
                    f(a).total_cmp(&f(b))
                })
                .cloned()
                .unwrap_or_default();
            let errors: f64 = col("errors").iter().sum();
            let notes: Vec<&str> = mine
                .iter()
                .filter_map(|r| r["note"].as_str())
                .filter(|n| !n.is_empty())
                .collect();
            out += &format!(
                " {} | {edge_col} | {errors:.0}{} | {} |\n",
                mr(&col("client_us"), 1),
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({} runs: {})", notes.len(), notes.join(", "))
                },
                mr(&col("others_pct"), 0),
            );
        }
    }
    out
}

/// `kubehub-perf summary`.
pub fn run(a: SummaryArgs) -> Result<(), String> {
    let mut records = Vec::new();
    for p in &a.records {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            records.push(
                serde_json::from_str::<Value>(line)
                    .map_err(|e| format!("{}:{}: {e}", p.display(), i + 1))?,
            );
        }
    }
    print!("{}", render(&records, &a.baselines));
    Ok(())
}

/// A scenario's report as Markdown: runs (latencies, errors, per-process CPU and memory),
/// ratios of the hub against each peer measured in the same round, figures, notes, plots.
pub fn markdown(r: &crate::report::Report, plots: &[std::path::PathBuf]) -> String {
    use std::fmt::Write;
    let ms = |us: f64| format!("{:.3}", us / 1000.0);
    let mut s = String::new();
    let _ = writeln!(s, "# kubehub-perf {}\n", r.scenario);
    let _ = writeln!(s, "Command: `{}`  ", r.command);
    let _ = writeln!(
        s,
        "Started {} on {} cores, Linux {}, {} MiB, open files {}/{}.\n",
        r.started,
        r.machine.cores,
        r.machine.kernel,
        r.machine.memory_mib,
        r.machine.nofile.0,
        r.machine.nofile.1
    );
    if r.runs.iter().any(|run| !run.ops.is_empty()) {
        let _ = writeln!(s, "## Latency (ms, from the intended send time)\n");
        let _ = writeln!(
            s,
            "| target | round | op | rate offered | ok | errors | per s | p50 | p90 | p99 | p99.9 | max |"
        );
        let _ = writeln!(
            s,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for run in &r.runs {
            for o in &run.ops {
                let errors = if o.errors.is_empty() {
                    "0".to_owned()
                } else {
                    o.errors
                        .iter()
                        .map(|(k, v)| format!("{v} {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                    run.target,
                    run.round,
                    o.name,
                    run.offered_rate,
                    o.ok,
                    errors,
                    o.throughput,
                    ms(o.p50_us),
                    ms(o.p90_us),
                    ms(o.p99_us),
                    ms(o.p999_us),
                    ms(o.max_us)
                );
            }
        }
        s.push('\n');
    }
    if r.runs.iter().any(|run| !run.procs.is_empty()) {
        let _ = writeln!(s, "## Server processes\n");
        let _ = writeln!(
            s,
            "| target | round | process | CPU s | CPU µs per request | RSS MiB |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
        for run in &r.runs {
            for p in &run.procs {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.2} | {} | {:.1} |",
                    run.target,
                    run.round,
                    p.name,
                    p.cpu_secs,
                    p.cpu_us_per_request
                        .map_or("-".to_owned(), |v| format!("{v:.1}")),
                    p.rss_kib as f64 / 1024.0
                );
            }
        }
        s.push('\n');
        // Ratios within a round: the hub's side against every other target.
        let mut lines = Vec::new();
        for hub in r.runs.iter().filter(|x| x.target.starts_with("kubehub")) {
            for peer in r
                .runs
                .iter()
                .filter(|x| x.round == hub.round && !x.target.starts_with("kubehub"))
            {
                let (Some(a), Some(b)) = (hub.cpu_us_per_request(), peer.cpu_us_per_request())
                else {
                    continue;
                };
                let p99 = |run: &crate::report::Run| run.ops.first().map_or(0.0, |o| o.p99_us);
                lines.push(format!(
                    "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} |",
                    hub.round,
                    hub.target,
                    peer.target,
                    a,
                    b,
                    if b > 0.0 { a / b } else { f64::NAN },
                    if p99(peer) > 0.0 {
                        p99(hub) / p99(peer)
                    } else {
                        f64::NAN
                    }
                ));
            }
        }
        if !lines.is_empty() {
            let _ = writeln!(s, "## KubeHub against the others, same round\n");
            let _ = writeln!(
                s,
                "| round | kubehub | other | kubehub CPU µs/req | other CPU µs/req | CPU ratio | p99 ratio |"
            );
            let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
            for l in lines {
                let _ = writeln!(s, "{l}");
            }
            s.push('\n');
        }
    }
    if r.runs.iter().any(|run| !run.figures.is_empty()) {
        let _ = writeln!(s, "## Figures\n");
        let _ = writeln!(s, "| target | round | figure | value |");
        let _ = writeln!(s, "| --- | --- | --- | --- |");
        for run in &r.runs {
            for (k, v) in &run.figures {
                let _ = writeln!(s, "| {} | {} | {k} | {v:.2} |", run.target, run.round);
            }
        }
        s.push('\n');
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
        s.push('\n');
    }
    if !plots.is_empty() {
        let _ = writeln!(s, "## Plots\n");
        for p in plots {
            if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                let _ = writeln!(s, "![{name}]({name})");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_rounds() {
        let rec = |label: &str, round: u64, us: f64| {
            serde_json::json!({"case": "GET", "label": label, "round": round, "rate": 100.0,
                "duration": 10, "connections": 8, "requests": 1000, "errors": 0, "bytes": 1500,
                "p50_ms": 0.1, "p99_ms": 0.2, "p999_ms": 0.3, "max_ms": 0.4, "client_us": 20.0,
                "others_pct": 1.0, "note": "", "cpu_us": {"x": us}})
        };
        let recs = vec![
            rec("direct", 1, 10.0),
            rec("hub", 1, 20.0),
            rec("direct", 2, 20.0),
            rec("hub", 2, 60.0),
        ];
        let t = render(&recs, &["direct".into()]);
        assert!(t.contains("| hub | 2 | 1500 |"), "{t}");
        // Per-round ratios 2 and 3: median 2.50.
        assert!(t.contains("| 2.50 (2.00–3.00) |"), "{t}");
    }
}
