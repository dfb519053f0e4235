//! Pure-Python packages on demand: `pip install`, `pip uninstall`, `pip list`
//! and `pip freeze` in a wasm sandbox's shell, and the `packages` field of a
//! create.
//!
//! The host only resolves, downloads and unpacks; no code of a package ever
//! runs on the host:
//! - The real pip, in a virtualenv the server owns (in the image directory,
//!   made once), runs `pip download --only-binary=:all: --platform any
//!   --implementation py --abi none --python-version X.Y`: wheels only (so no
//!   `setup.py` runs), pure-Python wheels only. Its arguments are an argv,
//!   never a shell line, after the requirements were validated here; its
//!   environment is emptied but for what it needs; its downloads are watched
//!   and it is killed past [`MAX_DOWNLOAD_BYTES`], at the exec's deadline, or
//!   when the client leaves. At most [`MAX_PIP_PROCESSES`] run at once.
//! - Wheels are cached per server by their SHA-256 (`<data_dir>/packages`),
//!   and a resolution (the requirements, the Python version and the index) is
//!   remembered for [`RESOLUTION_TTL`]: within it, the same install runs no
//!   pip and touches no network.
//! - A wheel is unpacked through cap-std into the sandbox's site-packages,
//!   `/workspace/.local/lib/pythonX.Y/site-packages` (Python's user site for
//!   `HOME=/workspace`, where the interpreter of that version looks), and
//!   every byte and entry is charged to the sandbox's disk ledger before it
//!   is written. What a wheel declares is not trusted: names must stay inside
//!   site-packages, and sizes are counted as the bytes come.
//! - All or nothing: every wheel of an install is unpacked into a staging
//!   directory first, and only moved into place when all of them fit; a
//!   failure removes the staging directory and gives its charge back.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cap_std::fs::{Dir, OpenOptions};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::quota::{DIR_BYTES, DiskLedger};

/// Most requirements one install takes (command line or requirements file).
pub const MAX_REQUIREMENTS: usize = 64;
/// Longest requirement string: a name, extras and version specifiers.
pub const MAX_REQUIREMENT_BYTES: usize = 200;
/// Largest requirements file `pip install -r` reads from a sandbox.
pub const MAX_REQUIREMENTS_FILE: u64 = 64 << 10;
/// Most bytes one resolution may download, all wheels together; pip is
/// killed past it. Pure-Python wheels are small (the largest common ones are
/// about 20 MB).
pub const MAX_DOWNLOAD_BYTES: u64 = 256 << 20;
/// Largest single wheel unpacked.
pub const MAX_WHEEL_BYTES: u64 = 128 << 20;
/// Most bytes an install unpacks, whatever the quota: bounds the host's work
/// for a wheel whose members inflate far beyond their compressed size.
pub const MAX_UNPACKED_BYTES: u64 = 1 << 30;
/// Most entries an install unpacks.
pub const MAX_ENTRIES: usize = 50_000;
/// Longest member name, and deepest member path, of a wheel.
const MAX_NAME_BYTES: usize = 1024;
const MAX_DEPTH: usize = 64;
/// pip processes running at once on this server; more wait their turn.
pub const MAX_PIP_PROCESSES: usize = 2;
/// The longest one pip run may take, within the exec's own deadline.
pub const PIP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a resolution is reused without asking the index again.
pub const RESOLUTION_TTL: Duration = Duration::from_secs(600);
/// Resolutions remembered at most (the oldest go first).
const MAX_RESOLUTIONS: usize = 1024;
/// What is kept of pip's output to explain a failure.
const PIP_OUTPUT_TAIL: usize = 64 << 10;
/// Largest part of an installed distribution's METADATA read: its
/// headers come first and are short.
const MAX_METADATA_BYTES: u64 = 64 << 10;
/// Largest RECORD read: one line per installed file.
const MAX_RECORD_BYTES: u64 = 8 << 20;
/// How often the pip watchdog looks at the downloads and the clock.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Where a Python version's packages live inside a sandbox (relative to its
/// root): the user site of `HOME=/workspace`.
pub fn site_packages(python_version: &str) -> String {
    format!("workspace/.local/lib/python{python_version}/site-packages")
}

/// Why an install failed; each has a message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// A requirement is not one stacyvm accepts.
    #[error("{0}")]
    Invalid(String),
    /// No such package, or no version that fits.
    #[error("{0}")]
    NotFound(String),
    /// The package exists but has no pure-Python wheel.
    #[error("{0}")]
    NotPure(String),
    /// The index cannot be reached, or the server is offline.
    #[error("{0}")]
    Unavailable(String),
    /// Over the disk quota, or over one of this module's bounds.
    #[error("{0}")]
    TooLarge(String),
    /// The exec's deadline passed.
    #[error("{0}")]
    TimedOut(String),
    /// The client left.
    #[error("the client disconnected")]
    Cancelled,
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// A requirement as stacyvm accepts it: `NAME`, `NAME[extra,...]`, and
/// version specifiers (`NAME==1.2`, `NAME>=1,<2`). No URLs, no paths, no
/// markers, no options: the string goes to pip as one argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The normalized project name (PEP 503).
    pub name: String,
    /// The requirement as passed to pip, without whitespace.
    pub text: String,
}

impl Requirement {
    pub fn parse(raw: &str) -> Result<Requirement, PackageError> {
        let invalid = || {
            PackageError::Invalid(format!(
                "invalid requirement: {:?} (stacyvm accepts NAME, NAME[extras] and version specifiers such as NAME==1.2 or NAME>=1,<2)",
                truncate(raw, 80)
            ))
        };
        if raw.len() > MAX_REQUIREMENT_BYTES {
            return Err(PackageError::Invalid(format!(
                "a requirement is longer than {MAX_REQUIREMENT_BYTES} bytes: {:?}",
                truncate(raw, 80)
            )));
        }
        // Spaces may stand around operators, never inside a name, an
        // extra or a version ("pkg[a b]" is not "pkg[ab]").
        let word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '+' | '!');
        let chars: Vec<char> = raw.trim().chars().collect();
        for (i, c) in chars.iter().enumerate() {
            if (*c == ' ' || *c == '\t') && i > 0 && word(chars[i - 1]) {
                let next = chars[i..].iter().find(|c| **c != ' ' && **c != '\t');
                if next.is_some_and(|n| word(*n)) {
                    return Err(invalid());
                }
            }
        }
        let text: String = raw.chars().filter(|c| *c != ' ' && *c != '\t').collect();
        let name_end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .unwrap_or(text.len());
        let name = &text[..name_end];
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid_name {
            return Err(invalid());
        }
        let mut rest = &text[name_end..];
        if let Some(inner) = rest.strip_prefix('[') {
            let Some(close) = inner.find(']') else {
                return Err(invalid());
            };
            let extras = &inner[..close];
            let ok = extras.split(',').all(|e| {
                !e.is_empty()
                    && e.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            });
            if !ok {
                return Err(invalid());
            }
            rest = &inner[close + 1..];
        }
        if !rest.is_empty() {
            for spec in rest.split(',') {
                let op_len = ["===", "==", "!=", "<=", ">=", "~=", "<", ">"]
                    .iter()
                    .find(|op| spec.starts_with(**op))
                    .map(|op| op.len())
                    .ok_or_else(invalid)?;
                let version = &spec[op_len..];
                let ok = !version.is_empty()
                    && version
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '_' | '-'));
                if !ok {
                    return Err(invalid());
                }
            }
        }
        Ok(Requirement {
            name: normalize(name),
            text,
        })
    }
}

