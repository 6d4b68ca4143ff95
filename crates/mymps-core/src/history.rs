//! The server's recent history: a bounded ring of [`Sample`]s that the
//! server takes on a timer (every second by default, ten minutes kept), so
//! that a dashboard can plot request rate, latency, errors, memory and
//! GPU use over the last minutes, and show them again after a reload.
//!
//! A sample is made of differences of the [`Metrics`](crate::metrics)
//! counters since the previous one (requests and errors in the interval,
//! latency percentiles of the requests answered in it, from the histogram
//! buckets' differences) and of gauges read at that moment (memory, resident
//! tensors, connections, GPU). Taking one costs a few atomic loads, a
//! `/proc` read of this process and, on a GPU, one accelerator memory
//! query and two NVML calls; the ring is allocated once and never grows
//! past its capacity, whatever clients do.
//!
//! The per-kind request rates that the `history` request also returns are
//! the counts' differences over the last [`RATE_WINDOW`] (measured by the
//! server's clock, so every kind is measured over the same window, not
//! over the gaps between a page's polls).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metrics::{HistogramSnapshot, LATENCY_BOUNDS_NS, N_BUCKETS, Totals};
use crate::nvml::GpuStats;
use crate::protocol::RequestKind;

/// The window of the per-kind request rates.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The most samples a history may keep (a day at one a second).
pub const MAX_SAMPLES: usize = 86_400;

/// How often the server samples, and how many samples it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Time between two samples (at least 10 ms).
    pub interval: Duration,
    /// Samples kept (2 to [`MAX_SAMPLES`]); the oldest goes first.
    pub samples: usize,
}

impl Default for HistoryConfig {
    /// One sample a second, ten minutes of them.
    fn default() -> HistoryConfig {
        HistoryConfig {
            interval: Duration::from_secs(1),
            samples: 600,
        }
    }
}

impl HistoryConfig {
    /// The configuration with its fields brought within their bounds.
    pub fn clamped(self) -> HistoryConfig {
        HistoryConfig {
            interval: self.interval.max(Duration::from_millis(10)),
            samples: self.samples.clamp(2, MAX_SAMPLES),
        }
    }
}

/// The server's state at one moment, and what happened since the sample
/// before.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Sample {
    /// The sample's number (0 for the server's first; consecutive).
    pub seq: u64,
    /// Seconds since the server started.
    pub uptime_s: f64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Seconds since the previous sample (the server's start for the
    /// first).
    pub interval_s: f64,
    /// Requests answered in the interval, every kind.
    pub requests: u64,
    /// The same per second.
    pub requests_per_s: f64,
    /// Errors answered in the interval (requests, refused frames and
    /// handshakes).
    pub errors: u64,
    /// Median latency of the requests answered in the interval,
    /// milliseconds (estimated from the histogram buckets); absent when
    /// none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// 99th percentile, milliseconds; absent when no request was answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Requests being handled.
    pub in_flight: u64,
    /// Connections open.
    pub connections_open: u64,
    /// The server process's resident memory, bytes.
    pub process_rss_bytes: u64,
    /// The server process's CPU use over the interval, % of one core.
    pub process_cpu_percent: f64,
    /// Host CPU use over the interval, % of all cores.
    pub host_cpu_percent: f64,
    /// Host memory in use, bytes.
    pub host_memory_used_bytes: u64,
    /// Memory budget held by requests in flight and resident tensors,
    /// bytes.
    pub memory_budget_used_bytes: u64,
    /// Server-resident tensors held.
    pub resident_tensors: u64,
    /// Their bytes.
    pub resident_bytes: u64,
    /// Accelerator memory in use (by any process), bytes, where the device
    /// reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator_memory_used_bytes: Option<u64>,
    /// Accelerator memory, bytes, where the device reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator_memory_total_bytes: Option<u64>,
    /// GPU utilisation from NVML, %, where present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_utilization_percent: Option<f64>,
    /// GPU memory-controller utilisation from NVML, %, where present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_utilization_percent: Option<f64>,
    /// GPU memory in use from NVML, bytes, where present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_used_bytes: Option<u64>,
}

