//! The few API calls bench makes, over one keep-alive HTTP client.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

#[derive(Clone)]
pub struct Api {
    pub(super) http: reqwest::Client,
    pub base: String,
    pub(super) key: Option<String>,
}

/// A provider as `GET /providers` lists it.
pub struct ProviderState {
    pub available: bool,
    pub reason: Option<String>,
}

impl Api {
    pub fn new(base: &str, key: Option<String>) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            // Loopback traffic must not detour through an HTTP_PROXY.
            .no_proxy()
            // Generous: an exec of the default timeout (30s) must finish.
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_string(),
            key,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}/api/v1{path}", self.base));
        match &self.key {
            Some(key) => req.header("X-API-Key", key),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let resp = req.send().await.with_context(|| format!("{what}: no answer"))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("{what}: the answer is not JSON"))?;
        if !status.is_success() {
            bail!("{what}: {status} {body}");
        }
        Ok(body)
    }

    /// The server's version once /health answers 200.
    pub async fn health(&self) -> anyhow::Result<String> {
        let body = self
            .send(self.request(reqwest::Method::GET, "/health"), "GET /health")
            .await?;
        Ok(body["version"].as_str().unwrap_or("unknown").to_string())
    }

    pub async fn provider(&self, name: &str) -> anyhow::Result<Option<ProviderState>> {
        let list = self
            .send(self.request(reqwest::Method::GET, "/providers"), "GET /providers")
            .await?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .map(|p| ProviderState {
                available: p["available"].as_bool().unwrap_or(false),
                reason: p["reason"].as_str().map(str::to_string),
            }))
    }

    /// Creates a sandbox and returns its id.
    pub async fn create(&self, provider: &str, image: &str) -> anyhow::Result<String> {
        self.create_json(json!({"provider": provider, "image": image})).await
    }

    /// Creates a sandbox from a whole create body and returns its id.
    pub async fn create_json(&self, body: Value) -> anyhow::Result<String> {
        let what = format!("create a sandbox {body}");
        let body = self
            .send(self.request(reqwest::Method::POST, "/sandboxes").json(&body), &what)
            .await?;
        body["id"]
            .as_str()
            .map(str::to_string)
            .context("the create answer has no id")
    }

    /// How many sandboxes the tenant has.
    pub async fn list_count(&self) -> anyhow::Result<usize> {
        let body = self
            .send(self.request(reqwest::Method::GET, "/sandboxes"), "list the sandboxes")
            .await?;
        body.as_array()
            .or_else(|| body["sandboxes"].as_array())
            .map(Vec::len)
            .context("the list answer has no array")
    }

    /// Runs `command` and returns its stdout; a non-zero exit is an error,
    /// since a failing command would time the wrong thing.
    pub async fn exec(&self, id: &str, command: &str) -> anyhow::Result<String> {
        let body = self
            .send(
                self.request(reqwest::Method::POST, &format!("/sandboxes/{id}/exec"))
                    .json(&json!({"command": command})),
                &format!("exec {command:?}"),
            )
            .await?;
        if body["exit_code"] != 0 {
            bail!("exec {command:?} exited with {}: {}", body["exit_code"], body["stderr"]);
        }
        Ok(body["stdout"].as_str().unwrap_or_default().to_string())
    }

    /// Creates (or replaces) a template.
    pub async fn save_template(&self, template: &Value) -> anyhow::Result<()> {
        self.send(
            self.request(reqwest::Method::POST, "/templates").json(template),
            "save a template",
        )
        .await?;
        Ok(())
    }

    pub async fn delete_template(&self, name: &str) -> anyhow::Result<()> {
        self.send(
            self.request(reqwest::Method::DELETE, &format!("/templates/{name}")),
            &format!("delete template {name}"),
        )
        .await?;
        Ok(())
    }

    /// Spawns a sandbox from a template and returns its id.
    pub async fn spawn_template(&self, name: &str) -> anyhow::Result<String> {
        let body = self
            .send(
                self.request(reqwest::Method::POST, &format!("/templates/{name}/spawn"))
                    .json(&json!({})),
                &format!("spawn template {name}"),
            )
            .await?;
        body["id"]
            .as_str()
            .map(str::to_string)
            .context("the spawn answer has no id")
    }

    /// Ready and target containers of `image` in the docker warm pool, or
    /// `None` when the pool does not hold that image.
    pub async fn pool(&self, image: &str) -> anyhow::Result<Option<(u64, u64)>> {
        let body = self
            .send(self.request(reqwest::Method::GET, "/pool/status"), "GET /pool/status")
            .await?;
        Ok(body["images"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["image"] == image)
            .map(|i| (i["ready"].as_u64().unwrap_or(0), i["target"].as_u64().unwrap_or(0))))
    }

    pub async fn destroy(&self, id: &str) -> anyhow::Result<()> {
        self.send(
            self.request(reqwest::Method::DELETE, &format!("/sandboxes/{id}")),
            &format!("destroy {id}"),
        )
        .await?;
        Ok(())
    }
}