/// PEP 503: lowercase, runs of `-`, `_` and `.` become one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A cached wheel: its content hash and its file name (which names the
/// distribution, its version and its tags).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wheel {
    sha256: String,
    file_name: String,
}

impl Wheel {
    /// `(distribution, version)` from `name-version(-build)?-py-abi-plat.whl`.
    fn dist(&self) -> Option<(String, String)> {
        let stem = self.file_name.strip_suffix(".whl")?;
        let mut parts = stem.split('-');
        let name = parts.next()?;
        let version = parts.next()?;
        Some((name.to_string(), version.to_string()))
    }

    /// Pure Python: no ABI, any platform.
    fn is_pure(&self) -> bool {
        self.file_name.ends_with("-none-any.whl")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ResolutionKey {
    requirements: Vec<String>,
    no_deps: bool,
    python_version: String,
    index: String,
}

/// The sandbox an operation works on, and the limits of the exec or create
/// that asked for it.
pub struct Target<'a> {
    /// The sandbox's root directory.
    pub root: &'a Dir,
    /// Its disk ledger, held by the caller.
    pub ledger: &'a DiskLedger,
    /// The Python version (`3.14`) whose site-packages is meant.
    pub python_version: &'a str,
    pub deadline: Instant,
    pub cancel: &'a CancellationToken,
}

impl Target<'_> {
    fn check(&self) -> Result<(), PackageError> {
        if self.cancel.is_cancelled() {
            return Err(PackageError::Cancelled);
        }
        if Instant::now() >= self.deadline {
            return Err(PackageError::TimedOut(
                "the install ran past the exec's timeout and was stopped".into(),
            ));
        }
        Ok(())
    }
}

/// An install's options.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    pub no_deps: bool,
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// `name-version` of each distribution installed, in order.
    pub dists: Vec<String>,
    /// Whether the wheels came from the remembered resolution.
    pub cached: bool,
}

/// The server's package machinery: its virtualenv with pip, its wheel
/// cache and its remembered resolutions.
pub struct PackageManager {
    /// `<data_dir>/packages`: wheels by hash, and pip's scratch directories.
    dir: PathBuf,
    /// The virtualenv with pip, shared by servers with one image directory.
    venv: PathBuf,
    /// The host Python that makes the virtualenv.
    python: String,
    index: String,
    offline: bool,
    resolutions: Mutex<HashMap<ResolutionKey, (Instant, Vec<Wheel>)>>,
    /// Installs into one site-packages run one at a time.
    sites: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    pip_slots: Arc<tokio::sync::Semaphore>,
}

impl PackageManager {
    pub fn new(
        data_dir: &Path,
        image_dir: &Path,
        python: Option<&str>,
        index: String,
        offline: bool,
    ) -> PackageManager {
        PackageManager {
            dir: data_dir.join("packages"),
            venv: image_dir.join("pip-venv"),
            python: python.filter(|p| !p.is_empty()).unwrap_or("python3").to_string(),
            index,
            offline,
            resolutions: Mutex::default(),
            sites: Mutex::default(),
            pip_slots: Arc::new(tokio::sync::Semaphore::new(MAX_PIP_PROCESSES)),
        }
    }

    /// Makes the virtualenv now, if it is missing, so that the first install
    /// does not wait for it. Failure is logged; installs then say why.
    pub async fn prepare(&self) {
        if self.offline {
            return;
        }
        if let Err(e) = self.ensure_venv().await {
            tracing::warn!("pip install will not work on this server: {e}");
        }
    }

    fn pip_python(&self) -> PathBuf {
        self.venv.join("bin").join("python")
    }

