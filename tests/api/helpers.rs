//! `TestApp`: the real server on port 0 with a temporary data directory,
//! driven over HTTP.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use stacyvm::App;
use stacyvm::settings::{ApiKey, Secret, Settings};

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    pub api_key: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Images and their compile cache are shared by every test server, so the
/// image is fetched and compiled once per checkout.
pub fn shared_image_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("images")
}

pub fn test_settings(data_dir: &std::path::Path) -> Settings {
    let mut s = Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        ..Settings::default()
    };
    s.wasm.image_dir = Some(shared_image_dir());
    s.sandbox.reap_interval = Duration::from_millis(100);
    s
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
        let data_dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(data_dir.path());
        configure(&mut settings);
        let api_key = settings.auth.keys.first().map(|k| k.key.expose().to_string());
        let app = App::build(settings).await.expect("server builds");
        let addr = app.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            rx.await.ok();
        }));
        TestApp {
            base: format!("http://{addr}/api/v1"),
            client: reqwest::Client::new(),
            data_dir,
            api_key,
            shutdown: Some(tx),
        }
    }

    pub async fn with_keys(keys: &[(&str, &str)]) -> TestApp {
        let keys: Vec<ApiKey> = keys
            .iter()
            .map(|(k, t)| ApiKey {
                key: Secret::new(*k),
                tenant: t.to_string(),
                role: Default::default(),
            })
            .collect();
        Self::spawn_with(|s| s.auth.keys = keys).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => rb.header("X-API-Key", k),
            None => rb,
        }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.client.get(self.url(path)))
    }
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.client.post(self.url(path)))
    }
    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.client.put(self.url(path)))
    }
    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.client.delete(self.url(path)))
    }

    /// Creates a sandbox and returns its id, asserting 201.
    pub async fn create_sandbox(&self, body: Value) -> String {
        let (status, v) = send(self.post("/sandboxes").json(&body)).await;
        assert_eq!(status, 201, "create failed: {v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn create_wasm(&self) -> String {
        self.create_sandbox(json!({"provider": "wasm"})).await
    }

    /// Runs an exec and returns status and body.
    pub async fn exec(&self, id: &str, body: Value) -> (u16, Value) {
        send(self.post(&format!("/sandboxes/{id}/exec")).json(&body)).await
    }

    /// Runs a shell command and asserts 200.
    pub async fn run(&self, id: &str, command: &str) -> Value {
        let (status, v) = self.exec(id, json!({"command": command})).await;
        assert_eq!(status, 200, "exec of {command:?} failed: {v}");
        v
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.data_dir.path().join("sandboxes").join(id)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
    }
}

/// Sends a request and returns the status and the JSON body (Null if none).
pub async fn send(rb: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = rb.send().await.expect("request is sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// Asserts an error answer: the status, the code, and the exact message.
pub fn assert_error(got: &(u16, Value), status: u16, code: &str, message: &str) {
    assert_eq!(got.0, status, "unexpected status; body {}", got.1);
    assert_eq!(got.1["code"], code, "body {}", got.1);
    assert_eq!(got.1["message"], message, "body {}", got.1);
}

/// Asserts an error answer whose message contains `fragment`.
pub fn assert_error_contains(got: &(u16, Value), status: u16, code: &str, fragment: &str) {
    assert_eq!(got.0, status, "unexpected status; body {}", got.1);
    assert_eq!(got.1["code"], code, "body {}", got.1);
    let message = got.1["message"].as_str().unwrap();
    assert!(message.contains(fragment), "message {message:?} lacks {fragment:?}");
}

/// A WebSocket to the interactive exec route.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn ws_connect(app: &TestApp, id: &str) -> Ws {
    let url = app
        .url(&format!("/sandboxes/{id}/exec/ws"))
        .replacen("http://", "ws://", 1);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects")
        .0
}

pub async fn ws_send(ws: &mut Ws, v: Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(v.to_string().into()))
        .await
        .unwrap();
}

/// The next line of stdout over a websocket: Python writes a line's text
/// and its newline separately, and they may arrive as one message or two.
pub async fn ws_stdout_line(ws: &mut Ws) -> String {
    let mut line = String::new();
    while !line.ends_with('\n') {
        let msg = ws_next(ws).await.expect("the socket stays open");
        assert_eq!(msg["type"], "stdout", "{msg} after {line:?}");
        line.push_str(msg["data"].as_str().unwrap());
    }
    line
}

/// The next JSON message, or None when the socket closes; a message that
/// does not come within ten seconds fails the test.
pub async fn ws_next(ws: &mut Ws) -> Option<Value> {
    use futures_util::StreamExt;
    let next = async {
        loop {
            match ws.next().await?.ok()? {
                tokio_tungstenite::tungstenite::Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
                tokio_tungstenite::tungstenite::Message::Close(_) => return None,
                _ => continue,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), next)
        .await
        .expect("a websocket message within 10s")
}

/// Whether a missing Python toolchain or package index fails a test (under
/// CI, or when `var` is 1) rather than skipping it, loudly.
pub fn python_required(var: &str) -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var(var).is_ok_and(|v| v == "1")
}

/// A virtualenv with `tests/<suite>/requirements.txt` installed, made once
/// per checkout (again when the requirements change); its directory.
pub fn python_venv(suite: &str) -> Result<PathBuf, String> {
    use std::process::Command;
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let requirements = manifest.join(format!("tests/{suite}/requirements.txt"));
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{suite}-venv"));
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.installed");
    let wanted = std::fs::read_to_string(&requirements).map_err(|e| e.to_string())?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return Ok(venv);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(venv)
}
