//! What a process costs, from /proc: CPU time (user + system) and resident
//! memory (VmRSS now, VmHWM the peak since start or since the last reset).

use std::time::Instant;

use anyhow::{Context, Result, anyhow};

/// Clock ticks per second, the unit of /proc/<pid>/stat times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `self` or a pid.
#[derive(Debug, Clone, Copy)]
pub enum Process {
    Current,
    Pid(u32),
}

impl Process {
    fn path(self, file: &str) -> String {
        match self {
            Process::Current => format!("/proc/self/{file}"),
            Process::Pid(pid) => format!("/proc/{pid}/{file}"),
        }
    }

    /// CPU seconds used so far, all threads, user plus system; for
    /// `Current`, with the children it has waited for.
    pub fn cpu_seconds(self) -> Result<f64> {
        let stat = std::fs::read_to_string(self.path("stat")).context("reading stat")?;
        // The command name may hold spaces; the fields follow its ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .ok_or_else(|| anyhow!("unexpected /proc stat format"))?;
        // Fields 14 and 15 (utime, stime), then 16 and 17 (cutime, cstime:
        // the children waited for, such as the plain mail loop's process;
        // the server is waited for only at the end); the slice starts at
        // field 3.
        let ticks = |i: usize| -> Result<f64> {
            Ok(fields
                .get(i)
                .ok_or_else(|| anyhow!("short /proc stat"))?
                .parse::<f64>()?)
        };
        let children = match self {
            Process::Current => ticks(13)? + ticks(14)?,
            Process::Pid(_) => 0.0,
        };
        Ok((ticks(11)? + ticks(12)? + children) / ticks_per_second())
    }

    /// (VmRSS, VmHWM) in MiB.
    pub fn memory_mib(self) -> Result<(f64, f64)> {
        let status = std::fs::read_to_string(self.path("status")).context("reading status")?;
        let field = |name: &str| -> Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or_else(|| anyhow!("no {name} in /proc status"))?;
            let kib: f64 = line
                .split_whitespace()
                .nth(1)
                .ok_or_else(|| anyhow!("empty {name}"))?
                .parse()?;
            Ok(kib / 1024.0)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Resets VmHWM to the current RSS, so the next reading is this
    /// stretch's peak. False when the kernel refuses.
    pub fn reset_peak(self) -> bool {
        std::fs::write(self.path("clear_refs"), "5").is_ok()
    }
}

/// CPU seconds the whole machine spent busy (all processes), from /proc/stat.
fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .next()
        .ok_or_else(|| anyhow!("empty /proc/stat"))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Ok(busy / ticks_per_second())
}

/// CPU and memory over one stretch of the run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    /// Cores used by the load generator (this process).
    pub client_cores: f64,
    /// Cores used by the server.
    pub server_cores: f64,
    /// Cores used by everything else on the machine (noise).
    pub other_cores: f64,
    /// Server VmRSS at the end, MiB.
    pub rss_mib: f64,
    /// Server VmHWM over the stretch (or since start if it could not be reset), MiB.
    pub hwm_mib: f64,
}

/// Started at the beginning of a stretch; `finish` gives its [`Usage`].
pub struct Meter {
    server: Process,
    started: Instant,
    client_cpu: f64,
    server_cpu: f64,
    machine_cpu: f64,
}

impl Meter {
    pub fn start(server_pid: u32) -> Result<Self> {
        let server = Process::Pid(server_pid);
        server.reset_peak();
        Ok(Self {
            server,
            started: Instant::now(),
            client_cpu: Process::Current.cpu_seconds()?,
            server_cpu: server.cpu_seconds()?,
            machine_cpu: machine_busy_seconds()?,
        })
    }

    pub fn finish(&self) -> Result<Usage> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let (rss_mib, hwm_mib) = self.server.memory_mib()?;
        let client_cores = (Process::Current.cpu_seconds()? - self.client_cpu) / wall;
        let server_cores = (self.server.cpu_seconds()? - self.server_cpu) / wall;
        let machine_cores = (machine_busy_seconds()? - self.machine_cpu) / wall;
        Ok(Usage {
            client_cores,
            server_cores,
            other_cores: (machine_cores - client_cores - server_cores).max(0.0),
            rss_mib,
            hwm_mib,
        })
    }
}
