//! What one bench run measured, as a Markdown report and as JSON. Both are
//! rendered from the same [`Report`], so they cannot disagree.

use std::fmt;

use serde::Serialize;

use super::stats::Summary;

#[derive(Debug, Serialize)]
pub struct Report {
    pub environment: Environment,
    pub latency: Vec<Latency>,
    pub throughput: Vec<Throughput>,
    pub density: Option<Density>,
    /// Code contexts: latencies, rollback, resume and idle RSS.
    pub contexts: Vec<super::contexts::ContextReport>,
    /// Spawn to the first 200 from /health, with the compile cache warm;
    /// `None` when bench did not start the server.
    pub warm_start_ms: Option<f64>,
    /// A warm start with expired sandboxes left to remove.
    pub expired_start: Option<super::expiry::ExpiredStart>,
    pub ratios: Ratios,
    /// What was skipped, and why.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Environment {
    /// `started by bench` or the `--url` that was measured.
    pub server: String,
    pub server_version: String,
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
    /// The interpreter the native baseline spawned, and its version.
    pub native_python: Option<String>,
    pub wasm_python: String,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub metric: String,
    #[serde(flatten)]
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub concurrency: usize,
    pub execs: usize,
    pub seconds: f64,
    pub execs_per_sec: f64,
    /// Per-exec latency under this load.
    pub latency: Summary,
}

#[derive(Debug, Serialize)]
pub struct Density {
    pub sandboxes: usize,
    pub create_all_ms: f64,
    pub destroy_all_ms: f64,
    /// Server RSS; `None` when bench did not start the server and so cannot
    /// read its /proc entry.
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_per_sandbox_kib: Option<f64>,
}

/// Ratios of medians measured in the same run: what runs on different
/// machines can be compared by.
#[derive(Debug, Default, Serialize)]
pub struct Ratios {
    pub docker_create_over_wasm_create: Option<f64>,
    pub wasm_exec_over_native_spawn: Option<f64>,
    /// How many times faster a create the docker warm pool serves is than
    /// a cold docker create.
    pub docker_create_over_pooled_docker_create: Option<f64>,
    /// What a template's files and setup command add to a wasm create.
    pub wasm_template_spawn_over_wasm_create: Option<f64>,
}

impl Report {
    pub fn median_ms(&self, metric: &str) -> Option<f64> {
        self.latency
            .iter()
            .find(|l| l.metric == metric)
            .map(|l| l.summary.median_ms)
    }

    pub fn compute_ratios(&mut self) {
        let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?).filter(|r| r.is_finite());
        self.ratios = Ratios {
            docker_create_over_wasm_create: ratio(self.median_ms("docker create"), self.median_ms("wasm create")),
            wasm_exec_over_native_spawn: ratio(self.median_ms("wasm exec"), self.median_ms("native spawn")),
            docker_create_over_pooled_docker_create: ratio(
                self.median_ms("docker create"),
                self.median_ms("docker create (warm pool)"),
            ),
            wasm_template_spawn_over_wasm_create: ratio(
                self.median_ms("wasm template spawn"),
                self.median_ms("wasm create"),
            ),
        };
    }
}