/// One request kind's rate over the last [`RATE_WINDOW`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KindRate {
    /// The kind (`exec`, `health`, ...).
    pub kind: String,
    /// Requests answered in the window.
    pub count: u64,
    /// Per second.
    pub per_s: f64,
}

/// The answer to `history`: the samples asked for and the per-kind rates.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HistorySnapshot {
    /// Seconds between samples.
    pub interval_s: f64,
    /// Samples the server keeps.
    pub capacity: u64,
    /// The number the next sample will have: ask `since` it next time to
    /// get only the new ones.
    pub next_seq: u64,
    /// The samples numbered `since` or later that the server still keeps,
    /// oldest first.
    pub samples: Vec<Sample>,
    /// The window of `rates`, seconds (shorter while the server is
    /// younger).
    pub rate_window_s: f64,
    /// Every kind answered at least once in that window, in the order of
    /// the kinds' table.
    pub rates: Vec<KindRate>,
}

/// The gauges of a sample, read by the server when it takes one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Readings {
    /// Seconds since the server started.
    pub uptime_s: f64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The metrics' counters.
    pub totals: Totals,
    /// The server process's resident memory, bytes.
    pub process_rss_bytes: u64,
    /// Its CPU use, % of one core.
    pub process_cpu_percent: f64,
    /// Host CPU use, %.
    pub host_cpu_percent: f64,
    /// Host memory in use, bytes.
    pub host_memory_used_bytes: u64,
    /// Memory budget in use, bytes.
    pub memory_budget_used_bytes: u64,
    /// Resident tensors and their bytes.
    pub resident: (u64, u64),
    /// Accelerator memory (total, free), bytes.
    pub accelerator_memory: Option<(u64, u64)>,
    /// NVML's figures.
    pub gpu: Option<GpuStats>,
}

struct Ring {
    samples: VecDeque<Sample>,
    next_seq: u64,
    /// Counters at the previous sample (zeros at the start).
    prev: (f64, Totals),
    /// (uptime, per-kind counts) of the last samples, enough to cover the
    /// rate window, oldest first; starts with the server's start.
    counts: VecDeque<(f64, [u64; RequestKind::ALL.len()])>,
}

/// The ring of samples (see the module docs).
pub struct History {
    config: HistoryConfig,
    ring: Mutex<Ring>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let bounds: Vec<f64> = LATENCY_BOUNDS_NS.iter().map(|&b| b as f64 / 1e9).collect();
    HistogramSnapshot {
        counts: buckets.to_vec(),
        sum_s: 0.0,
    }
    .quantile(&bounds, q)
    .map(|s| s * 1e3)
}

impl History {
    /// An empty history (its capacity allocated now); the counters start
    /// from zero at uptime 0.
    pub fn new(config: HistoryConfig) -> History {
        let config = config.clamped();
        let window = RATE_WINDOW.as_secs_f64() / config.interval.as_secs_f64();
        let mut counts = VecDeque::with_capacity(window.ceil() as usize + 3);
        counts.push_back((0.0, [0; RequestKind::ALL.len()]));
        History {
            config,
            ring: Mutex::new(Ring {
                samples: VecDeque::with_capacity(config.samples),
                next_seq: 0,
                prev: (0.0, Totals::default()),
                counts,
            }),
        }
    }

