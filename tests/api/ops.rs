//! Helpers for the operator-facing tests (quotas, templates, audit, pool,
//! roles): servers with keys of each role, and requests made as one key.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use serde_json::Value;
use stacyvm::settings::{ApiKey, Role, Secret, Settings, TenantQuota};

use crate::helpers::{TestApp, send};

pub const ALPHA: &str = "sk_test_alpha_user";
pub const BETA: &str = "sk_test_beta_user";
pub const OPS: &str = "sk_test_ops_operator";
pub const ROOT: &str = "sk_test_root_admin";

pub fn key(k: &str, tenant: &str, role: Role) -> ApiKey {
    ApiKey {
        key: Secret::new(k),
        tenant: tenant.to_string(),
        role,
    }
}

/// Tenants `alpha` and `beta` (users), `ops` (an operator key and an admin key).
pub fn four_keys(s: &mut Settings) {
    s.auth.keys = vec![
        key(ALPHA, "alpha", Role::User),
        key(BETA, "beta", Role::User),
        key(OPS, "ops", Role::Operator),
        key(ROOT, "ops", Role::Admin),
    ];
}

pub fn quota(s: &mut Settings, tenant: &str, q: TenantQuota) {
    s.quotas.insert(tenant.to_string(), q);
}

/// A request as the given key.
pub struct As<'a> {
    pub app: &'a TestApp,
    pub key: &'a str,
}

impl As<'_> {
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.app.client.get(self.app.url(path)).header("X-API-Key", self.key)
    }
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.app.client.post(self.app.url(path)).header("X-API-Key", self.key)
    }
    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.app.client.delete(self.app.url(path)).header("X-API-Key", self.key)
    }

    /// Creates a wasm sandbox, asserting 201.
    pub async fn create(&self, body: Value) -> String {
        let (status, v) = send(self.post("/sandboxes").json(&body)).await;
        assert_eq!(status, 201, "create as {}: {v}", self.key);
        v["id"].as_str().unwrap().to_string()
    }
}

pub fn as_key<'a>(app: &'a TestApp, key: &'a str) -> As<'a> {
    As { app, key }
}

/// Waits up to `limit` for `check` to hold.
pub async fn eventually<F: std::future::Future<Output = bool>>(limit: Duration, mut check: impl FnMut() -> F) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The daemon when the docker tests can run; None after a loud message
/// when they cannot and nothing requires them; a panic under CI.
pub async fn docker_or_skip(test: &str) -> Option<Docker> {
    const BUSYBOX: &str = "stacyvm-test-busybox:latest";
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("STACYVM_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let why = match Docker::connect_with_local_defaults() {
        Ok(docker) => match tokio::time::timeout(Duration::from_secs(5), docker.ping()).await {
            Ok(Ok(_)) => {
                let docker = docker
                    .negotiate_version()
                    .await
                    .expect("the daemon reports its API version");
                if docker.inspect_image(BUSYBOX).await.is_ok() {
                    return Some(docker);
                }
                format!("the image {BUSYBOX} is missing; run .ci/docker-setup.sh")
            }
            Ok(Err(e)) => format!("the daemon does not answer: {e}"),
            Err(_) => "the daemon does not answer within 5s".into(),
        },
        Err(e) => format!("cannot connect: {e}"),
    };
    if required {
        panic!("a Docker daemon is required here (CI=true or STACYVM_REQUIRE_DOCKER=1) but {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// Containers of the server whose data directory is `data_dir`, with their
/// labels; `filter` adds label filters.
pub async fn containers_in(docker: &Docker, data_dir: &Path, extra: &[&str]) -> Vec<HashMap<String, String>> {
    let dir = std::fs::canonicalize(data_dir).unwrap();
    let mut labels = vec![format!("stacyvm.data_dir={}", dir.display())];
    labels.extend(extra.iter().map(|l| l.to_string()));
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".to_string(), labels)])),
        ..Default::default()
    };
    docker
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.labels.unwrap_or_default())
        .collect()
}

/// Removes every container of the server whose data directory is `data_dir`.
pub async fn remove_containers_in(docker: &Docker, data_dir: &Path) {
    let Ok(dir) = std::fs::canonicalize(data_dir) else {
        return;
    };
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("stacyvm.data_dir={}", dir.display())],
        )])),
        ..Default::default()
    };
    for c in docker.list_containers(Some(options)).await.unwrap() {
        let force = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        docker.remove_container(&c.id.unwrap(), Some(force)).await.ok();
    }
}
