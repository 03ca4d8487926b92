//! The standard `process_*` metrics of the Prometheus client libraries, read from `/proc`
//! at each scrape: CPU seconds, resident and virtual memory, open and maximum file
//! descriptors, threads and the start time. Where `/proc` cannot be read (not Linux) the
//! collector reports nothing.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, Opts};

/// The clock ticks per second `/proc/<pid>/stat` counts in (`USER_HZ`, 100 on every
/// architecture Linux exposes to user space).
const USER_HZ: f64 = 100.0;

/// What one read of `/proc/self` found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    threads: i64,
    open_fds: i64,
    max_fds: Option<i64>,
    start_time_seconds: f64,
}

/// The fields of `/proc/self/stat` after the command name, which may hold spaces and is
/// enclosed in the last `)` of the line.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    Some(after.split_whitespace().collect())
}

/// A `Name:   123 kB` line of `/proc/self/status`, in bytes (or a count without unit).
fn status_value(status: &str, name: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    let mut parts = line.get(name.len()..)?.split_whitespace();
    let n: i64 = parts.next()?.parse().ok()?;
    Some(match parts.next() {
        Some("kB") => n * 1024,
        _ => n,
    })
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.get("Max open files".len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Reads the sample from the text of `/proc/self/stat`, `/proc/self/status`,
/// `/proc/self/limits`, `/proc/stat` and the number of open descriptors.
pub(crate) fn parse(
    self_stat: &str,
    status: &str,
    limits: &str,
    system_stat: &str,
    open_fds: i64,
) -> Option<Sample> {
    let f = stat_fields(self_stat)?;
    // After the name: state is field 3 of the man page, so field n is f[n - 3].
    let ticks = |n: usize| -> Option<f64> { f.get(n - 3)?.parse::<f64>().ok() };
    let cpu = (ticks(14)? + ticks(15)?) / USER_HZ;
    let start = boot_time(system_stat)? + ticks(22)? / USER_HZ;
    Some(Sample {
        cpu_seconds: cpu,
        resident_bytes: status_value(status, "VmRSS:")?,
        virtual_bytes: status_value(status, "VmSize:")?,
        threads: status_value(status, "Threads:")?,
        open_fds,
        max_fds: max_open_files(limits),
        start_time_seconds: start,
    })
}

fn read() -> Option<Sample> {
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    parse(
        &std::fs::read_to_string("/proc/self/stat").ok()?,
        &std::fs::read_to_string("/proc/self/status").ok()?,
        &std::fs::read_to_string("/proc/self/limits").ok()?,
        &std::fs::read_to_string("/proc/stat").ok()?,
        open_fds,
    )
}

/// The collector, registered once in the process registry.
pub struct ProcessCollector {
    cpu: Counter,
    /// The CPU seconds already added to `cpu` (a counter only goes up by increments).
    cpu_seen: Mutex<f64>,
    resident: IntGauge,
    virtual_memory: IntGauge,
    threads: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    start_time: Gauge,
    descs: Vec<Desc>,
}

impl ProcessCollector {
    /// The collector of this process.
    pub fn new() -> Result<Self, prometheus::Error> {
        let cpu = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds",
        ))?;
        let resident = IntGauge::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
        )?;
        let virtual_memory = IntGauge::new(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
        )?;
        let threads = IntGauge::new("process_threads", "Number of OS threads in the process")?;
        let open_fds = IntGauge::new("process_open_fds", "Number of open file descriptors")?;
        let max_fds = IntGauge::new("process_max_fds", "Maximum number of open file descriptors")?;
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
        )?;
        let descs = [
            cpu.desc(),
            resident.desc(),
            virtual_memory.desc(),
            threads.desc(),
            open_fds.desc(),
            max_fds.desc(),
            start_time.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(Self {
            cpu,
            cpu_seen: Mutex::new(0.0),
            resident,
            virtual_memory,
            threads,
            open_fds,
            max_fds,
            start_time,
            descs,
        })
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(s) = read() else {
            return Vec::new();
        };
        if let Ok(mut seen) = self.cpu_seen.lock()
            && s.cpu_seconds > *seen
        {
            self.cpu.inc_by(s.cpu_seconds - *seen);
            *seen = s.cpu_seconds;
        }
        self.resident.set(s.resident_bytes);
        self.virtual_memory.set(s.virtual_bytes);
        self.threads.set(s.threads);
        self.open_fds.set(s.open_fds);
        self.start_time.set(s.start_time_seconds);
        let mut out = Vec::new();
        out.extend(self.cpu.collect());
        out.extend(self.resident.collect());
        out.extend(self.virtual_memory.collect());
        out.extend(self.threads.collect());
        out.extend(self.open_fds.collect());
        if let Some(max) = s.max_fds {
            self.max_fds.set(max);
            out.extend(self.max_fds.collect());
        }
        out.extend(self.start_time.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const STAT: &str = "4242 (primed (x) y) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 130 0 0 20 0 9 0 51000 1400000000 5000 18446744073709551615";
    const STATUS: &str = "Name:\tprimed\nVmSize:\t 1367188 kB\nVmRSS:\t   20000 kB\nThreads:\t9\n";
    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
    const SYSTEM: &str = "cpu  1 2 3\nbtime 1764000000\nprocesses 10\n";

    #[test]
    fn a_sample_is_read_from_proc_whatever_the_command_name_holds() {
        let s = parse(STAT, STATUS, LIMITS, SYSTEM, 17).unwrap();
        assert_eq!(
            s,
            Sample {
                cpu_seconds: 3.8,
                resident_bytes: 20_000 * 1024,
                virtual_bytes: 1_367_188 * 1024,
                threads: 9,
                open_fds: 17,
                max_fds: Some(1024),
                start_time_seconds: 1_764_000_000.0 + 510.0,
            }
        );
        assert!(parse("garbage", STATUS, LIMITS, SYSTEM, 1).is_none());
    }

    #[test]
    fn this_process_is_measured() {
        let c = ProcessCollector::new().unwrap();
        let families = c.collect();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        let start = families
            .iter()
            .find(|f| f.name() == "process_start_time_seconds")
            .unwrap()
            .get_metric()[0]
            .get_gauge()
            .get_value();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start > now - 3600.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
    }
}