    /// The configuration (within its bounds).
    pub fn config(&self) -> HistoryConfig {
        self.config
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a sample made of `r` (the oldest goes when the ring is full).
    pub fn record(&self, r: Readings) {
        let mut ring = self.ring();
        let (prev_t, prev) = &ring.prev;
        let dt = (r.uptime_s - prev_t).max(0.0);
        let t = &r.totals;
        let requests = t.requests().saturating_sub(prev.requests());
        let mut buckets = [0u64; N_BUCKETS];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = t.latency[i].saturating_sub(prev.latency[i]);
        }
        let sample = Sample {
            seq: ring.next_seq,
            uptime_s: r.uptime_s,
            unix_ms: r.unix_ms,
            interval_s: dt,
            requests,
            requests_per_s: if dt > 0.0 { requests as f64 / dt } else { 0.0 },
            errors: t.errors.saturating_sub(prev.errors),
            p50_ms: quantile_ms(&buckets, 0.5),
            p99_ms: quantile_ms(&buckets, 0.99),
            in_flight: t.in_flight,
            connections_open: t.connections_open,
            process_rss_bytes: r.process_rss_bytes,
            process_cpu_percent: r.process_cpu_percent,
            host_cpu_percent: r.host_cpu_percent,
            host_memory_used_bytes: r.host_memory_used_bytes,
            memory_budget_used_bytes: r.memory_budget_used_bytes,
            resident_tensors: r.resident.0,
            resident_bytes: r.resident.1,
            accelerator_memory_used_bytes: r
                .accelerator_memory
                .map(|(total, free)| total.saturating_sub(free)),
            accelerator_memory_total_bytes: r.accelerator_memory.map(|m| m.0),
            gpu_utilization_percent: r.gpu.as_ref().and_then(|g| g.utilization_percent),
            gpu_memory_utilization_percent: r
                .gpu
                .as_ref()
                .and_then(|g| g.memory_utilization_percent),
            gpu_memory_used_bytes: r.gpu.as_ref().map(|g| g.memory_used_bytes),
        };
        if ring.samples.len() == self.config.samples {
            ring.samples.pop_front();
        }
        ring.samples.push_back(sample);
        ring.next_seq += 1;
        // Keep one entry at or before the window's start.
        ring.counts.push_back((r.uptime_s, t.per_kind));
        let start = r.uptime_s - RATE_WINDOW.as_secs_f64();
        while ring.counts.len() > 1 && ring.counts[1].0 <= start {
            ring.counts.pop_front();
        }
        ring.prev = (r.uptime_s, r.totals);
    }