    /// The virtualenv with pip, made with the host's Python if missing.
    async fn ensure_venv(&self) -> Result<PathBuf, PackageError> {
        let python = self.pip_python();
        let marker = self.venv.join(".stacyvm-ready");
        if marker.exists() {
            return Ok(python);
        }
        let parent = self.venv.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| PackageError::Failed(format!("cannot create {}: {e}", parent.display())))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(parent.join(".pip-venv.lock"))
            .map_err(|e| PackageError::Failed(format!("cannot lock the pip virtualenv: {e}")))?;
        let lock = tokio::task::spawn_blocking(move || lock.lock().map(|_| lock))
            .await
            .map_err(|e| PackageError::Failed(e.to_string()))?
            .map_err(|e| PackageError::Failed(format!("cannot lock the pip virtualenv: {e}")))?;
        if marker.exists() {
            return Ok(python);
        }
        tracing::info!(venv = %self.venv.display(), "making the virtualenv that runs pip (once)");
        let output = tokio::process::Command::new(&self.python)
            .args(["-m", "venv", "--clear"])
            .arg(&self.venv)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                PackageError::Unavailable(format!("pip cannot run here: cannot start {}: {e}", self.python))
            })?;
        if !output.status.success() || !python.exists() {
            return Err(PackageError::Unavailable(format!(
                "pip cannot run here: `{} -m venv` failed: {}",
                self.python,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        std::fs::write(&marker, b"").ok();
        drop(lock);
        Ok(python)
    }

    /// The lock of one site-packages directory.
    fn site_lock(&self, site: PathBuf) -> Arc<Mutex<()>> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        if sites.len() > 4096 {
            sites.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        sites.entry(site).or_default().clone()
    }

    /// Resolves, downloads (or finds in the cache) and installs
    /// `requirements` into the target's site-packages. Blocks: runs on a
    /// guest thread or a blocking task, inside the tokio runtime.
    pub fn install(
        &self,
        target: &Target<'_>,
        sandbox_dir: &Path,
        requirements: &[Requirement],
        options: &InstallOptions,
    ) -> Result<Installed, PackageError> {
        if requirements.is_empty() {
            return Ok(Installed {
                dists: vec![],
                cached: true,
            });
        }
        if requirements.len() > MAX_REQUIREMENTS {
            return Err(PackageError::Invalid(format!(
                "at most {MAX_REQUIREMENTS} requirements may be installed at once"
            )));
        }
        let (wheels, cached) = self.resolve(target, requirements, options)?;
        target.check()?;
        let site_rel = site_packages(target.python_version);
        let lock = self.site_lock(sandbox_dir.join(&site_rel));
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let dists = self.unpack_all(target, &site_rel, &wheels)?;
        Ok(Installed { dists, cached })
    }

    /// The wheels `requirements` resolve to: remembered, or from pip.
    fn resolve(
        &self,
        target: &Target<'_>,
        requirements: &[Requirement],
        options: &InstallOptions,
    ) -> Result<(Vec<Wheel>, bool), PackageError> {
        let mut texts: Vec<String> = requirements.iter().map(|r| r.text.clone()).collect();
        texts.sort();
        texts.dedup();
        let key = ResolutionKey {
            requirements: texts.clone(),
            no_deps: options.no_deps,
            python_version: target.python_version.to_string(),
            index: self.index.clone(),
        };
        let remembered = {
            let resolutions = self.resolutions.lock().unwrap_or_else(|e| e.into_inner());
            resolutions
                .get(&key)
                .filter(|(at, _)| at.elapsed() < RESOLUTION_TTL)
                .map(|(_, wheels)| wheels.clone())
        };
        if let Some(wheels) = remembered
            && wheels.iter().all(|w| self.wheel_path(w).exists())
        {
            return Ok((wheels, true));
        }
        if self.offline {
            return Err(PackageError::Unavailable(
                "this server is offline (wasm.offline), so it cannot download packages".into(),
            ));
        }
        let wheels = wasmtime_wasi::runtime::in_tokio(self.download(target, &texts, options))?;
        let mut resolutions = self.resolutions.lock().unwrap_or_else(|e| e.into_inner());
        if resolutions.len() >= MAX_RESOLUTIONS {
            resolutions.retain(|_, (at, _)| at.elapsed() < RESOLUTION_TTL);
            if resolutions.len() >= MAX_RESOLUTIONS {
                resolutions.clear();
            }
        }
        resolutions.insert(key, (Instant::now(), wheels.clone()));
        Ok((wheels, false))
    }

    fn wheel_path(&self, wheel: &Wheel) -> PathBuf {
        self.dir.join("wheels").join(format!("{}.whl", wheel.sha256))
    }

    /// Runs pip to resolve and download, watching it; moves what it
    /// downloaded into the cache by hash.
    async fn download(
        &self,
        target: &Target<'_>,
        requirements: &[String],
        options: &InstallOptions,
    ) -> Result<Vec<Wheel>, PackageError> {
        let python = self.ensure_venv().await?;
        let wait = target.deadline.saturating_duration_since(Instant::now());
        let permit = tokio::select! {
            permit = self.pip_slots.clone().acquire_owned() => permit.map_err(|e| PackageError::Failed(e.to_string()))?,
            _ = tokio::time::sleep(wait) => return Err(PackageError::TimedOut("the install waited past the exec's timeout for pip".into())),
            _ = target.cancel.cancelled() => return Err(PackageError::Cancelled),
        };
        let scratch = self.dir.join("tmp").join(unique_name("pip"));
        let dest = scratch.join("wheels");
        let tmp = scratch.join("tmp");
        let home = scratch.join("home");
        for d in [&dest, &tmp, &home] {
            std::fs::create_dir_all(d)
                .map_err(|e| PackageError::Failed(format!("cannot create {}: {e}", d.display())))?;
        }
        let result = self
            .run_pip(&python, target, requirements, options, &scratch)
            .await
            .and_then(|()| self.collect(&dest));
        drop(permit);
        std::fs::remove_dir_all(&scratch).ok();
        result
    }

    async fn run_pip(
        &self,
        python: &Path,
        target: &Target<'_>,
        requirements: &[String],
        options: &InstallOptions,
        scratch: &Path,
    ) -> Result<(), PackageError> {
        let mut command = tokio::process::Command::new(python);
        command
            .args(["-m", "pip", "download", "--only-binary=:all:", "--platform", "any"])
            .args(["--implementation", "py", "--abi", "none", "--python-version"])
            .arg(target.python_version)
            .args(["--no-cache-dir", "--disable-pip-version-check", "--no-input"])
            .args([
                "--progress-bar",
                "off",
                "--retries",
                "1",
                "--timeout",
                "15",
                "--index-url",
            ])
            .arg(&self.index)
            .arg("--dest")
            .arg(scratch.join("wheels"));
        if options.no_deps {
            command.arg("--no-deps");
        }
        command.arg("--").args(requirements);
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", scratch.join("home"))
            .env("TMPDIR", scratch.join("tmp"))
            .env("LANG", "C.UTF-8")
            .env("PIP_CONFIG_FILE", "/dev/null")
            .env("PYTHONNOUSERSITE", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        // How this host reaches the network, and no more.
        for key in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "no_proxy",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "REQUESTS_CA_BUNDLE",
        ] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| PackageError::Unavailable(format!("pip cannot run here: {e}")))?;
        let stdout = tail_reader(child.stdout.take().expect("piped"));
        let stderr = tail_reader(child.stderr.take().expect("piped"));
        let deadline = target.deadline.min(Instant::now() + PIP_TIMEOUT);
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(|e| PackageError::Failed(format!("pip failed: {e}")))?,
                _ = target.cancel.cancelled() => {
                    child.kill().await.ok();
                    return Err(PackageError::Cancelled);
                }
                _ = tokio::time::sleep(WATCH_INTERVAL) => {
                    if Instant::now() >= deadline {
                        child.kill().await.ok();
                        return Err(PackageError::TimedOut(
                            "resolving and downloading the packages ran past the exec's timeout and was stopped".into(),
                        ));
                    }
                    let used = tree_size(scratch, MAX_DOWNLOAD_BYTES.saturating_mul(2));
                    if used > MAX_DOWNLOAD_BYTES {
                        child.kill().await.ok();
                        return Err(PackageError::TooLarge(format!(
                            "the packages to download are larger than {} MiB, the most one install may fetch",
                            MAX_DOWNLOAD_BYTES >> 20
                        )));
                    }
                }
            }
        };
        let stdout = stdout.await.unwrap_or_default();
        let stderr = stderr.await.unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        Err(self
            .explain(
                &String::from_utf8_lossy(&stdout),
                &String::from_utf8_lossy(&stderr),
                target.python_version,
            )
            .await)
    }

    /// Turns pip's failure into one clear sentence, asking the index what
    /// it has when pip only says it found nothing.
    async fn explain(&self, stdout: &str, stderr: &str, python_version: &str) -> PackageError {
        let text = format!("{stdout}\n{stderr}");
        let unreachable = [
            "Failed to establish a new connection",
            "NewConnectionError",
            "Max retries exceeded",
            "ConnectTimeout",
            "Temporary failure in name resolution",
            "Name or service not known",
            "Connection refused",
            "Could not fetch URL",
        ];
        if let Some(line) = text.lines().find(|l| l.contains("No matching distribution found for")) {
            let wanted = line
                .rsplit("No matching distribution found for")
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let name_end = wanted
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
                .unwrap_or(wanted.len());
            let name = wanted[..name_end].to_string();
            return match self.index_files(&name).await {
                Err(e) => e,
                Ok(None) => PackageError::NotFound(format!("no package named {name} on the package index")),
                Ok(Some(files)) if !files.iter().any(|f| f.ends_with("-none-any.whl")) => {
                    PackageError::NotPure(format!(
                        "{name} has no pure-Python wheel (only wheels built for particular platforms, or sources), so it cannot be installed in a wasm sandbox"
                    ))
                }
                Ok(Some(_)) => PackageError::NotFound(format!(
                    "no version of {wanted} has a pure-Python wheel for Python {python_version}"
                )),
            };
        }
        if unreachable.iter().any(|m| text.contains(m)) {
            return PackageError::Unavailable(format!("the package index {} cannot be reached", self.index));
        }
        let last = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("pip exited with an error");
        PackageError::Failed(format!("pip failed: {}", truncate(last, 300)))
    }

    /// The file names the index lists for a project, None when it has no
    /// such project.
    async fn index_files(&self, name: &str) -> Result<Option<Vec<String>>, PackageError> {
        let unreachable = || PackageError::Unavailable(format!("the package index {} cannot be reached", self.index));
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(20))
            .user_agent(concat!("stacyvm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| unreachable())?;
        let url = format!("{}/{}/", self.index.trim_end_matches('/'), normalize(name));
        let response = client
            .get(&url)
            .header("Accept", "application/vnd.pypi.simple.v1+json")
            .send()
            .await
            .map_err(|_| unreachable())?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(unreachable());
        }
        // A project page is small; a huge one is cut rather than held.
        let body = response.bytes().await.map_err(|_| unreachable())?;
        let body = &body[..body.len().min(32 << 20)];
        let files = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v["files"].as_array().map(|files| {
                    files
                        .iter()
                        .filter_map(|f| f["filename"].as_str().map(String::from))
                        .collect()
                })
            })
            .unwrap_or_default();
        Ok(Some(files))
    }

    /// Moves what pip downloaded into the cache, by hash.
    fn collect(&self, dest: &Path) -> Result<Vec<Wheel>, PackageError> {
        let wheels_dir = self.dir.join("wheels");
        std::fs::create_dir_all(&wheels_dir)
            .map_err(|e| PackageError::Failed(format!("cannot create the wheel cache: {e}")))?;
        let mut wheels = vec![];
        let entries =
            std::fs::read_dir(dest).map_err(|e| PackageError::Failed(format!("pip left no downloads: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| PackageError::Failed(e.to_string()))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata().map_err(|e| PackageError::Failed(e.to_string()))?;
            if !meta.is_file() || !file_name.ends_with(".whl") {
                continue;
            }
            if meta.len() > MAX_WHEEL_BYTES {
                return Err(PackageError::TooLarge(format!(
                    "{file_name} is larger than {} MiB, the largest wheel stacyvm installs",
                    MAX_WHEEL_BYTES >> 20
                )));
            }
            let mut file = std::fs::File::open(entry.path()).map_err(|e| PackageError::Failed(e.to_string()))?;
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher).map_err(|e| PackageError::Failed(e.to_string()))?;
            let wheel = Wheel {
                sha256: hex::encode(hasher.finalize()),
                file_name,
            };
            if !wheel.is_pure() || wheel.dist().is_none() {
                return Err(PackageError::NotPure(format!(
                    "{} is not a pure-Python wheel, so it cannot be installed in a wasm sandbox",
                    wheel.file_name
                )));
            }
            let cached = self.wheel_path(&wheel);
            if !cached.exists() {
                std::fs::rename(entry.path(), &cached)
                    .map_err(|e| PackageError::Failed(format!("cannot cache {}: {e}", wheel.file_name)))?;
            }
            wheels.push(wheel);
        }
        if wheels.is_empty() {
            return Err(PackageError::Failed("pip downloaded nothing".into()));
        }
        wheels.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        Ok(wheels)
    }

    /// Unpacks every wheel into a staging directory, then moves them into
    /// place; all or nothing.
    fn unpack_all(&self, target: &Target<'_>, site_rel: &str, wheels: &[Wheel]) -> Result<Vec<String>, PackageError> {
        let mut charges = Charges::new(target.ledger);
        let result = (|| {
            ensure_dirs(target.root, site_rel, &mut charges)?;
            let staging = format!("{site_rel}/.stacyvm-pip-{}", unique_name("staging"));
            ensure_dirs(target.root, &staging, &mut charges)?;
            let outcome = (|| {
                let mut budget = Budget::default();
                let mut dists = vec![];
                for wheel in wheels {
                    target.check()?;
                    dists.push(unpack(
                        target,
                        &self.wheel_path(wheel),
                        wheel,
                        &staging,
                        &mut charges,
                        &mut budget,
                    )?);
                }
                Ok(dists)
            })();
            let dists = match outcome {
                Ok(dists) => dists,
                Err(e) => {
                    super::trash::remove_tree_at(target.root, std::path::Path::new(&staging)).ok();
                    return Err(e);
                }
            };
            for (name, _) in &dists {
                remove_installed(target.root, site_rel, name).ok();
            }
            let moved = merge_into(target.root, &staging, site_rel);
            super::trash::remove_tree_at(target.root, std::path::Path::new(&staging)).ok();
            moved.map_err(|e| PackageError::Failed(format!("cannot move the packages into place: {e}")))?;
            Ok(dists
                .into_iter()
                .map(|(name, version)| format!("{name}-{version}"))
                .collect())
        })();
        if result.is_err() {
            charges.refund();
        }
        result
    }
}

