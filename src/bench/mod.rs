//! `stacyvm bench`: measures a server over loopback HTTP and prints what it
//! measured (latency percentiles, throughput, density, start time) with the
//! ratios that make runs on different machines comparable. It asserts
//! nothing about time; a wrong answer from the server is an error, though,
//! because a benchmark of failing requests would time the wrong thing.
//!
//! By default it starts this executable as its own server twice: the first
//! serves the latency and throughput runs (and warms the compile cache), the
//! second, fresh, gives the warm start time and the density run, so freed
//! memory from earlier phases cannot hide in its RSS.

mod client;
mod contexts;
mod data;
mod expiry;
mod mcp;
mod report;
mod server;
mod shell;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use self::client::Api;
use self::report::{Density, Environment, Latency, Report, Throughput};
use self::server::{Launch, ScratchDir, Server};
use self::stats::Summary;

const PY_COMMAND: &str = r#"python3 -c "print(40+2)""#;
const DOCKER_COMMAND: &str = "echo 42";
const EXPECTED: &str = "42\n";
/// The exec concurrencies measured: one client, a few, and as many as the
/// server runs guests at once by default (`exec.max_concurrent` = 32).
const CONCURRENCIES: [usize; 3] = [1, 8, 32];
/// Idle Python contexts created for their RSS figure (each holds the pages
/// its interpreter wrote, megabytes rather than the JavaScript kilobytes).
const PYTHON_IDLE: usize = 50;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Measure the server at this URL (http://host:port) instead of starting one; RSS and start time are then n/a.
    #[arg(long)]
    pub url: Option<String>,
    /// API key for a `--url` server that requires one.
    #[arg(long, env = "STACYVM_BENCH_API_KEY")]
    pub api_key: Option<String>,
    /// Timed samples per latency metric [default: 200 for wasm, 50 for docker and the shell loop, 20 for the shell pipeline, 30 for native spawns].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Untimed runs before each latency metric.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Wasm image for the wasm metrics (`python:3.12` measures the interpreter that starts from scratch).
    #[arg(long, default_value = "python:3.14")]
    pub wasm_image: String,
    /// Docker image for the docker metrics; it must be present locally and have `echo`.
    #[arg(long, default_value = "stacyvm-test-busybox:latest")]
    pub docker_image: String,
    /// Idle wasm sandboxes created for the density measurement (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub density_count: usize,
    /// Seconds each throughput level runs.
    #[arg(long, default_value_t = 5)]
    pub throughput_seconds: u64,
    /// Image and compile-cache directory for the servers bench starts, kept between runs
    /// [default: <temp dir>/stacyvm-bench-images].
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Interpreter for the native baseline [default: the real executable behind `python3`].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Idle code contexts created for the context density figure (0 skips it).
    #[arg(long, default_value_t = 2000)]
    pub context_density: usize,
    /// Expired sandboxes left for a warm start to remove (0 skips it); they hold 1 GB and 1,000,000 entries in all.
    #[arg(long, default_value_t = 100)]
    pub expired_sandboxes: usize,
    /// Skip the data metrics (pandas on python:3.15, pip install on python:3.14).
    #[arg(long)]
    pub no_data: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the benchmark and prints the Markdown report on stdout; progress
/// goes to stderr.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let mut notes = Vec::new();
    let native = native_python(opts.python.as_deref());
    if let Err(e) = &native {
        notes.push(format!("no native baseline: {e:#}"));
    }
    let native = native.ok();
    let mut report = match &opts.url {
        Some(url) => {
            let api = Api::new(url, opts.api_key.clone())?;
            let mut report = measure(&api, &opts, native.as_ref(), &mut notes, url.clone()).await?;
            if opts.density_count > 0 {
                report.density = Some(density(&api, &opts.wasm_image, opts.density_count, None).await?);
            }
            let samples = opts.samples.unwrap_or(200);
            for (lang, idle) in [
                (&contexts::JAVASCRIPT, opts.context_density),
                (&contexts::PYTHON, PYTHON_IDLE.min(opts.context_density)),
            ] {
                let measured = contexts::measure(&api, &api, None, samples, opts.warmup, idle, lang).await?;
                report.contexts.push(measured);
            }
            report
        }
        None => {
            let scratch = ScratchDir::new()?;
            let image_dir = opts
                .image_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("stacyvm-bench-images"));
            let log = std::env::temp_dir().join("stacyvm-bench-server.log");
            std::fs::write(&log, "").with_context(|| format!("cannot write {}", log.display()))?;
            eprintln!("bench: server log in {}", log.display());
            let launch = |n: u32| Launch {
                data_dir: scratch.0.join(format!("server-{n}")),
                image_dir: image_dir.clone(),
                log: log.clone(),
                // Density holds `density_count` sandboxes, the other phases at
                // most 32; the default quota of 10,000 would refuse the rest.
                max_sandboxes: opts.density_count + 1024,
                env: vec![],
            };

            eprintln!("bench: starting the server (the first start may fetch and compile the image)");
            let (first, _) = launch(1).start().await?;
            let api = Api::new(&first.url, None)?;
            let measured = measure(&api, &opts, native.as_ref(), &mut notes, "started by bench".into()).await;
            let stopped = first.stop().await;
            let mut report = measured?;
            stopped?;

            if report.median_ms("docker create").is_some() {
                eprintln!(
                    "bench: starting a server with a docker warm pool of {}",
                    opts.docker_image
                );
                let pooled = Launch {
                    env: vec![
                        ("STACYVM_DOCKER_POOL_IMAGES".into(), opts.docker_image.clone()),
                        ("STACYVM_DOCKER_POOL_SIZE".into(), POOL_SIZE.to_string()),
                    ],
                    ..launch(3)
                };
                let (third, _) = pooled.start().await?;
                let api = Api::new(&third.url, None)?;
                let samples = opts.samples.unwrap_or(50);
                eprintln!(
                    "bench: docker create served by the warm pool, {} + {samples} times",
                    opts.warmup
                );
                let measured = pooled_creates(&api, &opts.docker_image, opts.warmup, samples).await;
                let stopped = third.stop().await;
                if let Some(summary) = measured? {
                    report.latency.push(Latency {
                        metric: "docker create (warm pool)".into(),
                        summary,
                    });
                }
                stopped?;
            }

            eprintln!("bench: starting a fresh server with a warm compile cache");
            let (second, warm_start) = launch(2).start().await?;
            report.warm_start_ms = Some(warm_start.as_secs_f64() * 1e3);
            let api = Api::new(&second.url, None)?;
            let measured = match opts.density_count {
                0 => Ok(None),
                n => density(&api, &opts.wasm_image, n, Some(&second)).await.map(Some),
            };
            let stopped = second.stop().await;
            report.density = measured?;
            stopped?;

            if opts.expired_sandboxes > 0 {
                report.expired_start =
                    Some(expiry::measure(launch(5), opts.expired_sandboxes, 1_000_000_000, 1_000_000).await?);
            }

            eprintln!("bench: starting servers for code contexts");
            let mut third = launch(3);
            third.env = vec![(
                "STACYVM_CONTEXTS_MAX_LIVE".into(),
                (opts.context_density + 64).to_string(),
            )];
            let (third, _) = third.start().await?;
            let mut fourth = launch(4);
            fourth.env = vec![("STACYVM_CONTEXT_IDLE_PAUSE".into(), "1s".into())];
            let (fourth, _) = fourth.start().await?;
            let (api, pausing) = (Api::new(&third.url, None)?, Api::new(&fourth.url, None)?);
            let samples = opts.samples.unwrap_or(200);
            let mut measured = Ok(());
            for (lang, idle) in [
                (&contexts::JAVASCRIPT, opts.context_density),
                (&contexts::PYTHON, PYTHON_IDLE.min(opts.context_density)),
            ] {
                match contexts::measure(&api, &pausing, Some(&third), samples, opts.warmup, idle, lang).await {
                    Ok(one) => report.contexts.push(one),
                    Err(e) => {
                        measured = Err(e);
                        break;
                    }
                }
            }
            let stopped = (third.stop().await, fourth.stop().await);
            measured?;
            stopped.0?;
            stopped.1?;
            report
        }
    };
    report.notes = notes;
    report.compute_ratios();
    println!("{report}");
    if let Some(path) = &opts.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// Latency and throughput against one server.