    /// The samples numbered `since` or later, and each kind's rate over the
    /// last [`RATE_WINDOW`] up to `now` (uptime, seconds; counters `totals`
    /// read at that moment).
    pub fn snapshot(&self, since: u64, now: f64, totals: &Totals) -> HistorySnapshot {
        let ring = self.ring();
        let samples = ring
            .samples
            .iter()
            .filter(|s| s.seq >= since)
            .cloned()
            .collect();
        // The newest entry at or before the window's start (else the
        // oldest: the server's start, or the oldest kept).
        let start = now - RATE_WINDOW.as_secs_f64();
        let (then, old) = ring
            .counts
            .iter()
            .rev()
            .find(|(t, _)| *t <= start)
            .or_else(|| ring.counts.front())
            .copied()
            .unwrap_or((0.0, [0; RequestKind::ALL.len()]));
        let window = (now - then).max(0.0);
        let rates = RequestKind::ALL
            .iter()
            .zip(totals.per_kind.iter().zip(old.iter()))
            .filter_map(|(kind, (&n, &o))| {
                let count = n.saturating_sub(o);
                (count > 0).then(|| KindRate {
                    kind: kind.name().to_owned(),
                    count,
                    per_s: if window > 0.0 {
                        count as f64 / window
                    } else {
                        0.0
                    },
                })
            })
            .collect();
        HistorySnapshot {
            interval_s: self.config.interval.as_secs_f64(),
            capacity: self.config.samples as u64,
            next_seq: ring.next_seq,
            samples,
            rate_window_s: window,
            rates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(exec: u64, health: u64, errors: u64, fast: u64, slow: u64) -> Totals {
        let mut t = Totals::default();
        t.per_kind[RequestKind::Exec as usize] = exec;
        t.per_kind[RequestKind::Health as usize] = health;
        t.errors = errors;
        // 100 µs and 1 s buckets.
        t.latency[1] = fast;
        t.latency[13] = slow;
        t
    }

    fn at(uptime_s: f64, totals: Totals) -> Readings {
        Readings {
            uptime_s,
            totals,
            process_rss_bytes: 1 << 20,
            resident: (2, 64),
            accelerator_memory: Some((100, 30)),
            ..Readings::default()
        }
    }

    #[test]
    fn samples_are_differences_and_gauges() {
        let h = History::new(HistoryConfig {
            interval: Duration::from_secs(1),
            samples: 3,
        });
        h.record(at(1.0, totals(0, 0, 0, 0, 0)));
        h.record(at(2.0, totals(10, 2, 1, 12, 0)));
        h.record(at(4.0, totals(11, 2, 1, 12, 1)));
        let s = h.snapshot(0, 4.0, &totals(11, 2, 1, 12, 1));
        assert_eq!(s.capacity, 3);
        assert_eq!(s.next_seq, 3);
        let seqs: Vec<u64> = s.samples.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [0, 1, 2]);
        let idle = &s.samples[0];
        assert_eq!((idle.requests, idle.p50_ms), (0, None));
        let busy = &s.samples[1];
        assert_eq!((busy.requests, busy.errors), (12, 1));
        assert_eq!(busy.requests_per_s, 12.0);
        let p50 = busy.p50_ms.unwrap();
        assert!(p50 > 0.05 && p50 <= 0.1, "{p50}");
        let slow = &s.samples[2];
        assert_eq!((slow.requests, slow.errors, slow.interval_s), (1, 0, 2.0));
        assert_eq!(slow.requests_per_s, 0.5);
        // Only the slow request of that interval counts.
        assert!(slow.p50_ms.unwrap() > 500.0, "{:?}", slow.p50_ms);
        assert_eq!(slow.resident_tensors, 2);
        assert_eq!(slow.accelerator_memory_used_bytes, Some(70));
        assert_eq!(slow.gpu_utilization_percent, None);

        // Full: the oldest goes; `since` picks the new ones.
        h.record(at(5.0, totals(12, 2, 1, 13, 1)));
        let s = h.snapshot(0, 5.0, &totals(12, 2, 1, 13, 1));
        let seqs: Vec<u64> = s.samples.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        let s = h.snapshot(3, 5.0, &totals(12, 2, 1, 13, 1));
        assert_eq!(s.samples.len(), 1);
        assert!(h.snapshot(4, 5.0, &Totals::default()).samples.is_empty());
        // Absent figures are left out of the JSON.
        let v = serde_json::to_value(&s.samples[0]).unwrap();
        assert!(v.get("gpu_utilization_percent").is_none(), "{v}");
        assert_eq!(v["accelerator_memory_total_bytes"], 100);
    }

    /// The finding of issue 21: the dashboard's `rate/s` showed the same
    /// value for kinds with different counts. Rates are per kind, over one
    /// window of the server's clock.
    #[test]
    fn rates_are_per_kind_over_the_window() {
        let h = History::new(HistoryConfig {
            interval: Duration::from_secs(1),
            samples: 600,
        });
        // Young server: the window is its age.
        let s = h.snapshot(0, 2.0, &totals(40, 2, 0, 0, 0));
        assert_eq!(s.rate_window_s, 2.0);
        let rate = |s: &HistorySnapshot, k: &str| {
            s.rates
                .iter()
                .find(|r| r.kind == k)
                .map(|r| (r.count, r.per_s))
        };
        assert_eq!(rate(&s, "exec"), Some((40, 20.0)));
        assert_eq!(rate(&s, "health"), Some((2, 1.0)));
        assert_eq!(rate(&s, "stats"), None);
        // 30 s of 10 exec/s and 1 health/s, then 5 s of nothing.
        for i in 1..=30u64 {
            h.record(at(i as f64, totals(10 * i, i, 0, 0, 0)));
        }
        let now = totals(300, 30, 0, 0, 0);
        let s = h.snapshot(0, 30.0, &now);
        assert_eq!(s.rate_window_s, 10.0);
        assert_eq!(rate(&s, "exec"), Some((100, 10.0)));
        assert_eq!(rate(&s, "health"), Some((10, 1.0)));
        for i in 31..=35u64 {
            h.record(at(i as f64, now.clone()));
        }
        let s = h.snapshot(0, 35.0, &now);
        assert_eq!(rate(&s, "exec"), Some((50, 5.0)));
        assert_eq!(rate(&s, "health"), Some((5, 0.5)));
        // Only the window's entries are kept for the rates.
        assert!(h.ring().counts.len() <= 12, "{}", h.ring().counts.len());
    }

    #[test]
    fn config_is_bounded() {
        let c = HistoryConfig {
            interval: Duration::ZERO,
            samples: usize::MAX,
        }
        .clamped();
        assert_eq!(c.interval, Duration::from_millis(10));
        assert_eq!(c.samples, MAX_SAMPLES);
        assert_eq!(History::new(c).config(), c);
    }
}
