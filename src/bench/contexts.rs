//! The code-context figures of `stacyvm bench`, over HTTP: creating a
//! context, a trivial cell in a warm one, forking a sandbox whose context
//! holds 50 MB, the cell after a timed-out (rolled back) one, resuming a
//! paused 50 MB context, and the RSS of many idle contexts. Plus the cost
//! of a plain 50 MB memory copy on this machine, for reference.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};

use super::client::Api;
use super::server::Server;
use super::stats::Summary;

/// The cells one language's figures run.
pub struct Language {
    pub name: &'static str,
    pub title: &'static str,
    /// Defines `x = 41`.
    pub define_x: &'static str,
    /// Sets `x = 0`, then never ends.
    pub endless: &'static str,
    /// Puts 50 MB of data in `big`; the data the fork and resume figures carry.
    pub big: &'static str,
    /// The size of `big`, whose result is 52428800.
    pub big_size: &'static str,
}

pub const JAVASCRIPT: Language = Language {
    name: "javascript",
    title: "JavaScript, QuickJS-NG reactor",
    define_x: "var x = 41",
    endless: "x = 0; for (;;) {}",
    big: "globalThis.big = new Uint8Array(50 << 20).fill(1); big.length",
    big_size: "big.length",
};

pub const PYTHON: Language = Language {
    name: "python",
    title: "Python, CPython 3.15 with numpy and pandas",
    define_x: "x = 41",
    endless: "x = 0\nwhile True: pass",
    big: "import numpy as np\nbig = np.ones(50 << 20, dtype=np.uint8)\nbig.size",
    big_size: "big.size",
};

#[derive(Debug, Serialize)]
pub struct ContextReport {
    pub language: String,
    #[serde(skip)]
    pub title: &'static str,
    pub latency: Vec<super::report::Latency>,
    /// Median of the cell after a timed-out cell, minus a normal cell's.
    pub rollback_extra_ms: Option<f64>,
    /// A timed-out cell's answer, past its deadline (the rollback is in it).
    pub timeout_answer_past_deadline_ms: Option<f64>,
    pub memcpy_50mb_ms: f64,
    pub idle_contexts: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_per_context_kib: Option<f64>,
}

impl fmt::Display for ContextReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "### Code contexts ({})\n", self.title)?;
        writeln!(f, "| operation | samples | median | p90 | p99 | min |")?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|")?;
        for l in &self.latency {
            let s = &l.summary;
            writeln!(
                f,
                "| {} | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
                l.metric, s.samples, s.median_ms, s.p90_ms, s.p99_ms, s.min_ms
            )?;
        }
        writeln!(f)?;
        if let Some(extra) = self.rollback_extra_ms {
            writeln!(
                f,
                "- The cell after a timed-out one: {extra:+.3} ms against a normal cell (medians)."
            )?;
        }
        if let Some(past) = self.timeout_answer_past_deadline_ms {
            writeln!(
                f,
                "- A timed-out cell answers {past:.1} ms after its deadline (median), the rollback included."
            )?;
        }
        writeln!(
            f,
            "- A plain copy of 50 MB of memory here: {:.2} ms.",
            self.memcpy_50mb_ms
        )?;
        match (self.rss_before_kib, self.rss_after_kib, self.rss_per_context_kib) {
            (Some(before), Some(after), Some(each)) => writeln!(
                f,
                "- {} idle contexts in memory: server RSS {:.1} MiB → {:.1} MiB, {:.0} KiB each.",
                self.idle_contexts,
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                each
            )?,
            _ if self.idle_contexts > 0 => writeln!(f, "- {} idle contexts created; RSS n/a.", self.idle_contexts)?,
            _ => {}
        }
        Ok(())
    }
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}/api/v1{path}", self.base));
        if let Some(key) = &self.key {
            req = req.header("X-API-Key", key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.with_context(|| format!("{path}: no answer"))?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, body) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{path}: {status} {body}");
        }
        Ok(body)
    }

    async fn create_context(&self, sandbox: &str, language: &str) -> anyhow::Result<String> {
        let body = self
            .ok(
                reqwest::Method::POST,
                &format!("/sandboxes/{sandbox}/contexts"),
                Some(json!({"language": language})),
            )
            .await?;
        body["id"].as_str().map(str::to_string).context("no context id")
    }

    async fn cell(&self, sandbox: &str, ctx: &str, code: &str) -> anyhow::Result<Value> {
        let body = self
            .ok(
                reqwest::Method::POST,
                &format!("/sandboxes/{sandbox}/contexts/{ctx}/run"),
                Some(json!({"code": code})),
            )
            .await?;
        if !body["error"].is_null() {
            bail!("the cell {code:?} raised {}", body["error"]);
        }
        Ok(body)
    }
}

fn summary(metric: &str, times: Vec<Duration>) -> Option<super::report::Latency> {
    Summary::of(times).map(|summary| super::report::Latency {
        metric: metric.into(),
        summary,
    })
}

