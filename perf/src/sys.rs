//! What the kernel says about processes and the machine: CPU time from `/proc/PID/stat`,
//! busy time from `/proc/stat`, resident memory from `/proc/PID/status`.

use std::collections::BTreeMap;
use std::process::Command;

/// Clock ticks per second (`getconf CLK_TCK`; 100 where it cannot be read).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads), in seconds; 0 if it is gone.
pub fn cpu_secs(pid: u32, tck: f64) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (t(11) + t(12)) as f64 / tck
}

/// Context switches of a process so far: voluntary + involuntary, summed over its live
/// threads (`/proc/PID/task/TID/status`); 0 if it is gone. On these VMs each one is a sleep
/// and a wake-up, which cost more than most of a small request's own work.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|s| {
            s.lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:")
                        || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// The CPU time of a process at one moment, two ways: utime + stime (whole process, dead
/// threads included, in clock ticks: 10 ms steps) and each live thread's run time from
/// `/proc/PID/task/TID/schedstat` (nanoseconds).
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    stat_secs: f64,
    threads: BTreeMap<u32, u64>,
}

/// Samples a process's CPU time.
pub fn cpu_sample(pid: u32, tck: f64) -> CpuSample {
    let mut threads = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            let ns = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()));
            if let Some(ns) = ns {
                threads.insert(tid, ns);
            }
        }
    }
    CpuSample {
        stat_secs: cpu_secs(pid, tck),
        threads,
    }
}

/// CPU seconds used between two samples: to the nanosecond from the threads' run times when
/// every thread of the first sample is still there, else (a thread ended, its time since the
/// first sample would be lost) from utime + stime.
pub fn cpu_delta(a: &CpuSample, b: &CpuSample) -> f64 {
    if !a.threads.is_empty() && a.threads.keys().all(|t| b.threads.contains_key(t)) {
        let ns: u64 = b
            .threads
            .iter()
            .map(|(t, v)| v.saturating_sub(a.threads.get(t).copied().unwrap_or(0)))
            .sum();
        ns as f64 / 1e9
    } else {
        b.stat_secs - a.stat_secs
    }
}

/// Idle time of all CPUs (idle + iowait), in seconds, and the number of CPUs.
///
/// On this kind of VM (tickless kernel) the busy fields of `/proc/stat` are sampled at the
/// tick and miss short bursts: with the hub, agent, simulator and client serving ~2,000
/// requests/s they added up to a tenth of what the processes' own utime + stime said, while
/// idle time is measured exactly on entering and leaving idle. So the machine's busy time over
/// an interval is `wall × CPUs − Δidle`, not the sum of the busy fields.
pub fn machine_idle_secs(tck: f64) -> (f64, usize) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut lines = s.lines();
    let f: Vec<u64> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let cpus = lines
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    let t = |i: usize| f.get(i).copied().unwrap_or(0);
    ((t(3) + t(4)) as f64 / tck, cpus.max(1))
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmRSS".to_owned())
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The open-files limit of this process (soft, hard).
pub fn nofile_limit() -> (u64, u64) {
    rlimit::Resource::NOFILE.get().unwrap_or((0, 0))
}

/// Raises the open-files limit ([`raise_nofile`]) and checks that `need` descriptors fit, with
/// an error that says what needs them and what the machine allows (`ulimit -Hn`).
pub fn need_files(need: u64, what: &str) -> Result<(), String> {
    let limit = raise_nofile();
    if need > limit {
        return Err(format!(
            "{what} need {need} open files; a process here may have {limit} (ulimit -Hn, which only a privileged user can raise)"
        ));
    }
    Ok(())
}

/// Raises this process's open-files limit to its hard limit (children started afterwards
/// inherit it) and returns the new soft limit. Many agents and their hub need one descriptor
/// per tunnel; the hard limit is what the machine allows without privileges, and a run that
/// needs more says so (see `fleet`).
pub fn raise_nofile() -> u64 {
    let (soft, hard) = nofile_limit();
    if soft < hard && rlimit::Resource::NOFILE.set(hard, hard).is_ok() {
        return hard;
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_needing_more_descriptors_than_allowed_says_so() {
        assert!(need_files(16, "a few").is_ok());
        let (_, hard) = nofile_limit();
        let err = need_files(hard + 1, "too many agents").unwrap_err();
        assert!(
            err.contains("too many agents") && err.contains("ulimit -Hn"),
            "{err}"
        );
        // The soft limit now stands at the hard one, for children started afterwards.
        assert_eq!(nofile_limit().0, hard);
    }
}
