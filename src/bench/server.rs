//! The server under test when bench starts its own: this executable run as
//! `stacyvm serve` on a free loopback port, with a fresh data directory, a
//! shared image directory (so the compile cache stays warm between runs),
//! and its log in a file.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use super::client::Api;

/// How long a start may take: the first start on a machine downloads the
/// Python image (about 12 MB) and compiles it, which takes seconds.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How often /health is tried while the server starts: short enough that
/// polling adds at most a couple of milliseconds to a ~50 ms start.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// How long a graceful stop may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Server {
    child: Child,
    pub url: String,
}

/// What a spawned server needs to know.
pub struct Launch {
    pub data_dir: PathBuf,
    pub image_dir: PathBuf,
    pub log: PathBuf,
    /// `STACYVM_MAX_SANDBOXES`: the density phase holds more sandboxes than
    /// the default quota of 10,000.
    pub max_sandboxes: usize,
    /// More `STACYVM_*` settings (the docker warm pool's).
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// Spawns the server and waits for its first 200 from /health; returns
    /// it with the time from spawn to that answer.
    pub async fn start(&self) -> anyhow::Result<(Server, Duration)> {
        let launch = self;
        // This very binary, even when a rebuild has replaced the file since
        // it started (then `current_exe()` names a deleted file).
        let exe = Path::new("/proc/self/exe");
        let port = free_port()?;
        std::fs::create_dir_all(&launch.data_dir)
            .with_context(|| format!("cannot create {}", launch.data_dir.display()))?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&launch.log)
            .with_context(|| format!("cannot open the server log {}", launch.log.display()))?;
        let api = Api::new(&format!("http://127.0.0.1:{port}"), None)?;
        let started = Instant::now();
        let child = Command::new(exe)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&launch.data_dir)
            // The data directory as working directory keeps a `stacyvm.toml`
            // in the caller's directory from changing what is measured.
            .current_dir(&launch.data_dir)
            .env_remove("STACYVM_CONFIG")
            .env_remove("STACYVM_API_KEYS")
            .env("STACYVM_IMAGE_DIR", &launch.image_dir)
            .env("STACYVM_MAX_SANDBOXES", launch.max_sandboxes.to_string())
            .env("STACYVM_DOCKER_ON_SHUTDOWN", "remove")
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start `stacyvm serve`")?;
        let mut server = Server {
            child,
            url: api.base.clone(),
        };
        loop {
            if api.health().await.is_ok() {
                return Ok((server, started.elapsed()));
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "the server exited with {status} while starting; see {}",
                    launch.log.display()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the server did not answer /health within {START_TIMEOUT:?}; see {}",
                    launch.log.display()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Server {
    /// The server's resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the server has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS line in /proc/<pid>/status")
    }

    /// Stops the server gracefully (SIGTERM, as an operator would), and
    /// kills it if it does not finish in time.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // std has no way to send SIGTERM; `kill(1)` is on every Linux.
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .context("cannot run kill -TERM")?;
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the server did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed");
            }
        }
        Ok(())
    }
}

/// A loopback port nobody listens on right now. Another process could take
/// it before the server binds; then the start fails loudly.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A directory removed when dropped, so an error does not leave 10,000
/// sandbox directories behind.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new() -> anyhow::Result<ScratchDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!("stacyvm-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