/// What an install has charged to the ledger, to give back if it fails.
struct Charges<'a> {
    ledger: &'a DiskLedger,
    bytes: u64,
    entries: u64,
}

impl<'a> Charges<'a> {
    fn new(ledger: &'a DiskLedger) -> Self {
        Charges {
            ledger,
            bytes: 0,
            entries: 0,
        }
    }

    fn charge(&mut self, bytes: u64, entries: u64) -> Result<(), PackageError> {
        self.ledger
            .charge(bytes, entries)
            .map_err(|e| PackageError::TooLarge(format!("the packages do not fit: {e}")))?;
        self.bytes += bytes;
        self.entries += entries;
        Ok(())
    }

    fn refund(&mut self) {
        self.ledger.refund(self.bytes, self.entries);
        self.bytes = 0;
        self.entries = 0;
    }
}

/// What one install may still unpack.
#[derive(Default)]
struct Budget {
    bytes: u64,
    entries: usize,
}

/// Creates each missing directory of `rel`, charging it.
fn ensure_dirs(root: &Dir, rel: &str, charges: &mut Charges<'_>) -> Result<(), PackageError> {
    let mut path = PathBuf::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        match root.symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(meta) if meta.file_type().is_symlink() && root.metadata(&path).is_ok_and(|m| m.is_dir()) => continue,
            Ok(_) => {
                return Err(PackageError::Failed(format!(
                    "/{} is in the way of site-packages: it is not a directory",
                    path.display()
                )));
            }
            Err(_) => {
                charges.charge(DIR_BYTES, 1)?;
                root.create_dir(&path)
                    .map_err(|e| PackageError::Failed(format!("cannot create /{}: {e}", path.display())))?;
            }
        }
    }
    Ok(())
}