/// The Markdown report.
impl fmt::Display for Report {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.environment;
        writeln!(out, "## stacyvm bench\n")?;
        writeln!(
            out,
            "server: {} (stacyvm {}); {} cores, {}, Linux {}",
            e.server, e.server_version, e.cores, e.cpu, e.kernel
        )?;
        writeln!(
            out,
            "exec: `python3 -c \"print(40+2)\"` on wasm (Python {}) and natively ({}); `echo 42` on docker\n",
            e.wasm_python,
            e.native_python.as_deref().unwrap_or("not measured")
        )?;
        writeln!(out, "| operation | samples | median | p90 | p99 | min |")?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
        for l in &self.latency {
            let s = &l.summary;
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                l.metric,
                s.samples,
                ms(s.median_ms),
                ms(s.p90_ms),
                ms(s.p99_ms),
                ms(s.min_ms)
            )?;
        }
        if !self.throughput.is_empty() {
            writeln!(
                out,
                "\n| wasm exec throughput | execs | seconds | execs/s | median latency | p99 latency |"
            )?;
            writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
            for t in &self.throughput {
                writeln!(
                    out,
                    "| concurrency {} | {} | {:.1} | {:.1} | {} | {} |",
                    t.concurrency,
                    t.execs,
                    t.seconds,
                    t.execs_per_sec,
                    ms(t.latency.median_ms),
                    ms(t.latency.p99_ms)
                )?;
            }
        }
        writeln!(out, "\n| server | value |")?;
        writeln!(out, "|---|---:|")?;
        if let Some(d) = &self.density {
            let kib = |v: Option<u64>| v.map_or("n/a".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            writeln!(out, "| idle wasm sandboxes created | {} |", d.sandboxes)?;
            writeln!(out, "| time to create them all | {} |", ms(d.create_all_ms))?;
            writeln!(out, "| time to destroy them all | {} |", ms(d.destroy_all_ms))?;
            writeln!(out, "| RSS before | {} |", kib(d.rss_before_kib))?;
            writeln!(out, "| RSS with them all | {} |", kib(d.rss_after_kib))?;
            writeln!(
                out,
                "| RSS per sandbox | {} |",
                d.rss_per_sandbox_kib
                    .map_or("n/a".to_string(), |k| format!("{k:.2} KiB"))
            )?;
        }
        writeln!(
            out,
            "| warm start (spawn to first 200 from /health) | {} |",
            self.warm_start_ms.map_or("n/a".to_string(), ms)
        )?;
        if let Some(e) = &self.expired_start {
            writeln!(
                out,
                "| warm start with {} expired sandboxes ({} MB, {} entries) to remove | {} |",
                e.sandboxes,
                e.bytes / 1_000_000,
                e.entries,
                ms(e.start_ms)
            )?;
            writeln!(out, "| ... until their files were all deleted | {} |", ms(e.removed_ms))?;
        }
        writeln!(out, "\nRatios of medians, this run:")?;
        let r = &self.ratios;
        match r.docker_create_over_wasm_create {
            Some(x) if x >= 1.0 => writeln!(
                out,
                "- docker create / wasm create = {x:.0}×: wasm create is {x:.0}× faster than docker create"
            ),
            Some(x) => writeln!(
                out,
                "- docker create / wasm create = {x:.2}×: wasm create is {:.1}× slower than docker create",
                1.0 / x
            ),
            None => writeln!(out, "- docker create / wasm create: n/a (docker was not measured)"),
        }?;
        match r.wasm_exec_over_native_spawn {
            Some(x) => writeln!(
                out,
                "- wasm exec / native spawn = {x:.2}×: wasm exec takes {x:.2}× the native spawn"
            ),
            None => writeln!(out, "- wasm exec / native spawn: n/a (native spawns were not measured)"),
        }?;
        for contexts in &self.contexts {
            writeln!(out, "\n{contexts}")?;
        }
        match r.docker_create_over_pooled_docker_create {
            Some(x) => writeln!(
                out,
                "- docker create / docker create (warm pool) = {x:.0}×: the warm pool serves a create {x:.0}× faster than a cold one"
            ),
            None => writeln!(
                out,
                "- docker create / docker create (warm pool): n/a (docker or its warm pool was not measured)"
            ),
        }?;
        match r.wasm_template_spawn_over_wasm_create {
            Some(x) => writeln!(
                out,
                "- wasm template spawn / wasm create = {x:.2}×: a spawn with one file and one setup command takes {x:.2}× a plain create"
            ),
            None => writeln!(out, "- wasm template spawn / wasm create: n/a (not measured)"),
        }?;
        for note in &self.notes {
            writeln!(out, "\nNote: {note}")?;
        }
        Ok(())
    }
}

/// Milliseconds with three significant figures or so: 0.384 ms, 4.12 ms,
/// 46.8 ms, 1234 ms.
fn ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3} ms")
    } else if v < 10.0 {
        format!("{v:.2} ms")
    } else if v < 1000.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}
