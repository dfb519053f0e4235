//! A warm start with expired sandboxes waiting to be removed: the server
//! must answer /health at once and remove them in the background.
//!
//! Bench creates the sandboxes on a server of its own with a short TTL,
//! stops it, fills their directories on disk (faster than through the API by
//! orders of magnitude), lets the TTL pass, then starts the server again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use super::client::Api;
use super::server::Launch;

#[derive(Debug, Clone, Serialize)]
pub struct ExpiredStart {
    pub sandboxes: usize,
    pub bytes: u64,
    pub entries: u64,
    /// Spawn to the first 200 from /health.
    pub start_ms: f64,
    /// Spawn until the last of their files was deleted.
    pub removed_ms: f64,
}

/// How long the sandboxes live: long enough to be created and filled
/// before the first server stops, short enough not to wait long after.
const TTL: &str = "2s";

pub async fn measure(launch: Launch, sandboxes: usize, bytes: u64, entries: u64) -> anyhow::Result<ExpiredStart> {
    eprintln!("bench: warm start with {sandboxes} expired sandboxes holding {bytes} bytes in {entries} entries");
    let (server, _) = launch.start().await?;
    let api = Api::new(&server.url, None)?;
    let mut ids = Vec::with_capacity(sandboxes);
    for _ in 0..sandboxes {
        ids.push(api.create_json(json!({"provider": "wasm", "ttl": TTL})).await?);
    }
    server.stop().await?;
    let expires = Instant::now() + Duration::from_secs(2);
    let sandboxes_dir = launch.data_dir.join("sandboxes");
    let per_sandbox_bytes = bytes / sandboxes.max(1) as u64;
    let per_sandbox_entries = entries / sandboxes.max(1) as u64;
    let dirs: Vec<_> = ids.iter().map(|id| sandboxes_dir.join(id)).collect();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for dir in &dirs {
            fill(&dir.join("workspace"), per_sandbox_bytes, per_sandbox_entries)?;
        }
        Ok(())
    })
    .await??;
    tokio::time::sleep_until(expires.into()).await;
    let trash = launch.data_dir.join("trash");
    let (server, start) = launch.start().await?;
    let started = Instant::now() - start;
    // Removal is done when no sandbox directory and nothing in the trash
    // is left.
    let removed = loop {
        let left = count_entries(&sandboxes_dir) + count_entries(&trash);
        if left == 0 {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{left} directories still there after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let listed = Api::new(&server.url, None)?.list_count().await?;
    server.stop().await?;
    anyhow::ensure!(listed == 0, "{listed} expired sandboxes still listed");
    Ok(ExpiredStart {
        sandboxes,
        bytes: per_sandbox_bytes * sandboxes as u64,
        entries: per_sandbox_entries * sandboxes as u64,
        start_ms: start.as_secs_f64() * 1e3,
        removed_ms: removed.as_secs_f64() * 1e3,
    })
}

/// Writes one file of `bytes` and `entries - 1` empty files in
/// directories of 1,000.
fn fill(dir: &Path, bytes: u64, entries: u64) -> anyhow::Result<()> {
    let big = std::fs::File::create(dir.join("big"))?;
    // Real blocks, not a hole: the deletes must free them.
    let chunk = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    let mut writer = std::io::BufWriter::new(big);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut writer, &chunk[..n])?;
        left -= n as u64;
    }
    let mut made = 1;
    let mut sub = 0;
    while made < entries {
        let d = dir.join(format!("d{sub}"));
        std::fs::create_dir(&d).with_context(|| format!("cannot create {}", d.display()))?;
        made += 1;
        for i in 0..999 {
            if made >= entries {
                break;
            }
            std::fs::File::create(d.join(format!("f{i}")))?;
            made += 1;
        }
        sub += 1;
    }
    Ok(())
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}