/// Where a wheel member goes, relative to site-packages, or None for what a
/// sandbox has no place for (scripts, headers, data outside the library).
/// Refuses a name that could leave site-packages.
fn member_destination(name: &str, data_dir: &str) -> Result<Option<String>, String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("a member name is longer than {MAX_NAME_BYTES} bytes"));
    }
    if name.starts_with('/') || name.contains('\\') || name.contains('\0') {
        return Err(format!(
            "member {:?} has an absolute or unsafe path",
            truncate(name, 80)
        ));
    }
    let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.contains(&"..") {
        return Err(format!("member {:?} leaves the package", truncate(name, 80)));
    }
    if parts.len() > MAX_DEPTH {
        return Err(format!(
            "member {:?} is nested deeper than {MAX_DEPTH} levels",
            truncate(name, 80)
        ));
    }
    if parts.is_empty() {
        return Ok(None);
    }
    if parts[0] == data_dir {
        return Ok(match parts.get(1) {
            Some(&"purelib") | Some(&"platlib") if parts.len() > 2 => Some(parts[2..].join("/")),
            _ => None,
        });
    }
    Ok(Some(parts.join("/")))
}

/// Unpacks one wheel into `staging`, charging every byte and entry, and
/// records what it installed in its `RECORD`. Returns its name and version.
fn unpack(
    target: &Target<'_>,
    path: &Path,
    wheel: &Wheel,
    staging: &str,
    charges: &mut Charges<'_>,
    budget: &mut Budget,
) -> Result<(String, String), PackageError> {
    let broken = |why: String| PackageError::Failed(format!("{} cannot be installed: {why}", wheel.file_name));
    let (name, version) = wheel
        .dist()
        .ok_or_else(|| broken("its file name is not a wheel's".into()))?;
    let file = std::fs::File::open(path).map_err(|e| broken(e.to_string()))?;
    let size = file.metadata().map_err(|e| broken(e.to_string()))?.len();
    if size > MAX_WHEEL_BYTES {
        return Err(PackageError::TooLarge(format!(
            "{} is larger than {} MiB",
            wheel.file_name,
            MAX_WHEEL_BYTES >> 20
        )));
    }
    let mut archive = zip::ZipArchive::new(file).map_err(|e| broken(format!("it is not a valid zip ({e})")))?;
    if budget.entries.saturating_add(archive.len()) > MAX_ENTRIES {
        return Err(PackageError::TooLarge(format!(
            "the packages hold more than {MAX_ENTRIES} files"
        )));
    }
    let data_dir = format!("{name}-{version}.data");
    let dist_info = format!("{name}-{version}.dist-info");
    let mut installed: Vec<String> = vec![];
    let mut made_dirs = std::collections::BTreeSet::new();
    let mut buf = vec![0u8; 64 << 10];
    for i in 0..archive.len() {
        target.check()?;
        let mut member = archive.by_index(i).map_err(|e| broken(e.to_string()))?;
        let raw_name = member.name().to_string();
        let Some(dest) = member_destination(&raw_name, &data_dir).map_err(broken)? else {
            continue;
        };
        if member.is_symlink() {
            return Err(broken(format!(
                "member {:?} is a symbolic link",
                truncate(&raw_name, 80)
            )));
        }
        budget.entries += 1;
        let full = format!("{staging}/{dest}");
        if member.is_dir() {
            if made_dirs.insert(full.clone()) {
                ensure_dirs(target.root, &full, charges)?;
            }
            continue;
        }
        if let Some((parent, _)) = full.rsplit_once('/')
            && made_dirs.insert(parent.to_string())
        {
            ensure_dirs(target.root, parent, charges)?;
        }
        if dest == format!("{dist_info}/RECORD") {
            continue;
        }
        charges.charge(0, 1)?;
        let mut out = target
            .root
            .open_with(&full, OpenOptions::new().write(true).create_new(true))
            .map_err(|e| broken(format!("cannot write {dest}: {e}")))?;
        let mut written = 0u64;
        loop {
            let n = member.read(&mut buf).map_err(|e| broken(e.to_string()))?;
            if n == 0 {
                break;
            }
            budget.bytes += n as u64;
            if budget.bytes > MAX_UNPACKED_BYTES {
                return Err(PackageError::TooLarge(format!(
                    "the packages unpack to more than {} MiB",
                    MAX_UNPACKED_BYTES >> 20
                )));
            }
            charges.charge(n as u64, 0)?;
            out.write_all(&buf[..n])
                .map_err(|e| broken(format!("cannot write {dest}: {e}")))?;
            written += n as u64;
        }
        // A file takes whole blocks on the host, and the ledger's next
        // measure counts them: charge the rest of its last one now.
        charges.charge(written.next_multiple_of(DIR_BYTES) - written, 0)?;
        installed.push(dest);
    }
    // pip's RECORD lists what went where; this one lists what was written
    // (uninstall reads it), and INSTALLER says who wrote it.
    let dist_info_dir = format!("{staging}/{dist_info}");
    ensure_dirs(target.root, &dist_info_dir, charges)?;
    installed.push(format!("{dist_info}/INSTALLER"));
    installed.push(format!("{dist_info}/RECORD"));
    let record: String = installed.iter().map(|p| format!("{},,\n", csv_field(p))).collect();
    for (file, contents) in [("INSTALLER", "stacyvm\n".to_string()), ("RECORD", record)] {
        charges.charge(contents.len() as u64, 1)?;
        target
            .root
            .write(format!("{dist_info_dir}/{file}"), contents.as_bytes())
            .map_err(|e| broken(format!("cannot write its {file}: {e}")))?;
    }
    Ok((name, version))
}

/// A RECORD path as a CSV field.
fn csv_field(path: &str) -> String {
    if path.contains([',', '"', '\n']) {
        format!("\"{}\"", path.replace('"', "\"\""))
    } else {
        path.to_string()
    }
}