/// Measures contexts against `api`. `pausing` is a server whose contexts
/// pause after a short idle time (for the resume figure); `server`, when
/// bench started it, gives the RSS of `idle` idle contexts.
pub async fn measure(
    api: &Api,
    pausing: &Api,
    server: Option<&Server>,
    samples: usize,
    warmup: usize,
    idle: usize,
    lang: &Language,
) -> anyhow::Result<ContextReport> {
    let mut latency = vec![];
    let name = lang.name;
    let sb = api.create("wasm", "python:3.14").await?;

    eprintln!("bench: context create, {warmup} + {samples} times");
    let mut times = vec![];
    for i in 0..warmup + samples {
        let started = Instant::now();
        let ctx = api.create_context(&sb, name).await?;
        let took = started.elapsed();
        api.ok(
            reqwest::Method::DELETE,
            &format!("/sandboxes/{sb}/contexts/{ctx}"),
            None,
        )
        .await?;
        if i >= warmup {
            times.push(took);
        }
    }
    latency.extend(summary(&format!("create a {name} context"), times));

    eprintln!("bench: trivial {name} cell, {warmup} + {samples} times");
    let ctx = api.create_context(&sb, name).await?;
    api.cell(&sb, &ctx, lang.define_x).await?;
    let trivial = time_cells(api, &sb, &ctx, "x + 1", warmup, samples).await?;
    let normal_median = Summary::of(trivial.clone()).map(|s| s.median_ms);
    latency.extend(summary("run `x + 1` in a warm context", trivial));

    eprintln!("bench: the cell after a timed-out one, {samples} times");
    let mut after = vec![];
    let mut past_deadline = vec![];
    let deadline = Duration::from_millis(50);
    for _ in 0..samples.min(100) {
        let started = Instant::now();
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                &format!("/sandboxes/{sb}/contexts/{ctx}/run"),
                Some(json!({"code": lang.endless, "timeout": "50ms"})),
            )
            .await?;
        if status != 408 || body["rolled_back"] != true {
            bail!("the endless cell answered {status} {body}");
        }
        past_deadline.push(started.elapsed().saturating_sub(deadline));
        let started = Instant::now();
        let body = api.cell(&sb, &ctx, "x + 1").await?;
        after.push(started.elapsed());
        if body["result"]["text/plain"] != "42" {
            bail!("the rollback lost x: {body}");
        }
    }
    let after_median = Summary::of(after.clone()).map(|s| s.median_ms);
    latency.extend(summary("run `x + 1` right after a timed-out cell", after));
    let past_median = Summary::of(past_deadline).map(|s| s.median_ms);

    eprintln!("bench: a 50 MB {name} context: cells and sandbox forks");
    let big = api.create_context(&sb, name).await?;
    api.cell(&sb, &big, lang.big).await?;
    let times = time_cells(api, &sb, &big, lang.big_size, warmup.min(3), samples.min(50)).await?;
    latency.extend(summary(
        &format!("run `{}` in a context holding 50 MB", lang.big_size),
        times,
    ));
    let mut forks = vec![];
    for _ in 0..samples.min(20) {
        let started = Instant::now();
        let child = api
            .ok(reqwest::Method::POST, &format!("/sandboxes/{sb}/fork"), None)
            .await?;
        forks.push(started.elapsed());
        let child = child["id"].as_str().context("no fork id")?.to_string();
        api.destroy(&child).await?;
    }
    latency.extend(summary("fork a sandbox whose context holds 50 MB", forks));
    api.destroy(&sb).await?;

    eprintln!("bench: resume a paused 50 MB {name} context");
    let sb = pausing.create("wasm", "python:3.14").await?;
    let ctx = pausing.create_context(&sb, name).await?;
    pausing.cell(&sb, &ctx, lang.big).await?;
    let mut resumes = vec![];
    for _ in 0..samples.min(8) {
        wait_paused(pausing, &sb, &ctx).await?;
        let started = Instant::now();
        let body = pausing.cell(&sb, &ctx, lang.big_size).await?;
        resumes.push(started.elapsed());
        if body["result"]["text/plain"] != "52428800" {
            bail!("the resumed context lost its data: {body}");
        }
    }
    latency.extend(summary(
        "resume a paused context holding 50 MB (its next cell)",
        resumes,
    ));
    pausing.destroy(&sb).await?;

    let memcpy_50mb_ms = {
        let src = vec![1u8; 50 << 20];
        let mut dst = vec![0u8; 50 << 20];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            best = best.min(started.elapsed().as_secs_f64() * 1e3);
        }
        best
    };

    let (mut rss_before, mut rss_after, mut per) = (None, None, None);
    if idle > 0 {
        eprintln!("bench: {idle} idle {name} contexts");
        rss_before = server.map(|s| s.rss_kib()).transpose()?;
        let mut sandboxes = vec![];
        for i in 0..idle {
            if i % 16 == 0 {
                sandboxes.push(api.create("wasm", "python:3.14").await?);
            }
            api.create_context(sandboxes.last().expect("a sandbox"), name).await?;
        }
        rss_after = server.map(|s| s.rss_kib()).transpose()?;
        if let (Some(b), Some(a)) = (rss_before, rss_after) {
            per = Some(a.saturating_sub(b) as f64 / idle as f64);
        }
        for sb in sandboxes {
            api.destroy(&sb).await?;
        }
    }
    Ok(ContextReport {
        language: name.to_string(),
        title: lang.title,
        latency,
        rollback_extra_ms: after_median.zip(normal_median).map(|(a, n)| a - n),
        timeout_answer_past_deadline_ms: past_median,
        memcpy_50mb_ms,
        idle_contexts: idle,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_context_kib: per,
    })
}

async fn time_cells(
    api: &Api,
    sb: &str,
    ctx: &str,
    code: &str,
    warmup: usize,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = vec![];
    for i in 0..warmup + samples {
        let started = Instant::now();
        api.cell(sb, ctx, code).await?;
        if i >= warmup {
            times.push(started.elapsed());
        }
    }
    Ok(times)
}

async fn wait_paused(api: &Api, sb: &str, ctx: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let info = api
            .ok(reqwest::Method::GET, &format!("/sandboxes/{sb}/contexts/{ctx}"), None)
            .await?;
        if info["state"] == "paused" {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the context did not pause within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
