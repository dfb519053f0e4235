//! Counters for `GET /metrics/prometheus`, kept with atomics so that the
//! request path never waits on them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::id::TenantId;

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

/// One set of counters: the whole server's, or one tenant's.
#[derive(Default)]
struct Counters {
    execs: [[AtomicU64; OUTCOMES.len()]; PROVIDERS.len()],
    latency: [Histogram; PROVIDERS.len()],
    created: [AtomicU64; PROVIDERS.len()],
    destroyed: [AtomicU64; PROVIDERS.len()],
    expired: [AtomicU64; PROVIDERS.len()],
}

/// The server's counters and, so that a tenant sees only its own figures,
/// each tenant's. Tenants come from the configured keys (or are `default`),
/// so the map stays as small as the configuration.
#[derive(Default)]
pub struct Metrics {
    server: Counters,
    tenants: Mutex<HashMap<TenantId, Arc<Counters>>>,
}

fn provider_index(provider: &str) -> usize {
    PROVIDERS.iter().position(|p| *p == provider).unwrap_or(0)
}

impl Counters {
    fn exec(&self, p: usize, o: usize, took: Duration) {
        if let Some(counter) = self.execs.get(p).and_then(|row| row.get(o)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let Some(h) = self.latency.get(p) else { return };
        let secs = took.as_secs_f64();
        for (bucket, bound) in h.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        h.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl Metrics {
    /// The tenant's counters, made on first use.
    fn tenant(&self, tenant: &TenantId) -> Arc<Counters> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants.entry(tenant.clone()).or_default().clone()
    }

    pub fn exec(&self, tenant: &TenantId, provider: &str, outcome: &str, took: Duration) {
        let p = provider_index(provider);
        let o = OUTCOMES
            .iter()
            .position(|x| *x == outcome)
            .unwrap_or(OUTCOMES.len() - 1);
        self.server.exec(p, o, took);
        self.tenant(tenant).exec(p, o, took);
    }

    pub fn created(&self, tenant: &TenantId, provider: &str) {
        let p = provider_index(provider);
        for c in [&self.server, &*self.tenant(tenant)] {
            if let Some(n) = c.created.get(p) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn destroyed(&self, tenant: &TenantId, provider: &str, expired: bool) {
        let p = provider_index(provider);
        for c in [&self.server, &*self.tenant(tenant)] {
            let counter = if expired { &c.expired } else { &c.destroyed };
            if let Some(n) = counter.get(p) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The Prometheus text format, of the whole server (`None`) or of one
    /// tenant. `live` is (provider, state, count) in the same scope.
    pub fn render(&self, scope: Option<&TenantId>, live: &[(String, String, usize)]) -> String {
        match scope {
            None => render(&self.server, live),
            Some(tenant) => {
                let counters = self
                    .tenants
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(tenant)
                    .cloned();
                render(&counters.unwrap_or_default(), live)
            }
        }
    }
}

fn render(c: &Counters, live: &[(String, String, usize)]) -> String {
    let mut out = String::new();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    // Writing to a String cannot fail; the results are ignored for that.
    out.push_str("# HELP stacyvm_sandboxes Live sandboxes by provider and state.\n# TYPE stacyvm_sandboxes gauge\n");
    for (provider, state, n) in live {
        let _ = writeln!(
            out,
            "stacyvm_sandboxes{{provider=\"{provider}\",state=\"{state}\"}} {n}"
        );
    }
    out.push_str(
        "# HELP stacyvm_sandboxes_created_total Sandboxes created.\n# TYPE stacyvm_sandboxes_created_total counter\n",
    );
    for (p, created) in PROVIDERS.iter().zip(&c.created) {
        let _ = writeln!(
            out,
            "stacyvm_sandboxes_created_total{{provider=\"{p}\"}} {}",
            load(created)
        );
    }
    out.push_str("# HELP stacyvm_sandboxes_destroyed_total Sandboxes destroyed, by reason.\n# TYPE stacyvm_sandboxes_destroyed_total counter\n");
    for ((p, destroyed), expired) in PROVIDERS.iter().zip(&c.destroyed).zip(&c.expired) {
        let _ = writeln!(
            out,
            "stacyvm_sandboxes_destroyed_total{{provider=\"{p}\",reason=\"deleted\"}} {}",
            load(destroyed)
        );
        let _ = writeln!(
            out,
            "stacyvm_sandboxes_destroyed_total{{provider=\"{p}\",reason=\"expired\"}} {}",
            load(expired)
        );
    }
    out.push_str("# HELP stacyvm_execs_total Execs by provider and outcome.\n# TYPE stacyvm_execs_total counter\n");
    for (p, row) in PROVIDERS.iter().zip(&c.execs) {
        for (o, n) in OUTCOMES.iter().zip(row) {
            let _ = writeln!(
                out,
                "stacyvm_execs_total{{provider=\"{p}\",outcome=\"{o}\"}} {}",
                load(n)
            );
        }
    }
    out.push_str("# HELP stacyvm_limit_kills_total Execs stopped by a limit, by kind.\n# TYPE stacyvm_limit_kills_total counter\n");
    for (kind, outcome) in [("timeout", 1), ("cpu", 2), ("memory", 3)] {
        let n: u64 = c.execs.iter().filter_map(|row| row.get(outcome)).map(load).sum();
        let _ = writeln!(out, "stacyvm_limit_kills_total{{kind=\"{kind}\"}} {n}");
    }
    out.push_str(
        "# HELP stacyvm_exec_duration_seconds Exec latency.\n# TYPE stacyvm_exec_duration_seconds histogram\n",
    );
    for (p, h) in PROVIDERS.iter().zip(&c.latency) {
        for (bucket, bound) in h.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "stacyvm_exec_duration_seconds_bucket{{provider=\"{p}\",le=\"{bound}\"}} {}",
                load(bucket)
            );
        }
        let _ = writeln!(
            out,
            "stacyvm_exec_duration_seconds_bucket{{provider=\"{p}\",le=\"+Inf\"}} {}",
            load(&h.count)
        );
        let _ = writeln!(
            out,
            "stacyvm_exec_duration_seconds_sum{{provider=\"{p}\"}} {}",
            load(&h.sum_micros) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "stacyvm_exec_duration_seconds_count{{provider=\"{p}\"}} {}",
            load(&h.count)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execs_land_in_every_bucket_at_or_above_their_latency() {
        let m = Metrics::default();
        let t = TenantId::new("t");
        m.exec(&t, "wasm", "completed", Duration::from_millis(3));
        m.exec(&t, "wasm", "timeout", Duration::from_secs(2));
        let text = m.render(None, &[("wasm".into(), "running".into(), 4)]);
        assert!(text.contains("stacyvm_sandboxes{provider=\"wasm\",state=\"running\"} 4\n"));
        assert!(text.contains("stacyvm_exec_duration_seconds_bucket{provider=\"wasm\",le=\"0.0025\"} 0\n"));
        assert!(text.contains("stacyvm_exec_duration_seconds_bucket{provider=\"wasm\",le=\"0.005\"} 1\n"));
        assert!(text.contains("stacyvm_exec_duration_seconds_bucket{provider=\"wasm\",le=\"10\"} 2\n"));
        assert!(text.contains("stacyvm_exec_duration_seconds_count{provider=\"wasm\"} 2\n"));
        assert!(text.contains("stacyvm_limit_kills_total{kind=\"timeout\"} 1\n"));
        assert!(text.contains("stacyvm_execs_total{provider=\"wasm\",outcome=\"completed\"} 1\n"));
        assert_eq!(m.render(Some(&t), &[("wasm".into(), "running".into(), 4)]), text);
    }

    #[test]
    fn a_tenant_sees_only_its_own_counters() {
        let m = Metrics::default();
        let (a, b) = (TenantId::new("a"), TenantId::new("b"));
        m.created(&a, "wasm");
        m.created(&a, "wasm");
        m.created(&b, "docker");
        m.destroyed(&b, "docker", true);
        m.exec(&a, "wasm", "memory_limit", Duration::from_millis(1));
        let of_a = m.render(Some(&a), &[]);
        assert!(of_a.contains("stacyvm_sandboxes_created_total{provider=\"wasm\"} 2\n"));
        assert!(of_a.contains("stacyvm_sandboxes_created_total{provider=\"docker\"} 0\n"));
        assert!(of_a.contains("stacyvm_limit_kills_total{kind=\"memory\"} 1\n"));
        let of_b = m.render(Some(&b), &[]);
        assert!(of_b.contains("stacyvm_sandboxes_destroyed_total{provider=\"docker\",reason=\"expired\"} 1\n"));
        assert!(of_b.contains("stacyvm_execs_total{provider=\"wasm\",outcome=\"memory_limit\"} 0\n"));
        let server = m.render(None, &[]);
        assert!(server.contains("stacyvm_sandboxes_created_total{provider=\"wasm\"} 2\n"));
        assert!(server.contains("stacyvm_sandboxes_created_total{provider=\"docker\"} 1\n"));
        let unknown = m.render(Some(&TenantId::new("c")), &[]);
        assert!(unknown.contains("stacyvm_sandboxes_created_total{provider=\"wasm\"} 0\n"));
    }
}