/// Moves everything in `from` into `to`, merging directories that exist in
/// both (namespace packages); a file replaces a file.
fn merge_into(root: &Dir, from: &str, to: &str) -> std::io::Result<()> {
    // An explicit stack of (source directory, destination directory).
    let mut stack = vec![(from.to_string(), to.to_string())];
    while let Some((src, dst)) = stack.pop() {
        for entry in root.read_dir(&src)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let (s, d) = (format!("{src}/{name}"), format!("{dst}/{name}"));
            match root.symlink_metadata(&d) {
                Err(_) => root.rename(&s, root, &d)?,
                Ok(meta) if meta.is_dir() && entry.file_type()?.is_dir() => stack.push((s, d)),
                Ok(meta) => {
                    if meta.is_dir() {
                        // The guest may have built anything there.
                        super::trash::remove_tree_at(root, std::path::Path::new(&d))?;
                    } else {
                        root.remove_file(&d)?;
                    }
                    root.rename(&s, root, &d)?;
                }
            }
        }
    }
    Ok(())
}

/// An installed distribution: its name, version and dist-info directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dist {
    pub name: String,
    pub version: String,
    dist_info: String,
}

/// The distributions installed in a site-packages, by normalized name.
pub fn installed(root: &Dir, site_rel: &str) -> BTreeMap<String, Dist> {
    let mut dists = BTreeMap::new();
    let Ok(entries) = root.read_dir(site_rel) else {
        return dists;
    };
    for entry in entries.flatten().take(MAX_ENTRIES) {
        let dir = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = dir.strip_suffix(".dist-info") else {
            continue;
        };
        let metadata =
            read_bounded(root, &format!("{site_rel}/{dir}/METADATA"), MAX_METADATA_BYTES).unwrap_or_default();
        let header = |key: &str| {
            metadata
                .lines()
                .take_while(|l| !l.is_empty())
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        };
        let (fallback_name, fallback_version) = stem.split_once('-').unwrap_or((stem, ""));
        let name = header("Name:").unwrap_or_else(|| fallback_name.to_string());
        let version = header("Version:").unwrap_or_else(|| fallback_version.to_string());
        dists.insert(
            normalize(&name),
            Dist {
                name,
                version,
                dist_info: dir,
            },
        );
    }
    dists
}

fn read_bounded(root: &Dir, path: &str, limit: u64) -> Option<String> {
    let file = root.open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Removes an installed distribution: the files its RECORD lists (only
/// those inside site-packages), the directories they leave empty, and its
/// dist-info. False when it is not installed.
pub fn remove_installed(root: &Dir, site_rel: &str, name: &str) -> std::io::Result<bool> {
    let Some(dist) = installed(root, site_rel).remove(&normalize(name)) else {
        return Ok(false);
    };
    let record =
        read_bounded(root, &format!("{site_rel}/{}/RECORD", dist.dist_info), MAX_RECORD_BYTES).unwrap_or_default();
    let mut parents = std::collections::BTreeSet::new();
    for line in record.lines().take(MAX_ENTRIES) {
        let path = record_path(line);
        let Ok(Some(rel)) = member_destination(&path, "") else {
            continue;
        };
        let full = format!("{site_rel}/{rel}");
        if root.symlink_metadata(&full).is_ok_and(|m| !m.is_dir()) {
            root.remove_file(&full).ok();
        }
        let mut parent = rel.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            parents.insert(up.to_string());
            parent = up;
        }
    }
    // Deepest first, so that a directory's emptied children go before it.
    let mut parents: Vec<String> = parents.into_iter().collect();
    parents.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for dir in parents {
        root.remove_dir(format!("{site_rel}/{dir}")).ok();
    }
    // Its RECORD lists the dist-info's own files, so it may be gone now.
    let dist_info = format!("{site_rel}/{}", dist.dist_info);
    match super::trash::remove_tree_at(root, std::path::Path::new(&dist_info)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(true)
}

/// The path of a RECORD line (`path,hash,size`, CSV-quoted when needed).
fn record_path(line: &str) -> String {
    if let Some(rest) = line.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    out.push('"');
                    chars.next();
                } else {
                    break;
                }
            } else {
                out.push(c);
            }
        }
        return out;
    }
    line.split(',').next().unwrap_or("").to_string()
}

/// The size of a directory tree, counted up to `cap`.
fn tree_size(dir: &Path, cap: u64) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES || total > cap {
                return total;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

/// Reads a child's output to the end, keeping its last [`PIP_OUTPUT_TAIL`]
/// bytes.
fn tail_reader(mut stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * PIP_OUTPUT_TAIL {
                kept.drain(..kept.len() - PIP_OUTPUT_TAIL);
            }
        }
        kept
    })
}

fn unique_name(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    rand::fill(&mut bytes);
    format!("{prefix}-{}", hex::encode(bytes))
}

/// A `pip` command line of the shell, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipCommand {
    Install {
        requirements: Vec<String>,
        files: Vec<String>,
        options: PipInstallFlags,
    },
    Uninstall {
        names: Vec<String>,
    },
    List {
        freeze: bool,
    },
    Help,
    Version,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipInstallFlags {
    pub no_deps: bool,
}

/// What `pip` accepts in a sandbox.
pub const PIP_USAGE: &str = "\
Usage (stacyvm's pip installs pure-Python wheels from the server's package index):
  pip install [-r FILE] [--no-deps] [-U] [-q] NAME[==VERSION] ...
  pip uninstall [-y] NAME ...
  pip list
  pip freeze
";