async fn measure(
    api: &Api,
    opts: &Options,
    native: Option<&NativePython>,
    notes: &mut Vec<String>,
    server: String,
) -> anyhow::Result<Report> {
    let server_version = api.health().await.context("the server does not answer /health")?;
    let warmup = opts.warmup;
    let mut latency = Vec::new();
    let mut push = |metric: &str, summary: Option<Summary>| {
        if let Some(summary) = summary {
            latency.push(Latency {
                metric: metric.into(),
                summary,
            });
        }
    };

    let samples = opts.samples.unwrap_or(200);
    eprintln!("bench: wasm create and destroy, {warmup} + {samples} times");
    let (create, destroy) = create_destroy(api, "wasm", &opts.wasm_image, warmup, samples).await?;
    eprintln!("bench: wasm exec, {warmup} + {samples} times");
    let exec = exec_latency(api, "wasm", &opts.wasm_image, PY_COMMAND, warmup, samples).await?;
    push("wasm create", create);
    push("wasm exec", exec);
    push("wasm destroy", destroy);
    eprintln!("bench: wasm template spawn (one file, one setup command), {warmup} + {samples} times");
    push(
        "wasm template spawn",
        template_spawns(api, &opts.wasm_image, warmup, samples).await?,
    );

    for l in shell::measure(api, &opts.wasm_image, warmup, opts.samples.unwrap_or(50)).await? {
        push(&l.metric, Some(l.summary));
    }
    eprintln!("bench: MCP run_code of print(40+2) over stdio, {warmup} + {samples} times");
    push(
        "mcp run_code (stdio)",
        mcp::run_code_latency(api, warmup, samples).await?,
    );

    if let Some(native) = native {
        let samples = opts.samples.unwrap_or(30);
        eprintln!(
            "bench: native spawns of {}, {warmup} + {samples} times",
            native.path.display()
        );
        let path = native.path.clone();
        let spawns = tokio::task::spawn_blocking(move || native_spawns(&path, warmup, samples)).await??;
        push("native spawn", spawns);
    }

    let docker_samples = opts.samples.unwrap_or(50);
    match api.provider("docker").await? {
        Some(p) if p.available => {
            eprintln!("bench: docker create, exec and destroy, {warmup} + {docker_samples} times");
            match create_destroy(api, "docker", &opts.docker_image, warmup, docker_samples).await {
                Ok((create, destroy)) => {
                    let exec = exec_latency(
                        api,
                        "docker",
                        &opts.docker_image,
                        DOCKER_COMMAND,
                        warmup,
                        docker_samples,
                    )
                    .await?;
                    push("docker create", create);
                    push("docker exec", exec);
                    push("docker destroy", destroy);
                    // A server bench starts gets its pool later, on a
                    // server of its own; a `--url` server is measured if
                    // its pool holds the image.
                    if opts.url.is_some() {
                        match api.pool(&opts.docker_image).await? {
                            Some((_, target)) if target > 0 => {
                                eprintln!(
                                    "bench: docker create served by the warm pool, {warmup} + {docker_samples} times"
                                );
                                push(
                                    "docker create (warm pool)",
                                    pooled_creates(api, &opts.docker_image, warmup, docker_samples).await?,
                                );
                            }
                            _ => notes.push(format!(
                                "docker create (warm pool) skipped: the server's [docker.pool] does not hold {}",
                                opts.docker_image
                            )),
                        }
                    }
                }
                Err(e) => notes.push(format!("docker skipped: {e:#}")),
            }
        }
        Some(p) => notes.push(format!(
            "docker skipped: the provider is unavailable ({})",
            p.reason.as_deref().unwrap_or("no reason given")
        )),
        None => notes.push("docker skipped: the server has no docker provider".into()),
    }

    if !opts.no_data {
        let native = native.map(|n| n.path.as_path());
        latency.extend(data::measure(api, native, warmup, opts.samples, notes).await?);
    }

    let mut throughput = Vec::new();
    let duration = Duration::from_secs(opts.throughput_seconds);
    for concurrency in CONCURRENCIES {
        eprintln!("bench: wasm exec throughput at concurrency {concurrency} for {duration:?}");
        throughput.push(exec_throughput(api, &opts.wasm_image, concurrency, duration).await?);
    }

    let id = api.create("wasm", &opts.wasm_image).await?;
    let wasm_python = api
        .exec(&id, r#"python3 -c "import sys; print(sys.version.split()[0])""#)
        .await;
    api.destroy(&id).await?;

    Ok(Report {
        environment: Environment {
            server,
            server_version,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu: cpu_model(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_string()),
            native_python: native.map(|n| format!("Python {} at {}", n.version, n.path.display())),
            wasm_python: wasm_python?.trim().to_string(),
        },
        latency,
        throughput,
        density: None,
        contexts: vec![],
        warm_start_ms: None,
        expired_start: None,
        ratios: Default::default(),
        notes: Vec::new(),
    })
}

/// Times creating and destroying one sandbox at a time.
async fn create_destroy(
    api: &Api,
    provider: &str,
    image: &str,
    warmup: usize,
    samples: usize,
) -> anyhow::Result<(Option<Summary>, Option<Summary>)> {
    let mut creates = Vec::with_capacity(samples);
    let mut destroys = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let started = Instant::now();
        let id = api.create(provider, image).await?;
        let create = started.elapsed();
        let started = Instant::now();
        api.destroy(&id).await?;
        let destroy = started.elapsed();
        if i >= warmup {
            creates.push(create);
            destroys.push(destroy);
        }
    }
    Ok((Summary::of(creates), Summary::of(destroys)))
}

