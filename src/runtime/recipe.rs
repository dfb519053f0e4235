//! Images built on this machine from a recipe under `images/<name>/`, which
//! is embedded in the binary: the recipe is written out, its `build.py` runs
//! with the host's Python, and the result is used only if its `build.json`
//! names this exact recipe and the component's bytes match the recorded
//! hash. A built image is kept and reused until the recipe changes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::ImageManifest;
use super::fetch::sha256_file;

type RecipeFiles = &'static [(&'static str, &'static [u8])];
const RECIPES: &[(&str, RecipeFiles)] = include!(concat!(env!("OUT_DIR"), "/recipe_files.rs"));

/// What `build.py` records about the image it built.
#[derive(Debug, Deserialize)]
struct BuildInfo {
    recipe_sha256: String,
    wasm_sha256: String,
}

/// A built image: the component and the directory holding its mounts.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub wasm: PathBuf,
    pub wasm_sha256: String,
    pub dir: PathBuf,
}

fn files(recipe: &str) -> anyhow::Result<RecipeFiles> {
    RECIPES
        .iter()
        .find(|(name, _)| *name == recipe)
        .map(|(_, files)| *files)
        .with_context(|| format!("no recipe images/{recipe}/ is built into this binary"))
}

/// The digest `build.py --print-recipe` prints for the same files.
pub fn digest(recipe: &str) -> anyhow::Result<String> {
    let mut files = files(recipe)?.to_vec();
    files.sort_by_key(|(rel, _)| rel.replace('\\', "/"));
    let mut h = Sha256::new();
    for (rel, data) in files {
        h.update(format!("{}\0{}\0", rel.replace('\\', "/"), data.len()).as_bytes());
        h.update(data);
    }
    Ok(hex::encode(h.finalize()))
}

/// The image built from the current recipe, if `dir` holds it intact.
fn existing(dir: &Path, recipe_sha: &str) -> Option<BuiltImage> {
    let info: BuildInfo = serde_json::from_slice(&std::fs::read(dir.join("build.json")).ok()?).ok()?;
    let wasm = dir.join("python.wasm");
    if info.recipe_sha256 != recipe_sha || sha256_file(&wasm).ok()? != info.wasm_sha256 {
        return None;
    }
    Some(BuiltImage {
        wasm,
        wasm_sha256: info.wasm_sha256,
        dir: dir.to_path_buf(),
    })
}

/// The built image of `manifest` in `image_dir`, building it with `python`
/// (default `python3`) if it is missing or stale, but never when `offline`.
pub async fn ensure_built(
    manifest: &ImageManifest,
    image_dir: &Path,
    offline: bool,
    python: Option<&str>,
) -> anyhow::Result<BuiltImage> {
    let recipe = manifest.build.as_deref().context("the image has no build recipe")?;
    let recipe_sha = digest(recipe)?;
    let dir = image_dir.join(&manifest.name);
    let check = {
        let (dir, sha) = (dir.clone(), recipe_sha.clone());
        move || existing(&dir, &sha)
    };
    if let Some(built) = tokio::task::spawn_blocking(check.clone()).await? {
        return Ok(built);
    }
    if offline {
        bail!(
            "image {} is not built in {} and offline mode is on; run `stacyvm images pull` where the package registry is reachable",
            manifest.name,
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // One build at a time per image, even across servers sharing the directory.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(image_dir.join(format!(".{}.build.lock", manifest.name)))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|_| lock)).await??;
    if let Some(built) = tokio::task::spawn_blocking(check.clone()).await? {
        return Ok(built);
    }

    let recipe_dir = dir.join(".recipe");
    let _ = std::fs::remove_dir_all(&recipe_dir);
    for (rel, data) in files(recipe)? {
        let path = recipe_dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let python = python.filter(|p| !p.is_empty()).unwrap_or("python3");
    tracing::info!(image = %manifest.name, "building the image with {python} (once per recipe; about 15 s)");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(python)
        .arg(recipe_dir.join("build.py"))
        .arg("--out")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {python} to build image {}", manifest.name))?;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut tail = std::collections::VecDeque::new();
    while let Some(line) = lines.next_line().await? {
        tracing::debug!(image = %manifest.name, "{line}");
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().await?;
    drop(lock);
    if !status.success() {
        bail!(
            "building image {} failed ({status}):\n{}",
            manifest.name,
            Vec::from(tail).join("\n")
        );
    }
    match tokio::task::spawn_blocking(check).await? {
        Some(built) => {
            tracing::info!(image = %manifest.name, elapsed = ?started.elapsed(), "built");
            Ok(built)
        }
        None => bail!(
            "building image {} produced no usable result in {}",
            manifest.name,
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_digest_matches_the_one_build_py_records() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/python-3.14/build.py");
        let out = std::process::Command::new("python3")
            .arg(&script)
            .args(["--out", "unused", "--print-recipe"])
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            digest("python-3.14").unwrap()
        );
    }

    #[test]
    fn an_unknown_recipe_is_an_error_naming_it() {
        assert_eq!(
            digest("cobol-1").unwrap_err().to_string(),
            "no recipe images/cobol-1/ is built into this binary"
        );
    }
}