/// Parses `pip ARGS` (args without `pip` itself).
pub fn parse_pip(args: &[String]) -> Result<PipCommand, String> {
    let mut words = args.iter().map(String::as_str).skip_while(|a| {
        matches!(
            *a,
            "-q" | "--quiet" | "-v" | "--verbose" | "--disable-pip-version-check" | "--no-input" | "--no-color"
        )
    });
    let Some(sub) = words.next() else {
        return Ok(PipCommand::Help);
    };
    let rest: Vec<&str> = words.collect();
    match sub {
        "-h" | "--help" | "help" => Ok(PipCommand::Help),
        "-V" | "--version" => Ok(PipCommand::Version),
        "install" => {
            let mut requirements = vec![];
            let mut files = vec![];
            let mut options = PipInstallFlags::default();
            let mut i = 0;
            while i < rest.len() {
                let arg = rest[i];
                match arg {
                    "-r" | "--requirement" => {
                        i += 1;
                        let file = rest.get(i).ok_or("option -r requires an argument")?;
                        files.push(file.to_string());
                    }
                    "--no-deps" => options.no_deps = true,
                    // Installs replace an installed version anyway, into the
                    // user site anyway; output is short anyway.
                    "-U"
                    | "--upgrade"
                    | "--user"
                    | "-q"
                    | "--quiet"
                    | "--no-cache-dir"
                    | "--disable-pip-version-check"
                    | "--no-input"
                    | "--force-reinstall" => {}
                    "--" => {
                        requirements.extend(rest[i + 1..].iter().map(|s| s.to_string()));
                        break;
                    }
                    _ if arg.starts_with("--requirement=") => {
                        files.push(arg["--requirement=".len()..].to_string());
                    }
                    _ if arg.starts_with("-r") && arg.len() > 2 => files.push(arg[2..].to_string()),
                    _ if arg.starts_with('-') => {
                        return Err(format!(
                            "no such option: {arg} (stacyvm's pip accepts -r, --no-deps, -U and -q)"
                        ));
                    }
                    _ => requirements.push(arg.to_string()),
                }
                i += 1;
            }
            if requirements.is_empty() && files.is_empty() {
                return Err("You must give at least one requirement to install (see \"pip help install\")".into());
            }
            Ok(PipCommand::Install {
                requirements,
                files,
                options,
            })
        }
        "uninstall" => {
            let mut names = vec![];
            for arg in rest {
                match arg {
                    "-y" | "--yes" | "-q" | "--quiet" => {}
                    _ if arg.starts_with('-') => return Err(format!("no such option: {arg}")),
                    _ => names.push(arg.to_string()),
                }
            }
            if names.is_empty() {
                return Err("You must give at least one requirement to uninstall (see \"pip help uninstall\")".into());
            }
            Ok(PipCommand::Uninstall { names })
        }
        "list" => match rest.as_slice() {
            [] => Ok(PipCommand::List { freeze: false }),
            ["--format=freeze"] | ["--format", "freeze"] => Ok(PipCommand::List { freeze: true }),
            [other, ..] => Err(format!("no such option: {other}")),
        },
        "freeze" => Ok(PipCommand::List { freeze: true }),
        other => Err(format!("unknown command \"{other}\"")),
    }
}

