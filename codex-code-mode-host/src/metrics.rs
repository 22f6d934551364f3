//! `GetProcessMetrics`, answered for real from `/proc`: the host's start time, and the CPU
//! seconds and resident memory of the front process and its runtime process together
//! (and of the runtime alone). Codex's own host answers UNIMPLEMENTED.

use crate::proto::GetProcessMetricsResponse;
use std::io;

/// One process's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessFigures {
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn boot_time() -> io::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .ok_or_else(|| io::Error::other("/proc/stat has no btime"))
}

/// The CPU time process `pid` (0 for this one) has used, to the nanosecond, from its CPU
/// clock; `None` when the clock cannot be read. `/proc/<pid>/stat` counts it in clock ticks
/// (10 ms), which a process that started a moment ago has not used up yet.
fn cpu_clock_seconds(pid: libc::pid_t) -> Option<f64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid out-pointer; the call only reads `pid`.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return None;
    }
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out-pointer and `clock` a clock id the kernel just gave.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return None;
    }
    Some(now.tv_sec as f64 + now.tv_nsec as f64 / 1e9)
}

/// The figures of process `pid` (`self` for this one).
pub fn process(pid: &str) -> io::Result<ProcessFigures> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let after = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3 (index 0); utime 14, stime 15, starttime 22, rss 24.
    let field = |number: usize| -> io::Result<f64> {
        fields
            .get(number - 3)
            .and_then(|value| value.parse::<f64>().ok())
            .ok_or_else(|| io::Error::other("malformed /proc stat"))
    };
    let ticks = clock_ticks();
    let rss_pages = field(24)?;
    let clock_pid = if pid == "self" {
        Some(0)
    } else {
        pid.parse::<libc::pid_t>().ok()
    };
    let cpu_seconds = match clock_pid.and_then(cpu_clock_seconds) {
        Some(seconds) => seconds,
        None => (field(14)? + field(15)?) / ticks,
    };
    Ok(ProcessFigures {
        start_time_seconds: boot_time()? + field(22)? / ticks,
        cpu_seconds,
        resident_bytes: (rss_pages as u64).saturating_mul(page_size()),
    })
}

/// The answer to `GetProcessMetrics`.
pub fn snapshot(runtime_pid: Option<u32>) -> io::Result<GetProcessMetricsResponse> {
    let front = process("self")?;
    let runtime = runtime_pid
        .and_then(|pid| process(&pid.to_string()).ok())
        .unwrap_or_default();
    Ok(GetProcessMetricsResponse {
        process_start_time_seconds: front.start_time_seconds,
        cpu_seconds_total: front.cpu_seconds + runtime.cpu_seconds,
        resident_memory_bytes: front.resident_bytes + runtime.resident_bytes,
        runtime_cpu_seconds_total: runtime.cpu_seconds,
        runtime_resident_memory_bytes: runtime.resident_bytes,
        runtime_pid: runtime_pid.unwrap_or(0),
    })
}
