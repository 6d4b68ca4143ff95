//! Host and process statistics for `stats`.

use std::sync::Mutex;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::backend::AcceleratorMemory;
use crate::protocol::StatsInfo;

const GB: f64 = 1e9;
const MIB: f64 = (1u64 << 20) as f64;

/// Total host memory in bytes, if it can be read.
pub fn total_memory_bytes() -> Option<u64> {
    let mut s = System::new();
    s.refresh_memory();
    Some(s.total_memory()).filter(|&m| m > 0)
}

/// Samples host CPU, memory and load, and this process's RSS and CPU use.
/// CPU percentages cover the time since the previous sample (the first
/// covers the time since [`HostStats::new`]).
pub struct HostStats {
    system: Mutex<System>,
    pid: Option<Pid>,
}

impl Default for HostStats {
    fn default() -> HostStats {
        HostStats::new()
    }
}

impl HostStats {
    /// Starts the sampling window.
    pub fn new() -> HostStats {
        let pid = sysinfo::get_current_pid().ok();
        let mut system = System::new();
        system.refresh_cpu_usage();
        if let Some(pid) = pid {
            system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
        }
        HostStats {
            system: Mutex::new(system),
            pid,
        }
    }

    /// Takes a sample (blocking: it reads `/proc`).
    pub fn sample(&self, device: &str, accelerator: Option<AcceleratorMemory>) -> StatsInfo {
        let h = self.host();
        StatsInfo {
            cpu_percent: h.cpu_percent,
            cpu_count: h.cpu_count,
            load_avg: h.load_avg,
            memory_total_gb: h.memory_total_bytes as f64 / GB,
            memory_used_gb: h.memory_used_bytes as f64 / GB,
            memory_percent: if h.memory_total_bytes > 0 {
                100.0 * h.memory_used_bytes as f64 / h.memory_total_bytes as f64
            } else {
                0.0
            },
            process_rss_mb: h.process_rss_bytes as f64 / MIB,
            process_cpu_percent: h.process_cpu_percent,
            device: device.to_owned(),
            accelerator_memory_total_mb: accelerator.map(|m| m.total as f64 / MIB),
            accelerator_memory_used_mb: accelerator
                .map(|m| m.total.saturating_sub(m.free) as f64 / MIB),
            accelerator_memory_free_mb: accelerator.map(|m| m.free as f64 / MIB),
            gpu: None,
        }
    }

    /// Takes a sample in bytes and percents (blocking: it reads `/proc`).
    pub fn host(&self) -> HostSample {
        let mut s = self.system.lock().unwrap_or_else(|p| p.into_inner());
        s.refresh_cpu_usage();
        s.refresh_memory();
        let (rss, proc_cpu) = match self.pid {
            Some(pid) => {
                s.refresh_processes_specifics(
                    ProcessesToUpdate::Some(&[pid]),
                    false,
                    ProcessRefreshKind::nothing().with_cpu().with_memory(),
                );
                s.process(pid)
                    .map_or((0, 0.0), |p| (p.memory(), p.cpu_usage() as f64))
            }
            None => (0, 0.0),
        };
        let load = System::load_average();
        HostSample {
            cpu_percent: s.global_cpu_usage() as f64,
            cpu_count: s.cpus().len() as u64,
            load_avg: [load.one, load.five, load.fifteen],
            memory_total_bytes: s.total_memory(),
            memory_used_bytes: s.used_memory(),
            process_rss_bytes: rss,
            process_cpu_percent: proc_cpu,
        }
    }
}

/// One reading of the host and of this process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HostSample {
    /// Host CPU use since the previous sample, % of all cores.
    pub cpu_percent: f64,
    /// Logical CPUs.
    pub cpu_count: u64,
    /// 1, 5 and 15 minute load averages.
    pub load_avg: [f64; 3],
    /// Host memory, bytes.
    pub memory_total_bytes: u64,
    /// Host memory in use, bytes.
    pub memory_used_bytes: u64,
    /// This process's resident memory, bytes.
    pub process_rss_bytes: u64,
    /// This process's CPU use since the previous sample, % of one core.
    pub process_cpu_percent: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_real() {
        let h = HostStats::new();
        // Burn a little CPU so the process figure has something to show.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let s = h.sample("cpu", None);
        assert!(s.cpu_count >= 1);
        assert!(s.memory_total_gb > 0.1);
        assert!(s.memory_used_gb > 0.0 && s.memory_used_gb <= s.memory_total_gb);
        assert!(s.process_rss_mb > 1.0, "rss {}", s.process_rss_mb);
        assert!(s.accelerator_memory_total_mb.is_none());
    }
}
