//! What every hostile test asserts after its attack.

use serde_json::Value;

use crate::helpers::{TestApp, send};

/// The server still answers `/health`, promptly.
pub async fn assert_up(app: &TestApp) {
    let health = tokio::time::timeout(std::time::Duration::from_secs(10), send(app.get("/health")))
        .await
        .expect("the server answers /health within 10s after the attack");
    assert_eq!(
        health.0, 200,
        "the server is not healthy after the attack: {}",
        health.1
    );
}

/// The answer refused the attack (a 4xx) or ran it to a failure (a 200
/// with a non-zero exit); never a 5xx, never a success.
pub fn assert_refused_or_failed(answer: &(u16, Value)) {
    let (status, body) = answer;
    match status {
        400..=499 => assert!(body["code"].is_string(), "a 4xx without an error code: {body}"),
        200 => assert_ne!(body["exit_code"], 0, "the attack succeeded: {body}"),
        _ => panic!("the attack got {status}: {body}"),
    }
}

/// A server in a process of its own, so that a crash is seen as a crash
/// and its threads can be counted from outside.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    /// The last lines it logged, for a failure message.
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

impl ServerProcess {
    /// Starts `stacyvm serve` on a free port with a fresh data directory,
    /// the shared images and `env` on top.
    pub fn start(env: &[(&str, &str)]) -> ServerProcess {
        use std::io::{BufRead, BufReader};
        let data_dir = tempfile::tempdir().unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stacyvm"));
        command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("STACYVM_DATA_DIR", data_dir.path())
            .env("STACYVM_IMAGE_DIR", crate::helpers::shared_image_dir())
            .env("STACYVM_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the server starts");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let tail = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(addr) = line.split("addr=").nth(1) {
                    tx.send(addr.trim().to_string()).ok();
                    sent = true;
                }
                let mut tail = tail.lock().unwrap();
                if tail.len() == 40 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let addr = rx
            .recv_timeout(std::time::Duration::from_secs(900))
            .expect("the server reports its address");
        ServerProcess {
            child,
            base: format!("http://{addr}/api/v1"),
            client: reqwest::Client::new(),
            data_dir,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Panics, with the server's last log lines, if the process has ended.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let log: Vec<String> = self.log.lock().unwrap().iter().cloned().collect();
            panic!(
                "the server process died ({status}); its last lines:\n{}",
                log.join("\n")
            );
        }
    }

    /// Threads of the server whose name starts with `prefix`.
    pub fn threads_named(&self, prefix: &str) -> usize {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm")).is_ok_and(|name| name.starts_with(prefix))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    pub async fn create(&self, body: Value) -> String {
        let (status, v) = send(self.client.post(self.url("/sandboxes")).json(&body)).await;
        assert_eq!(status, 201, "create failed: {v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn exec(&self, id: &str, body: Value) -> (u16, Value) {
        send(self.client.post(self.url(&format!("/sandboxes/{id}/exec"))).json(&body)).await
    }

    pub fn sandbox_dir(&self, id: &str) -> std::path::PathBuf {
        self.data_dir.path().join("sandboxes").join(id)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// What a sandbox directory holds on the host: entries, and bytes as the
/// disk ledger counts them (blocks, or length when larger), never
/// following symlinks.
pub fn host_usage(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            entries += 1;
            bytes += (meta.blocks() * 512).max(meta.len());
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (entries, bytes)
}
