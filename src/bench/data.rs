//! The data-science metrics: pandas on the `python:3.15` image (a one-line
//! DataFrame and a groupby over 100,000 rows), each beside the same program
//! run natively where the host's Python has pandas, and `pip install` of a
//! pure-Python package with a cold and a warm cache, then its first import.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};

use super::client::Api;
use super::report::Latency;
use super::stats::Summary;

/// The image the data metrics run on.
pub const DATA_IMAGE: &str = "python:3.15";

/// The one-line DataFrame, as the issue gives it: `python3.15 -c ...`.
const PANDAS_CODE: &str = "import pandas as pd; print(pd.DataFrame({'a':[1,2,3]})['a'].sum())";
const PANDAS_EXPECTED: &str = "6\n";

/// A groupby over 100,000 rows: ten groups, their sums added up.
const GROUPBY_CODE: &str = "import numpy as np, pandas as pd; \
    df = pd.DataFrame({'k': np.arange(100_000) % 10, 'v': np.arange(100_000)}); \
    print(df.groupby('k')['v'].sum().sum())";
const GROUPBY_EXPECTED: &str = "4999950000\n";

/// The package `pip install` installs, and what its first import prints.
const PIP_INSTALL: &str = "pip install humanize";
const IMPORT_COMMAND: &str = r#"python3 -c "import humanize; print(humanize.intcomma(1234567))""#;
const IMPORT_EXPECTED: &str = "1,234,567\n";

/// The metrics of this module, in report order. A server without the image
/// (or without a package index) gives a note instead of failing the bench.
pub async fn measure(
    api: &Api,
    native: Option<&Path>,
    warmup: usize,
    samples: Option<usize>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Latency>> {
    let mut out = Vec::new();
    let mut push = |metric: &str, summary: Option<Summary>| {
        if let Some(summary) = summary {
            out.push(Latency {
                metric: metric.into(),
                summary,
            });
        }
    };
    match api.create("wasm", DATA_IMAGE).await {
        Err(e) => notes.push(format!("data metrics skipped: {e:#}")),
        Ok(id) => {
            let pandas = format!("python3.15 -c \"{PANDAS_CODE}\"");
            let groupby = format!("python3.15 -c \"{GROUPBY_CODE}\"");
            let n = samples.unwrap_or(100);
            eprintln!("bench: {DATA_IMAGE} pandas exec, {warmup} + {n} times");
            let result = super::time_execs(api, &id, &pandas, PANDAS_EXPECTED, warmup, n).await;
            let result = match result {
                Ok(s) => {
                    push("python:3.15 pandas exec", s);
                    let n = samples.unwrap_or(50);
                    eprintln!("bench: {DATA_IMAGE} pandas groupby of 100k rows, {warmup} + {n} times");
                    super::time_execs(api, &id, &groupby, GROUPBY_EXPECTED, warmup, n).await
                }
                Err(e) => Err(e),
            };
            api.destroy(&id).await?;
            push("python:3.15 pandas groupby 100k", result?);
        }
    }
    if let Some(python) = native {
        if native_has_pandas(python) {
            let n = samples.unwrap_or(20);
            eprintln!(
                "bench: native pandas spawns of {}, {warmup} + {n} times",
                python.display()
            );
            let path = python.to_path_buf();
            let (pandas, groupby) = tokio::task::spawn_blocking(move || {
                anyhow::Ok((
                    native_runs(&path, PANDAS_CODE, PANDAS_EXPECTED, warmup, n)?,
                    native_runs(&path, GROUPBY_CODE, GROUPBY_EXPECTED, warmup, n)?,
                ))
            })
            .await??;
            push("native pandas spawn", pandas);
            push("native pandas groupby 100k", groupby);
        } else {
            notes.push(format!(
                "no native pandas baseline: {} cannot import pandas",
                python.display()
            ));
        }
    }
    match pip_metrics(api, warmup, samples.unwrap_or(20)).await {
        Ok((cold, warm, import)) => {
            push("pip install humanize, cold cache", cold);
            push("pip install humanize, warm cache", warm);
            push("first import humanize", import);
        }
        Err(e) => notes.push(format!("pip metrics skipped: {e:#}")),
    }
    Ok(out)
}

/// `pip install humanize` in fresh `python:3.14` sandboxes: the first with
/// the server's package cache cold (one sample: only a server that has never
/// installed it has a cold cache), then `samples` with it warm; after each
/// warm install, the first exec that imports the package.
async fn pip_metrics(
    api: &Api,
    warmup: usize,
    samples: usize,
) -> anyhow::Result<(Option<Summary>, Option<Summary>, Option<Summary>)> {
    eprintln!("bench: pip install humanize, 1 cold + {warmup} + {samples} warm, and its first import");
    let (mut cold, mut warm, mut import) = (vec![], vec![], vec![]);
    for i in 0..=warmup + samples {
        let id = api.create("wasm", "python:3.14").await?;
        let run = async {
            let started = Instant::now();
            api.exec(&id, PIP_INSTALL)
                .await
                .context("the package index may be unreachable")?;
            let installed = started.elapsed();
            let started = Instant::now();
            let stdout = api.exec(&id, IMPORT_COMMAND).await?;
            let imported = started.elapsed();
            if stdout != IMPORT_EXPECTED {
                bail!("{IMPORT_COMMAND:?} printed {stdout:?}, not {IMPORT_EXPECTED:?}");
            }
            anyhow::Ok((installed, imported))
        };
        let result = run.await;
        api.destroy(&id).await?;
        let (installed, imported) = result?;
        if i == 0 {
            cold.push(installed);
        } else if i > warmup {
            warm.push(installed);
            import.push(imported);
        }
    }
    Ok((Summary::of(cold), Summary::of(warm), Summary::of(import)))
}

fn native_has_pandas(python: &Path) -> bool {
    std::process::Command::new(python)
        .args(["-c", "import pandas"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Times spawning `python -c code` natively and waiting for it to exit.
fn native_runs(
    python: &Path,
    code: &str,
    expected: &str,
    warmup: usize,
    samples: usize,
) -> anyhow::Result<Option<Summary>> {
    let mut times = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let started = Instant::now();
        let output = std::process::Command::new(python)
            .args(["-c", code])
            .output()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&output.stdout);
        if stdout != expected {
            bail!("native {code:?} printed {stdout:?}, not {expected:?}");
        }
        if i >= warmup {
            times.push(elapsed);
        }
    }
    Ok(Summary::of(times))
}