/// The requirements of a requirements file: one per line, `#` comments
/// and blank lines skipped; options are refused.
pub fn parse_requirements_file(text: &str) -> Result<Vec<String>, String> {
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        let line = match line.find(" #").or_else(|| line.starts_with('#').then_some(0)) {
            Some(at) => &line[..at],
            None => line,
        }
        .trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('-') {
            return Err(format!(
                "line {}: options in requirements files are not supported: {}",
                n + 1,
                truncate(line, 80)
            ));
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// What the shell's `pip` builtin needs: the server's package machinery,
/// and the Python version that `python3` runs in the sandbox (none: no
/// Python runs there).
#[derive(Clone, Default)]
pub struct PipContext {
    pub manager: Option<Arc<PackageManager>>,
    pub python_version: Option<String>,
}

/// The shell's `pip` builtin, `args` after `pip`: its exit status, stdout
/// and stderr. Stops at the exec's deadline or when it is cancelled.
pub fn pip_builtin(
    pip: &PipContext,
    root: &Dir,
    ledger: &DiskLedger,
    stop: &super::guest::StopCheck,
    sandbox_dir: &Path,
    cwd: &crate::sandbox::path::SandboxPath,
    args: &[String],
) -> (i32, String, String) {
    let Some(version) = &pip.python_version else {
        return (127, String::new(), "pip: no Python runs in this sandbox\n".into());
    };
    let target = Target {
        root,
        ledger,
        python_version: version,
        deadline: stop.deadline,
        cancel: &stop.cancel,
    };
    shell_pip(pip.manager.as_deref(), &target, sandbox_dir, cwd, args)
}

/// Runs a `pip` command of the shell against a sandbox; returns its exit
/// status, stdout and stderr, as pip would print them. Blocks (a guest
/// thread runs the shell).
pub fn shell_pip(
    manager: Option<&PackageManager>,
    target: &Target<'_>,
    sandbox_dir: &Path,
    cwd: &crate::sandbox::path::SandboxPath,
    args: &[String],
) -> (i32, String, String) {
    let command = match parse_pip(args) {
        Ok(command) => command,
        Err(why) => return (2, String::new(), format!("ERROR: {why}\n{PIP_USAGE}")),
    };
    let site_rel = site_packages(target.python_version);
    match command {
        PipCommand::Help => (0, PIP_USAGE.to_string(), String::new()),
        PipCommand::Version => (
            0,
            format!(
                "pip (stacyvm {}; installs pure-Python wheels for python {})\n",
                env!("CARGO_PKG_VERSION"),
                target.python_version
            ),
            String::new(),
        ),
        PipCommand::List { freeze } => {
            let dists = installed(target.root, &site_rel);
            let text = if freeze {
                dists.values().map(|d| format!("{}=={}\n", d.name, d.version)).collect()
            } else {
                let width = dists
                    .values()
                    .map(|d| d.name.len())
                    .max()
                    .unwrap_or(0)
                    .max("Package".len());
                let vwidth = dists
                    .values()
                    .map(|d| d.version.len())
                    .max()
                    .unwrap_or(0)
                    .max("Version".len());
                let mut text = format!(
                    "{:<width$} {:<vwidth$}\n{} {}\n",
                    "Package",
                    "Version",
                    "-".repeat(width),
                    "-".repeat(vwidth)
                );
                for d in dists.values() {
                    text.push_str(&format!("{:<width$} {}\n", d.name, d.version));
                }
                text
            };
            (0, text, String::new())
        }
        PipCommand::Uninstall { names } => {
            let (mut out, mut err) = (String::new(), String::new());
            for name in names {
                let dists = installed(target.root, &site_rel);
                match dists.get(&normalize(&name)) {
                    None => err.push_str(&format!("WARNING: Skipping {name} as it is not installed.\n")),
                    Some(dist) => match remove_installed(target.root, &site_rel, &name) {
                        Ok(_) => out.push_str(&format!("Successfully uninstalled {}-{}\n", dist.name, dist.version)),
                        Err(e) => {
                            err.push_str(&format!("ERROR: cannot uninstall {}: {e}\n", dist.name));
                            return (1, out, err);
                        }
                    },
                }
            }
            (0, out, err)
        }
        PipCommand::Install {
            mut requirements,
            files,
            options,
        } => {
            for file in files {
                let path = match crate::sandbox::path::SandboxPath::resolve(cwd, &file) {
                    Ok(path) => path,
                    Err(_) => {
                        return (
                            1,
                            String::new(),
                            format!("ERROR: Could not open requirements file: {file}\n"),
                        );
                    }
                };
                let text = match target.root.open(path.relative()) {
                    Ok(f) => {
                        let mut text = String::new();
                        match f.take(MAX_REQUIREMENTS_FILE + 1).read_to_string(&mut text) {
                            Ok(n) if n as u64 > MAX_REQUIREMENTS_FILE => {
                                return (
                                    1,
                                    String::new(),
                                    format!(
                                        "ERROR: requirements file {file} is larger than {} KiB\n",
                                        MAX_REQUIREMENTS_FILE >> 10
                                    ),
                                );
                            }
                            Ok(_) => text,
                            Err(e) => {
                                return (
                                    1,
                                    String::new(),
                                    format!("ERROR: Could not read requirements file {file}: {e}\n"),
                                );
                            }
                        }
                    }
                    Err(e) => {
                        return (
                            1,
                            String::new(),
                            format!("ERROR: Could not open requirements file: [Errno 2] {file}: {e}\n"),
                        );
                    }
                };
                match parse_requirements_file(&text) {
                    Ok(more) => requirements.extend(more),
                    Err(why) => return (1, String::new(), format!("ERROR: {file}: {why}\n")),
                }
            }
            if requirements.len() > MAX_REQUIREMENTS {
                return (
                    1,
                    String::new(),
                    format!("ERROR: at most {MAX_REQUIREMENTS} requirements may be installed at once\n"),
                );
            }
            let parsed: Result<Vec<Requirement>, PackageError> =
                requirements.iter().map(|r| Requirement::parse(r)).collect();
            let parsed = match parsed {
                Ok(parsed) => parsed,
                Err(e) => return (1, String::new(), format!("ERROR: {e}\n")),
            };
            let Some(manager) = manager else {
                return (
                    1,
                    String::new(),
                    "ERROR: pip is not available on this server\n".to_string(),
                );
            };
            let options = InstallOptions {
                no_deps: options.no_deps,
            };
            match manager.install(target, sandbox_dir, &parsed, &options) {
                Ok(done) if done.dists.is_empty() => (0, String::new(), String::new()),
                Ok(done) => (
                    0,
                    format!("Successfully installed {}\n", done.dists.join(" ")),
                    String::new(),
                ),
                Err(PackageError::Cancelled) => (1, String::new(), String::new()),
                Err(e) => (1, String::new(), format!("ERROR: {e}\n")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_are_names_extras_and_version_specifiers_only() {
        let ok = [
            ("humanize", "humanize"),
            ("humanize==4.12.3", "humanize"),
            ("Foo_Bar.baz>=1.0,<2", "foo-bar-baz"),
            ("requests[socks,security] ~= 2.31", "requests"),
            ("pkg!=1.*", "pkg"),
            ("a===1.0+local", "a"),
        ];
        for (raw, name) in ok {
            assert_eq!(Requirement::parse(raw).unwrap().name, name, "{raw}");
        }
        assert_eq!(Requirement::parse("x >= 1").unwrap().text, "x>=1");
        for bad in [
            "",
            "-r",
            "--index-url=http://evil",
            "pkg @ https://evil/x.whl",
            "pkg; python_version<'4'",
            "./local/dir",
            "/abs/path.whl",
            "pkg==1.0 && rm -rf /",
            "pkg$(id)",
            "pkg[",
            "pkg[a b]",
            "pkg==",
            "_pkg",
            "pkg-",
            "pkg==1\n2",
        ] {
            assert!(
                matches!(Requirement::parse(bad), Err(PackageError::Invalid(_))),
                "{bad:?} was accepted"
            );
        }
        let long = "a".repeat(MAX_REQUIREMENT_BYTES + 1);
        assert_eq!(
            Requirement::parse(&long).unwrap_err().to_string(),
            format!(
                "a requirement is longer than {MAX_REQUIREMENT_BYTES} bytes: \"{}...\"",
                "a".repeat(80)
            )
        );
    }

    #[test]
    fn wheel_members_stay_inside_site_packages() {
        let data = "pkg-1.0.data";
        assert_eq!(
            member_destination("pkg/__init__.py", data),
            Ok(Some("pkg/__init__.py".into()))
        );
        assert_eq!(member_destination("./pkg//a.py", data), Ok(Some("pkg/a.py".into())));
        assert_eq!(
            member_destination("pkg-1.0.data/purelib/pkg/x.py", data),
            Ok(Some("pkg/x.py".into()))
        );
        assert_eq!(member_destination("pkg-1.0.data/scripts/run", data), Ok(None));
        assert_eq!(member_destination("pkg-1.0.data/data/share/x", data), Ok(None));
        for bad in ["../evil.py", "pkg/../../evil.py", "/etc/passwd", "pkg\\..\\x", "a\0b"] {
            assert!(member_destination(bad, data).is_err(), "{bad:?} was accepted");
        }
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        assert!(member_destination(&deep, data).is_err());
    }

    #[test]
    fn pip_command_lines_parse_into_what_stacyvm_supports() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            parse_pip(&args("install -U humanize==4.12.3 -r req.txt --no-deps")),
            Ok(PipCommand::Install {
                requirements: vec!["humanize==4.12.3".into()],
                files: vec!["req.txt".into()],
                options: PipInstallFlags { no_deps: true },
            })
        );
        assert_eq!(
            parse_pip(&args("uninstall -y a b")),
            Ok(PipCommand::Uninstall {
                names: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(parse_pip(&args("list")), Ok(PipCommand::List { freeze: false }));
        assert_eq!(parse_pip(&args("freeze")), Ok(PipCommand::List { freeze: true }));
        assert_eq!(
            parse_pip(&args("install --index-url http://evil x")),
            Err("no such option: --index-url (stacyvm's pip accepts -r, --no-deps, -U and -q)".into())
        );
        assert_eq!(
            parse_pip(&args("download x")),
            Err("unknown command \"download\"".into())
        );
        assert_eq!(
            parse_requirements_file("# deps\nhumanize==4.12.3  # pinned\n\n  tabulate\n"),
            Ok(vec!["humanize==4.12.3".to_string(), "tabulate".to_string()])
        );
        assert_eq!(
            parse_requirements_file("-e .\n"),
            Err("line 1: options in requirements files are not supported: -e .".into())
        );
    }

    #[test]
    fn record_paths_read_csv_quoting() {
        assert_eq!(record_path("pkg/a.py,sha256=x,12"), "pkg/a.py");
        assert_eq!(record_path("\"pkg/a,b.py\",sha256=x,12"), "pkg/a,b.py");
        assert_eq!(record_path("\"pkg/a\"\"b.py\",,"), "pkg/a\"b.py");
        assert_eq!(csv_field("pkg/a,b.py"), "\"pkg/a,b.py\"");
    }

    #[test]
    fn names_are_normalized_as_pep_503_says() {
        assert_eq!(normalize("Foo__Bar.-baz"), "foo-bar-baz");
        assert_eq!(normalize("humanize"), "humanize");
    }
}
