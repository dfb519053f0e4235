//! The MCP round trip an agent sees: `run_code` of `print(40+2)` over stdio,
//! from an MCP client (rmcp's) through `stacyvm mcp --url` to the server
//! and back, in the session's own sandbox.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::transport::{ConfigureCommandExt as _, TokioChildProcess};
use serde_json::json;

use super::client::Api;
use super::stats::Summary;

/// Times `samples` calls of `run_code` after `warmup` untimed ones (the
/// first of which makes the session's sandbox).
pub async fn run_code_latency(api: &Api, warmup: usize, samples: usize) -> anyhow::Result<Option<Summary>> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let command = tokio::process::Command::new(exe).configure(|c| {
        c.args(["mcp", "--url", api.base.as_str()]);
        if let Some(key) = &api.key {
            c.args(["--api-key", key.as_str()]);
        }
        c.env("STACYVM_LOG", "warn");
    });
    let transport = TokioChildProcess::new(command).context("cannot start `stacyvm mcp`")?;
    let client = ClientConfig::default()
        .serve(transport)
        .await
        .context("the MCP handshake with `stacyvm mcp` failed")?;
    let arguments = json!({"language": "python", "code": "print(40+2)"});
    let arguments = arguments.as_object().cloned().unwrap_or_default();
    let mut timed = Vec::with_capacity(samples);
    let mut sandbox = None;
    for i in 0..warmup + samples {
        let started = Instant::now();
        let result = client
            .call_tool(CallToolRequestParams::new("run_code").with_arguments(arguments.clone()))
            .await
            .context("run_code over MCP failed")?;
        let elapsed: Duration = started.elapsed();
        let stdout = result.structured_content.as_ref().and_then(|s| s["stdout"].as_str());
        if result.is_error == Some(true) || stdout != Some("42\n") {
            bail!("run_code over MCP answered {:?}", result.content);
        }
        sandbox = result
            .structured_content
            .as_ref()
            .and_then(|s| s["sandbox_id"].as_str().map(str::to_string));
        if i >= warmup {
            timed.push(elapsed);
        }
    }
    client.cancel().await.context("cannot close the MCP session")?;
    // The session destroys its sandbox when it ends, unless the child is
    // stopped first; destroying it here too is harmless (idempotent).
    if let Some(id) = sandbox {
        api.destroy(&id).await?;
    }
    Ok(Summary::of(timed))
}
