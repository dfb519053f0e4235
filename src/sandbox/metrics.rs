//! Counters for `GET /metrics/prometheus`, kept with atomics so that the
//! request path never waits on them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the exec latency histogram, in seconds: from a QuickJS
/// one-liner (about a millisecond) to the longest allowed timeouts.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0, 60.0];
const PROVIDERS: [&str; 2] = ["wasm", "docker"];
/// How an exec ended.
pub const OUTCOMES: [&str; 5] = ["completed", "timeout", "cpu_limit", "memory_limit", "failed"];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    execs: [[AtomicU64; OUTCOMES.len()]; PROVIDERS.len()],
    latency: [Histogram; PROVIDERS.len()],
    created: [AtomicU64; PROVIDERS.len()],
    destroyed: [AtomicU64; PROVIDERS.len()],
    expired: [AtomicU64; PROVIDERS.len()],
}

fn provider_index(provider: &str) -> usize {
    PROVIDERS.iter().position(|p| *p == provider).unwrap_or(0)
}

impl Metrics {
    pub fn exec(&self, provider: &str, outcome: &str, took: Duration) {
        let p = provider_index(provider);
        let o = OUTCOMES
            .iter()
            .position(|x| *x == outcome)
            .unwrap_or(OUTCOMES.len() - 1);
        self.execs[p][o].fetch_add(1, Ordering::Relaxed);
        let h = &self.latency[p];
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn created(&self, provider: &str) {
        self.created[provider_index(provider)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn destroyed(&self, provider: &str, expired: bool) {
        let counter = if expired { &self.expired } else { &self.destroyed };
        counter[provider_index(provider)].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text format. `live` is (provider, state, count).
    pub fn render(&self, live: &[(String, String, usize)]) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str(
            "# HELP stacyvm_sandboxes Live sandboxes by provider and state.\n# TYPE stacyvm_sandboxes gauge\n",
        );
        for (provider, state, n) in live {
            writeln!(
                out,
                "stacyvm_sandboxes{{provider=\"{provider}\",state=\"{state}\"}} {n}"
            )
            .unwrap();
        }
        out.push_str("# HELP stacyvm_sandboxes_created_total Sandboxes created.\n# TYPE stacyvm_sandboxes_created_total counter\n");
        for (i, p) in PROVIDERS.iter().enumerate() {
            writeln!(
                out,
                "stacyvm_sandboxes_created_total{{provider=\"{p}\"}} {}",
                load(&self.created[i])
            )
            .unwrap();
        }
        out.push_str("# HELP stacyvm_sandboxes_destroyed_total Sandboxes destroyed, by reason.\n# TYPE stacyvm_sandboxes_destroyed_total counter\n");
        for (i, p) in PROVIDERS.iter().enumerate() {
            writeln!(
                out,
                "stacyvm_sandboxes_destroyed_total{{provider=\"{p}\",reason=\"deleted\"}} {}",
                load(&self.destroyed[i])
            )
            .unwrap();
            writeln!(
                out,
                "stacyvm_sandboxes_destroyed_total{{provider=\"{p}\",reason=\"expired\"}} {}",
                load(&self.expired[i])
            )
            .unwrap();
        }
        out.push_str("# HELP stacyvm_execs_total Execs by provider and outcome.\n# TYPE stacyvm_execs_total counter\n");
        for (i, p) in PROVIDERS.iter().enumerate() {
            for (j, o) in OUTCOMES.iter().enumerate() {
                writeln!(
                    out,
                    "stacyvm_execs_total{{provider=\"{p}\",outcome=\"{o}\"}} {}",
                    load(&self.execs[i][j])
                )
                .unwrap();
            }
        }
        out.push_str("# HELP stacyvm_limit_kills_total Execs stopped by a limit, by kind.\n# TYPE stacyvm_limit_kills_total counter\n");
        for (kind, outcome) in [("timeout", 1), ("cpu", 2), ("memory", 3)] {
            let n: u64 = (0..PROVIDERS.len()).map(|i| load(&self.execs[i][outcome])).sum();
            writeln!(out, "stacyvm_limit_kills_total{{kind=\"{kind}\"}} {n}").unwrap();
        }
        out.push_str(
            "# HELP stacyvm_exec_duration_seconds Exec latency.\n# TYPE stacyvm_exec_duration_seconds histogram\n",
        );
        for (i, p) in PROVIDERS.iter().enumerate() {
            let h = &self.latency[i];
            for (b, bound) in BUCKETS.iter().enumerate() {
                writeln!(
                    out,
                    "stacyvm_exec_duration_seconds_bucket{{provider=\"{p}\",le=\"{bound}\"}} {}",
                    load(&h.buckets[b])
                )
                .unwrap();
            }
            writeln!(
                out,
                "stacyvm_exec_duration_seconds_bucket{{provider=\"{p}\",le=\"+Inf\"}} {}",
                load(&h.count)
            )
            .unwrap();
            writeln!(
                out,
                "stacyvm_exec_duration_seconds_sum{{provider=\"{p}\"}} {}",
                load(&h.sum_micros) as f64 / 1e6
            )
            .unwrap();
            writeln!(
                out,
                "stacyvm_exec_duration_seconds_count{{provider=\"{p}\"}} {}",
                load(&h.count)
            )
            .unwrap();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execs_land_in_every_bucket_at_or_above_their_latency() {
        let m = Metrics::default();
        m.exec("wasm", "completed", Duration::from_millis(3));
        m.exec("wasm", "timeout", Duration::from_secs(2));
        let text = m.render(&[("wasm".into(), "running".into(), 4)]);
        assert!(text.contains("stacyvm_sandboxes{provider=\"wasm\",state=\"running\"} 4\n"));
        assert!(text.contains("stacyvm_exec_duration_seconds_bucket{provider=\"wasm\",le=\"0.0025\"} 0\n"));
        assert!(text.contains("stacyvm_exec_duration_seconds_bucket{provider=\"wasm\",le=\"0.005\"} 1\n"));
        assert!(text.contains("stacyvm_exec_duration_seconds_bucket{provider=\"wasm\",le=\"10\"} 2\n"));
        assert!(text.contains("stacyvm_exec_duration_seconds_count{provider=\"wasm\"} 2\n"));
        assert!(text.contains("stacyvm_limit_kills_total{kind=\"timeout\"} 1\n"));
        assert!(text.contains("stacyvm_execs_total{provider=\"wasm\",outcome=\"completed\"} 1\n"));
    }
}
