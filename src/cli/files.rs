//! `stacyvm sandbox cp`: files and directories in and out of a sandbox,
//! byte for byte, like `docker cp`.
//!
//! One side is `SANDBOX:PATH`, the other a local path or `-` (standard
//! input or output, a single file). Copying to an existing directory puts
//! the source inside it under its own name. Contents move through the raw
//! file routes (`PUT`/`GET /files`), streamed, never as JSON; permission
//! bits go along (`chmod` after an upload when they are not 0644). A local
//! tree is walked without following symlinks (they are skipped and named),
//! and a tree of either side is bounded in entries and depth.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use super::Client;

/// Most entries one copy walks, and deepest directory nesting: a copy is a
/// transfer, not a backup tool, and a hostile tree must not run forever.
const MAX_ENTRIES: usize = 100_000;
const MAX_DEPTH: usize = 256;

enum End {
    Local(PathBuf),
    Stdio,
    Remote { id: String, path: String },
}

fn parse(arg: &str) -> End {
    if arg == "-" {
        return End::Stdio;
    }
    match arg.split_once(':') {
        Some((id, path)) if id.starts_with("sb_") && !id.contains('/') => End::Remote {
            id: id.to_string(),
            path: if path.is_empty() {
                "/workspace".into()
            } else {
                path.to_string()
            },
        },
        _ => End::Local(PathBuf::from(arg)),
    }
}

pub async fn copy(c: &Client, source: &str, destination: &str) -> anyhow::Result<()> {
    match (parse(source), parse(destination)) {
        (End::Remote { .. }, End::Remote { .. }) => {
            bail!("copy between two sandboxes is not supported; copy to a local path first")
        }
        (End::Local(_) | End::Stdio, End::Local(_) | End::Stdio) => {
            bail!("one side of cp must be SANDBOX:PATH (for example sb_0123456789abcdef0123:/workspace/file)")
        }
        (End::Stdio, End::Remote { id, path }) => {
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(tokio::io::stdin()));
            put(c, &id, &path, body).await
        }
        (End::Local(local), End::Remote { id, path }) => upload(c, &local, &id, &path).await,
        (End::Remote { id, path }, End::Stdio) => {
            let mut out = tokio::io::stdout();
            download_file(c, &id, &path, &mut out).await?;
            out.flush().await?;
            Ok(())
        }
        (End::Remote { id, path }, End::Local(local)) => download(c, &id, &path, &local).await,
    }
}

async fn stat(c: &Client, id: &str, path: &str) -> anyhow::Result<Option<Value>> {
    let rb = c
        .request(Method::GET, &format!("/sandboxes/{id}/files/stat"))
        .query(&[("path", path)]);
    match c.send(rb).await {
        Ok(resp) => Ok(Some(resp.json().await?)),
        Err(e)
            if e.downcast_ref::<super::ApiFailure>()
                .is_some_and(|f| f.status == 404 && f.code == "not_found") =>
        {
            // A missing file, or a missing sandbox: only the first is fine.
            let message = &e.downcast_ref::<super::ApiFailure>().expect("checked").message;
            if message.starts_with("sandbox ") {
                Err(e)
            } else {
                Ok(None)
            }
        }
        Err(e) => Err(e),
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn base_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} has no file name to copy under", path.display()))
}

async fn put(c: &Client, id: &str, path: &str, body: reqwest::Body) -> anyhow::Result<()> {
    let rb = c
        .request(Method::PUT, &format!("/sandboxes/{id}/files"))
        .query(&[("path", path)])
        .body(body);
    c.send(rb).await?;
    Ok(())
}

async fn chmod(c: &Client, id: &str, path: &str, mode: u32) -> anyhow::Result<()> {
    let rb = c
        .request(Method::POST, &format!("/sandboxes/{id}/files/chmod"))
        .json(&json!({"path": path, "mode": format!("{:04o}", mode & 0o777)}));
    c.send(rb).await?;
    Ok(())
}

async fn upload_file(c: &Client, local: &Path, id: &str, path: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("cannot open {}", local.display()))?;
    let mode = file.metadata().await?.permissions().mode() & 0o777;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    put(c, id, path, body).await?;
    if mode != 0o644 {
        chmod(c, id, path, mode).await?;
    }
    Ok(())
}

