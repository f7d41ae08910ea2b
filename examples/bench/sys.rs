//! Linux process facts from /proc (resident memory, CPU time), the open
//! file limit, and a description of the machine. Parsing is split from
//! reading so it can be tested.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_whitespace();
    let kb: u64 = it.next()?.parse().ok()?;
    (it.next() == Some("kB")).then_some(kb * 1024)
}

/// utime + stime (clock ticks) of a `/proc/<pid>/stat` text. The command
/// name may hold spaces and parentheses: fields are counted after the last `)`.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")" the first field is #3 (state); utime is #14, stime #15.
    let utime: u64 = f.get(14 - 3)?.parse().ok()?;
    let stime: u64 = f.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vmrss(&text).with_context(|| format!("no VmRSS in {path}"))
}

pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&text).with_context(|| format!("cannot parse {path}"))
}

pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// CPU time a process used since `start` as a percentage of one core.
pub struct CpuMeter {
    pid: u32,
    ticks: u64,
    at: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Result<Self> {
        Ok(CpuMeter {
            pid,
            ticks: cpu_ticks(pid)?,
            at: Instant::now(),
        })
    }

    pub fn percent_of_core(&self) -> Result<f64> {
        let used = cpu_ticks(self.pid)?.saturating_sub(self.ticks);
        Ok(cpu_percent(used, clock_ticks_per_sec(), self.at.elapsed()))
    }
}

/// A process's peak resident memory, sampled in the background until
/// [`PeakRss::stop`].
pub struct PeakRss {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    /// Samples `pid` every `every`, starting from its RSS now.
    pub fn start(pid: u32, every: Duration) -> Result<Self> {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, AtomicU64, Ordering},
        };
        let peak = Arc::new(AtomicU64::new(rss_bytes(pid)?));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok(r) = rss_bytes(pid) {
                    p.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(every).await;
            }
        });
        Ok(PeakRss { peak, stop, task })
    }

    /// Stops sampling; the highest RSS seen, bytes.
    pub async fn stop(self) -> u64 {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

pub fn cpu_percent(ticks: u64, per_sec: u64, wall: Duration) -> f64 {
    let secs = wall.as_secs_f64();
    if secs <= 0.0 || per_sec == 0 {
        return 0.0;
    }
    ticks as f64 / per_sec as f64 / secs * 100.0
}

/// Raises the soft (and if need be the hard) open-file limit so this
/// process and the servers it starts can hold `needed` sockets. Fails with
/// what to do when the system will not allow it.
pub fn raise_nofile(needed: u64) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!(
            "getrlimit(RLIMIT_NOFILE) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    if lim.rlim_cur >= needed {
        return Ok(lim.rlim_cur);
    }
    // Try to lift the hard limit too (root may); else settle for it.
    let want = needed.max(lim.rlim_max);
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: setrlimit only reads the struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(want);
    }
    let soft_only = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if lim.rlim_max >= needed && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft_only) } == 0 {
        return Ok(lim.rlim_max);
    }
    bail!(
        "cannot raise the open-file limit to {needed} (soft {}, hard {}): {}. \
         Run as root, or raise the hard limit first (`ulimit -Hn {needed}` in a root shell, \
         or LimitNOFILE= for a service), or benchmark fewer agents with --agents",
        lim.rlim_cur,
        lim.rlim_max,
        std::io::Error::last_os_error()
    )
}

/// Busy and total jiffies of all CPUs, from the first line of /proc/stat.
pub fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal …
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    let total: u64 = v.iter().take(8).sum();
    Some((total - idle, total))
}

/// Share of all cores busy over `over` (whoever uses them), in percent.
pub async fn machine_busy(over: Duration) -> Result<f64> {
    let read = || -> Result<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/stat")?;
        parse_proc_stat(&s).context("cannot parse /proc/stat")
    };
    let (b0, t0) = read()?;
    tokio::time::sleep(over).await;
    let (b1, t1) = read()?;
    Ok(if t1 > t0 {
        (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0
    } else {
        0.0
    })
}

/// Cores, memory, CPU model and kernel, read from the system.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("{cores} cores ({model}), {mem} memory, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vmrss_in_bytes() {
        let s = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss(s), Some(12345 * 1024));
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
        assert_eq!(parse_vmrss("VmRSS:\t12 MB\n"), None, "unknown unit");
    }

    #[test]
    fn reads_utime_plus_stime_past_a_tricky_name() {
        // Fields 14 and 15 are 11 and 7.
        let s = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 11 7 0 0 20 0 3 0 100 1000 50";
        assert_eq!(parse_stat_cpu(s), Some(18));
        assert_eq!(parse_stat_cpu("42 (x) S 1"), None);
    }

    #[test]
    fn machine_busy_share_from_proc_stat() {
        let s = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(s), Some((150, 1000)));
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
    }

    #[test]
    fn cpu_percent_of_one_core() {
        assert_eq!(cpu_percent(100, 100, Duration::from_secs(10)), 10.0);
        assert_eq!(cpu_percent(0, 100, Duration::from_secs(10)), 0.0);
        assert_eq!(cpu_percent(5, 100, Duration::ZERO), 0.0);
    }
}