/// Ready containers the pooled server keeps for the docker image.
const POOL_SIZE: usize = 4;
/// How long the pool may take to refill before a timed create.
const REFILL_TIMEOUT: Duration = Duration::from_secs(120);

/// Times creates that the docker warm pool serves: before each, waits
/// (untimed) until the pool is full again, so every timed create takes a
/// ready container rather than racing the refill.
async fn pooled_creates(api: &Api, image: &str, warmup: usize, samples: usize) -> anyhow::Result<Option<Summary>> {
    let mut creates = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let waiting = Instant::now();
        loop {
            match api.pool(image).await? {
                Some((ready, target)) if target > 0 && ready >= target => break,
                Some(_) => {}
                None => bail!("the server's warm pool does not hold {image}"),
            }
            if waiting.elapsed() > REFILL_TIMEOUT {
                bail!("the warm pool of {image} did not refill within {REFILL_TIMEOUT:?}; see GET /pool/status");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        let id = api.create("docker", image).await?;
        let create = started.elapsed();
        api.destroy(&id).await?;
        if i >= warmup {
            creates.push(create);
        }
    }
    Ok(Summary::of(creates))
}

/// The template bench spawns: a plain create plus what a template adds, one
/// file written and one setup command run.
const BENCH_TEMPLATE: &str = "stacyvm-bench";

/// Times spawning a wasm sandbox from a template with one file and one
/// setup command, and destroying it (untimed); removes the template after.
async fn template_spawns(api: &Api, image: &str, warmup: usize, samples: usize) -> anyhow::Result<Option<Summary>> {
    api.save_template(&serde_json::json!({
        "name": BENCH_TEMPLATE,
        "provider": "wasm",
        "image": image,
        "files": [{"path": "data/input.txt", "content": "42\n"}],
        "setup": ["echo ready > data/ready.txt"],
    }))
    .await?;
    let mut spawns = Vec::with_capacity(samples);
    let mut outcome = Ok(());
    for i in 0..warmup + samples {
        let started = Instant::now();
        let id = match api.spawn_template(BENCH_TEMPLATE).await {
            Ok(id) => id,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        let spawn = started.elapsed();
        if let Err(e) = api.destroy(&id).await {
            outcome = Err(e);
            break;
        }
        if i >= warmup {
            spawns.push(spawn);
        }
    }
    let deleted = api.delete_template(BENCH_TEMPLATE).await;
    outcome?;
    deleted?;
    Ok(Summary::of(spawns))
}

/// Times one exec at a time in one sandbox.
async fn exec_latency(
    api: &Api,
    provider: &str,
    image: &str,
    command: &str,
    warmup: usize,
    samples: usize,
) -> anyhow::Result<Option<Summary>> {
    let id = api.create(provider, image).await?;
    let result = time_execs(api, &id, command, EXPECTED, warmup, samples).await;
    api.destroy(&id).await?;
    result
}

/// Times `command` run one at a time in sandbox `id`, checking that each
/// run prints `expected`.
pub(super) async fn time_execs(
    api: &Api,
    id: &str,
    command: &str,
    expected: &str,
    warmup: usize,
    samples: usize,
) -> anyhow::Result<Option<Summary>> {
    let mut times = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let started = Instant::now();
        let stdout = api.exec(id, command).await?;
        let elapsed = started.elapsed();
        if stdout != expected {
            bail!("{command:?} printed {stdout:?}, not {expected:?}");
        }
        if i >= warmup {
            times.push(elapsed);
        }
    }
    Ok(Summary::of(times))
}

/// `concurrency` clients, each with its own sandbox, exec `print(40+2)` back
/// to back for `duration`. Execs per second counts every exec that finished,
/// over the time until the last one did.
async fn exec_throughput(api: &Api, image: &str, concurrency: usize, duration: Duration) -> anyhow::Result<Throughput> {
    let mut ids = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        ids.push(api.create("wasm", image).await?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let clients: Vec<_> = ids
        .iter()
        .map(|id| {
            let (api, id) = (api.clone(), id.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let stdout = api.exec(&id, PY_COMMAND).await?;
                    times.push(started.elapsed());
                    check_output(PY_COMMAND, &stdout)?;
                }
                anyhow::Ok(times)
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut failure = None;
    for client in clients {
        match client.await? {
            Ok(t) => times.extend(t),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    for id in &ids {
        api.destroy(id).await?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let execs = times.len();
    Ok(Throughput {
        concurrency,
        execs,
        seconds,
        execs_per_sec: execs as f64 / seconds,
        latency: Summary::of(times).context("no exec finished")?,
    })
}

/// Creates `count` idle wasm sandboxes one after another, reads the
/// server's RSS before and after when `server` is ours, and destroys them.
async fn density(api: &Api, image: &str, count: usize, server: Option<&Server>) -> anyhow::Result<Density> {
    eprintln!("bench: density, {count} idle wasm sandboxes");
    let rss_before = server.map(Server::rss_kib).transpose()?;
    let mut ids = Vec::with_capacity(count);
    let started = Instant::now();
    let mut failure = None;
    for _ in 0..count {
        match api.create("wasm", image).await {
            Ok(id) => ids.push(id),
            Err(e) => {
                failure = Some(e.context(format!("after {} sandboxes", ids.len())));
                break;
            }
        }
    }
    let create_all = started.elapsed();
    let rss_after = server.map(Server::rss_kib).transpose()?;
    let started = Instant::now();
    for id in &ids {
        api.destroy(id).await?;
    }
    let destroy_all = started.elapsed();
    if let Some(e) = failure {
        return Err(e);
    }
    let rss_per_sandbox_kib = match (rss_before, rss_after) {
        (Some(before), Some(after)) => Some((after as f64 - before as f64) / count as f64),
        _ => None,
    };
    Ok(Density {
        sandboxes: count,
        create_all_ms: create_all.as_secs_f64() * 1e3,
        destroy_all_ms: destroy_all.as_secs_f64() * 1e3,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_sandbox_kib,
    })
}

fn check_output(command: &str, stdout: &str) -> anyhow::Result<()> {
    if stdout != EXPECTED {
        bail!("{command:?} printed {stdout:?}, not {EXPECTED:?}");
    }
    Ok(())
}

struct NativePython {
    path: PathBuf,
    version: String,
}

/// The interpreter for the native baseline. `python3` on PATH may be a shim
/// (pyenv's is a shell script that adds well over 100 ms), so the baseline
/// spawns the real executable that `python3` reports as `sys.executable`.
fn native_python(explicit: Option<&Path>) -> anyhow::Result<NativePython> {
    let program = explicit.unwrap_or(Path::new("python3"));
    let output = std::process::Command::new(program)
        .args(["-c", "import sys; print(sys.version.split()[0]); print(sys.executable)"])
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !output.status.success() {
        bail!("{} exited with {}", program.display(), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    let version = lines.next().unwrap_or("unknown").to_string();
    let path = match (explicit, lines.next()) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(exe)) if !exe.is_empty() => PathBuf::from(exe),
        (None, _) => program.to_path_buf(),
    };
    Ok(NativePython { path, version })
}

/// Times spawning `python -c "print(40+2)"` and waiting for it to exit.
fn native_spawns(python: &Path, warmup: usize, samples: usize) -> anyhow::Result<Option<Summary>> {
    let mut times = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let started = Instant::now();
        let output = std::process::Command::new(python)
            .args(["-c", "print(40+2)"])
            .output()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let elapsed = started.elapsed();
        check_output("python3 -c", &String::from_utf8_lossy(&output.stdout))?;
        if i >= warmup {
            times.push(elapsed);
        }
    }
    Ok(Summary::of(times))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
