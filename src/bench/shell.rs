//! The wasm shell's figures: a loop of a thousand builtin calls, whose cost
//! is the interpreter's own; the same loop starting a guest each time; and
//! a pipeline of three wasm utilities over a 10 MB file, whose cost is the
//! guests' and the pipes' between them.

use anyhow::bail;

use super::client::Api;
use super::report::Latency;

/// A `for` loop of 1,000 iterations, each calling builtins only (`[`).
pub const LOOP: &str = "n=0; for i in $(seq 1000); do n=$((n+i)); [ $i -gt 0 ]; done; echo $n";
/// The same loop starting a guest in each iteration: `echo` is a utility.
pub const GUEST_LOOP: &str = "n=0; for i in $(seq 1000); do n=$((n+i)); echo $i > /dev/null; done; echo $n";
const LOOP_PRINTS: &str = "500500\n";

/// About 10.9 MB: the numbers 1 to 1,500,000, one per line.
const MAKE_FILE: &str = "seq 1500000 > big.txt && wc -c < big.txt";
const FILE_BYTES: &str = "10888896\n";
/// Three wasm guests joined by pipes, streaming the whole file.
pub const PIPELINE: &str = "cat big.txt | grep 7 | wc -l";
/// The numbers up to 1,500,000 with a 7 in them.
const PIPELINE_PRINTS: &str = "673314\n";

/// Times the loop and the pipeline in one sandbox of `image`.
pub async fn measure(api: &Api, image: &str, warmup: usize, samples: usize) -> anyhow::Result<Vec<Latency>> {
    let id = api.create("wasm", image).await?;
    let result = async {
        let made = api.exec(&id, MAKE_FILE).await?;
        if made != FILE_BYTES {
            bail!("{MAKE_FILE:?} printed {made:?}, not {FILE_BYTES:?}");
        }
        let mut out = vec![];
        for (metric, command, prints, samples) in [
            ("wasm shell loop (1,000 builtin iterations)", LOOP, LOOP_PRINTS, samples),
            // A thousand guests per run: fewer samples.
            (
                "wasm shell loop (1,000 guest calls)",
                GUEST_LOOP,
                LOOP_PRINTS,
                samples.min(20),
            ),
            // Each run streams 10.9 MB through three guests: fewer samples.
            (
                "wasm shell pipeline (3 utilities, 10.9 MB)",
                PIPELINE,
                PIPELINE_PRINTS,
                samples.min(20),
            ),
        ] {
            eprintln!("bench: {metric}, {warmup} + {samples} times");
            if let Some(summary) = super::time_execs(api, &id, command, prints, warmup, samples).await? {
                out.push(Latency {
                    metric: metric.into(),
                    summary,
                });
            }
        }
        Ok(out)
    }
    .await;
    api.destroy(&id).await?;
    result
}
