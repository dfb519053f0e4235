//! Images built on this machine from a recipe under `images/<name>/`, which
//! is embedded in the binary. A recipe is one of two kinds:
//! - a Python recipe has a `build.py`, which runs with the host's Python and
//!   writes the image and its `build.json`;
//! - a Cargo recipe has a `Cargo.toml` and `Cargo.lock`: a Rust program
//!   built for `wasm32-wasip1` with the host's cargo, every crate pinned.
//!
//! The result is used only if its `build.json` names this exact recipe and
//! the program's bytes match the recorded hash. A built image is kept and
//! reused until the recipe changes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::ImageManifest;
use super::fetch::{sha256_file, write_atomically};

type RecipeFiles = &'static [(&'static str, &'static [u8])];
const RECIPES: &[(&str, RecipeFiles)] = include!(concat!(env!("OUT_DIR"), "/recipe_files.rs"));

/// The target Cargo recipes are built for.
const WASM_TARGET: &str = "wasm32-wasip1";

/// What a build records about the image it built.
#[derive(Debug, Serialize, Deserialize)]
struct BuildInfo {
    recipe_sha256: String,
    wasm_sha256: String,
    /// The program's file name in the image directory.
    #[serde(default = "default_wasm_name")]
    wasm: String,
}

fn default_wasm_name() -> String {
    "python.wasm".into()
}

/// A built image: the program and the directory holding its mounts.
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

/// One file of a recipe, as built into the binary.
pub fn file(recipe: &str, rel: &str) -> Option<&'static [u8]> {
    files(recipe)
        .ok()?
        .iter()
        .find(|(r, _)| *r == rel)
        .map(|(_, data)| *data)
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

/// Whether the recipe is a Cargo project rather than a `build.py`.
fn is_cargo(recipe: &str) -> anyhow::Result<bool> {
    Ok(files(recipe)?.iter().any(|(rel, _)| *rel == "Cargo.toml"))
}

/// The image built from the current recipe, if `dir` holds it intact.
fn existing(dir: &Path, recipe_sha: &str) -> Option<BuiltImage> {
    let info: BuildInfo = serde_json::from_slice(&std::fs::read(dir.join("build.json")).ok()?).ok()?;
    if info.wasm.contains('/') {
        return None;
    }
    let wasm = dir.join(&info.wasm);
    if info.recipe_sha256 != recipe_sha || sha256_file(&wasm).ok()? != info.wasm_sha256 {
        return None;
    }
    Some(BuiltImage {
        wasm,
        wasm_sha256: info.wasm_sha256,
        dir: dir.to_path_buf(),
    })
}

/// The built image of `manifest` in `image_dir` if it is there, intact,
/// and built from the recipe in this binary (what `stacyvm doctor` checks).
pub fn check_built(manifest: &ImageManifest, image_dir: &Path) -> anyhow::Result<BuiltImage> {
    let recipe = manifest.build.as_deref().context("the image has no build recipe")?;
    let dir = image_dir.join(&manifest.name);
    existing(&dir, &digest(recipe)?).with_context(|| {
        format!(
            "{} holds no build of the current recipe whose hash matches its build.json",
            dir.display()
        )
    })
}

/// Whether the recipe of `manifest` is a Cargo project (built with cargo
/// for wasm32-wasip1) rather than a Python `build.py`.
pub fn is_cargo_recipe(manifest: &ImageManifest) -> bool {
    manifest.build.as_deref().is_some_and(|r| is_cargo(r).unwrap_or(false))
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
    let started = Instant::now();
    let result = if is_cargo(recipe)? {
        cargo_build(&manifest.name, &recipe_dir, &dir, &recipe_sha).await
    } else {
        python_build(&manifest.name, &recipe_dir, &dir, python).await
    };
    drop(lock);
    result?;
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

/// Runs a build command, logging its output at debug level; a failure
/// carries the last lines of its output.
async fn run_build(image: &str, mut command: tokio::process::Command) -> anyhow::Result<()> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot run {} to build image {image}",
                command.as_std().get_program().to_string_lossy()
            )
        })?;
    let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
    let mut tail = std::collections::VecDeque::new();
    while let Some(line) = lines.next_line().await? {
        tracing::debug!(image, "{line}");
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().await?;
    if !status.success() {
        bail!(
            "building image {image} failed ({status}):\n{}",
            Vec::from(tail).join("\n")
        );
    }
    Ok(())
}

/// A Python recipe: `build.py --out DIR` writes the image and `build.json`.
async fn python_build(image: &str, recipe_dir: &Path, dir: &Path, python: Option<&str>) -> anyhow::Result<()> {
    let python = python.filter(|p| !p.is_empty()).unwrap_or("python3");
    tracing::info!(image, "building the image with {python} (once per recipe; about 15 s)");
    let mut command = tokio::process::Command::new(python);
    command.arg(recipe_dir.join("build.py")).arg("--out").arg(dir);
    run_build(image, command).await
}

/// A Cargo recipe: its binary, built for wasm32-wasip1 from the locked
/// crates, becomes `<bin>.wasm`, and `build.json` records it.
async fn cargo_build(image: &str, recipe_dir: &Path, dir: &Path, recipe_sha: &str) -> anyhow::Result<()> {
    ensure_wasm_target(image).await?;
    tracing::info!(image, "building the image with cargo (once per recipe; a few minutes)");
    // The build directory is kept, so a changed recipe rebuilds quickly.
    let target_dir = dir.join(".target");
    let mut command = tokio::process::Command::new("cargo");
    command
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            WASM_TARGET,
            "--manifest-path",
        ])
        .arg(recipe_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // Settings meant for the build of stacyvm itself must not leak into
    // this one.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_TARGET_")
            || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_ENCODED_")
            || ["RUSTFLAGS", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER"].contains(&key.as_ref())
        {
            command.env_remove(key.as_ref());
        }
    }
    run_build(image, command).await?;
    let release = target_dir.join(WASM_TARGET).join("release");
    let built = std::fs::read_dir(&release)
        .with_context(|| format!("cannot read {}", release.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "wasm"))
        .with_context(|| format!("the build of image {image} left no .wasm in {}", release.display()))?;
    let name = built.file_name().expect("a file").to_string_lossy().into_owned();
    let bytes = std::fs::read(&built)?;
    write_atomically(&dir.join(&name), &bytes)?;
    let info = BuildInfo {
        recipe_sha256: recipe_sha.to_string(),
        wasm_sha256: hex::encode(Sha256::digest(&bytes)),
        wasm: name,
    };
    write_atomically(&dir.join("build.json"), &serde_json::to_vec_pretty(&info)?)?;
    Ok(())
}

/// Installs the wasm32-wasip1 standard library with rustup when the
/// toolchain lacks it.
async fn ensure_wasm_target(image: &str) -> anyhow::Result<()> {
    let sysroot = tokio::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .await
        .with_context(|| format!("building image {image} needs a Rust toolchain (rustc and cargo)"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).is_dir() {
        return Ok(());
    }
    tracing::info!(image, "installing the {WASM_TARGET} target with rustup");
    let mut command = tokio::process::Command::new("rustup");
    command.args(["target", "add", WASM_TARGET]);
    run_build(image, command).await.with_context(|| {
        format!("building image {image} needs the {WASM_TARGET} target: run `rustup target add {WASM_TARGET}`")
    })
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