async fn upload(c: &Client, local: &Path, id: &str, path: &str) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(local).with_context(|| format!("cannot read {}", local.display()))?;
    let into_dir = path.ends_with('/') || stat(c, id, path).await?.is_some_and(|s| s["is_dir"] == true);
    let target = if into_dir {
        join(path, &base_name(local)?)
    } else {
        path.to_string()
    };
    if !meta.is_dir() {
        return upload_file(c, local, id, &target).await;
    }
    // A directory: every file under it, parents made as the files land;
    // empty directories with `mkdir -p`.
    let mut stack = vec![(local.to_path_buf(), target, 0usize)];
    let mut seen = 0usize;
    while let Some((dir, remote, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            bail!("{} is nested deeper than {MAX_DEPTH} directories", dir.display());
        }
        let mut empty = true;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            seen += 1;
            if seen > MAX_ENTRIES {
                bail!("{} holds more than {MAX_ENTRIES} entries", local.display());
            }
            empty = false;
            let kind = entry.file_type()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let remote_path = join(&remote, &name);
            if kind.is_dir() {
                stack.push((entry.path(), remote_path, depth + 1));
            } else if kind.is_file() {
                upload_file(c, &entry.path(), id, &remote_path).await?;
            } else {
                eprintln!(
                    "stacyvm: skipped {} (not a regular file or directory)",
                    entry.path().display()
                );
            }
        }
        if empty {
            let body = json!({"command": "mkdir", "args": ["-p", remote], "mode": "argv"});
            let out: Value = c
                .send(c.request(Method::POST, &format!("/sandboxes/{id}/exec")).json(&body))
                .await?
                .json()
                .await?;
            if out["exit_code"] != 0 {
                bail!(
                    "cannot make the directory {remote}: {}",
                    out["stderr"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

async fn download_file<W: tokio::io::AsyncWrite + Unpin>(
    c: &Client,
    id: &str,
    path: &str,
    out: &mut W,
) -> anyhow::Result<()> {
    let rb = c
        .request(Method::GET, &format!("/sandboxes/{id}/files"))
        .query(&[("path", path)]);
    let mut stream = c.send(rb).await?.bytes_stream();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk.context("the download broke off")?).await?;
    }
    Ok(())
}

fn mode_of(entry: &Value) -> Option<u32> {
    u32::from_str_radix(entry["mode"].as_str()?, 8).ok()
}

async fn download_to(c: &Client, id: &str, path: &str, local: &Path, mode: Option<u32>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = tokio::fs::File::create(local)
        .await
        .with_context(|| format!("cannot create {}", local.display()))?;
    download_file(c, id, path, &mut file).await?;
    file.flush().await?;
    if let Some(mode) = mode {
        std::fs::set_permissions(local, std::fs::Permissions::from_mode(mode & 0o777))?;
    }
    Ok(())
}

async fn download(c: &Client, id: &str, path: &str, local: &Path) -> anyhow::Result<()> {
    let Some(top) = stat(c, id, path).await? else {
        bail!("{path} does not exist in sandbox {id}");
    };
    let name = top["name"].as_str().unwrap_or("copy").to_string();
    let target = if local.is_dir() {
        local.join(&name)
    } else {
        local.to_path_buf()
    };
    if top["is_dir"] != true {
        return download_to(c, id, path, &target, mode_of(&top)).await;
    }
    let mut stack = vec![(top["path"].as_str().unwrap_or(path).to_string(), target, 0usize)];
    let mut seen = 0usize;
    while let Some((remote, dir, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            bail!("{remote} is nested deeper than {MAX_DEPTH} directories");
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let rb = c
            .request(Method::GET, &format!("/sandboxes/{id}/files/list"))
            .query(&[("path", remote.as_str())]);
        let entries: Value = c.send(rb).await?.json().await?;
        for entry in entries.as_array().map(Vec::as_slice).unwrap_or_default() {
            seen += 1;
            if seen > MAX_ENTRIES {
                bail!("{path} holds more than {MAX_ENTRIES} entries");
            }
            let (Some(name), Some(entry_path)) = (entry["name"].as_str(), entry["path"].as_str()) else {
                continue;
            };
            // Names come from the sandbox: never let one climb out.
            if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                eprintln!("stacyvm: skipped an entry named {name:?}");
                continue;
            }
            let local_path = dir.join(name);
            if entry["is_dir"] == true {
                stack.push((entry_path.to_string(), local_path, depth + 1));
            } else {
                download_to(c, id, entry_path, &local_path, mode_of(entry)).await?;
            }
        }
    }
    Ok(())
}
