//! The docker warm pool: ready containers per image, taken by matching
//! creates and refilled; `GET /pool/status`; no container ever leaks, across
//! a graceful shutdown or a `kill -9`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use stacyvm::settings::Settings;

use crate::helpers::{TestApp, send, shared_image_dir};
use crate::ops::{
    ALPHA, BETA, OPS, as_key, containers_in, docker_or_skip, eventually, four_keys, remove_containers_in,
};

const BUSYBOX: &str = "stacyvm-test-busybox:latest";

fn pooled(s: &mut Settings) {
    s.docker.default_image = BUSYBOX.into();
    s.docker.recheck_interval = Duration::from_millis(200);
    s.docker.pool.images = vec![BUSYBOX.into()];
    s.docker.pool.size = 2;
}

async fn status(app: &TestApp, key: Option<&str>) -> Value {
    let rb = app.client.get(app.url("/pool/status"));
    let rb = match key {
        Some(k) => rb.header("X-API-Key", k),
        None => rb,
    };
    let (code, body) = send(rb).await;
    assert_eq!(code, 200, "{body}");
    body
}

async fn ready(app: &TestApp, key: Option<&str>) -> u64 {
    status(app, key).await["images"][0]["ready"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_create_takes_a_ready_container_and_the_pool_refills() {
    let Some(docker) = docker_or_skip("a_pooled_create_takes_a_ready_container_and_the_pool_refills").await else {
        return;
    };
    let app = TestApp::spawn_with(pooled).await;
    assert!(
        eventually(Duration::from_secs(60), || async { ready(&app, None).await == 2 }).await,
        "the pool fills: {}",
        status(&app, None).await
    );
    let before = status(&app, None).await;
    assert_eq!(
        before,
        json!({
            "enabled": true, "vms": 2, "max_vms": 2, "total_users": 0, "max_users_per_vm": 1, "served": 0,
            "images": [{"provider": "docker", "image": BUSYBOX, "ready": 2, "creating": 0, "target": 2, "memory_mb": 512}],
        })
    );
    let pool_ids: Vec<String> = containers_in(&docker, app.data_dir.path(), &["stacyvm.pool"])
        .await
        .into_iter()
        .map(|l| l["stacyvm.sandbox"].clone())
        .collect();
    assert_eq!(pool_ids.len(), 2);

    let id = app
        .create_sandbox(json!({"provider": "docker", "image": BUSYBOX}))
        .await;
    assert!(pool_ids.contains(&id), "{id} came from the pool {pool_ids:?}");
    let run = app.run(&id, "echo pooled; id -u").await;
    assert_eq!(run["stdout"], "pooled\n65534\n");
    assert!(
        eventually(Duration::from_secs(60), || async { ready(&app, None).await == 2 }).await,
        "the pool refills"
    );
    let after = status(&app, None).await;
    assert_eq!(
        (after["total_users"].clone(), after["served"].clone()),
        (json!(1), json!(1))
    );

    // Other resources than the pool's: a container of its own.
    let cold = app
        .create_sandbox(json!({"provider": "docker", "image": BUSYBOX, "memory_mb": 256}))
        .await;
    let labels = containers_in(&docker, app.data_dir.path(), &[&format!("stacyvm.sandbox={cold}")]).await;
    assert_eq!(labels.len(), 1);
    assert!(!labels[0].contains_key("stacyvm.pool"), "{labels:?}");

    assert_eq!(send(app.delete(&format!("/sandboxes/{id}"))).await.0, 200);
    assert_eq!(status(&app, None).await["total_users"], 0);
    remove_containers_in(&docker, app.data_dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_status_shows_a_user_its_own_counts_and_an_operator_the_servers() {
    let Some(docker) = docker_or_skip("pool_status_shows_a_user_its_own_counts_and_an_operator_the_servers").await
    else {
        return;
    };
    let app = TestApp::spawn_with(|s| {
        pooled(s);
        four_keys(s);
    })
    .await;
    assert!(eventually(Duration::from_secs(60), || async { ready(&app, Some(OPS)).await == 2 }).await);
    as_key(&app, ALPHA).create(json!({"provider": "docker"})).await;
    for (key, users) in [(ALPHA, 1), (BETA, 0), (OPS, 1)] {
        let s = status(&app, Some(key)).await;
        assert_eq!(s["total_users"], users, "{key}: {s}");
        assert_eq!(s["served"], users, "{key}: {s}");
        assert_eq!(s["max_vms"], 2, "{key}: {s}");
    }
    let anonymous = send(app.client.get(app.url("/pool/status"))).await;
    assert_eq!(anonymous.0, 401);
    remove_containers_in(&docker, app.data_dir.path()).await;
}

#[tokio::test]
async fn without_a_pool_the_status_says_so() {
    let app = TestApp::spawn().await;
    assert_eq!(
        status(&app, None).await,
        json!({"enabled": false, "vms": 0, "max_vms": 0, "total_users": 0, "max_users_per_vm": 1, "served": 0, "images": []})
    );
}

#[test]
fn pool_settings_are_validated_before_the_server_binds() {
    let mut s = Settings::from_toml("[docker.pool]\nimages = [\"stacyvm-test-busybox:latest\"]\nsize = 3\n").unwrap();
    s.validate().unwrap();
    assert_eq!(s.docker.pool.size, 3);
    s.apply_env(|n| match n {
        "STACYVM_DOCKER_POOL_IMAGES" => Some("a:1, b:2".into()),
        "STACYVM_DOCKER_POOL_SIZE" => Some("5".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        (s.docker.pool.images.clone(), s.docker.pool.size),
        (vec!["a:1".to_string(), "b:2".into()], 5)
    );
    s.docker.pool.size = 0;
    assert_eq!(
        s.validate().unwrap_err().to_string(),
        "docker.pool.size must be between 1 and 64"
    );
    s.docker.pool.size = 1;
    s.docker.allowed_images = vec!["a:*".into(), "alpine:*".into()];
    assert_eq!(
        s.validate().unwrap_err().to_string(),
        "docker.pool.images lists \"b:2\", which docker.allowed_images does not match"
    );
}

/// The real binary with a pool, on `data_dir`; returns the child and the URL.
fn start_server(data_dir: &std::path::Path) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stacyvm"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("STACYVM_DATA_DIR", data_dir)
        .env("STACYVM_IMAGE_DIR", shared_image_dir())
        .env("STACYVM_DOCKER_DEFAULT_IMAGE", BUSYBOX)
        .env("STACYVM_DOCKER_POOL_IMAGES", BUSYBOX)
        .env("STACYVM_DOCKER_POOL_SIZE", "2")
        .env("STACYVM_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(addr) = line.split("addr=").nth(1) {
                tx.send(addr.trim().to_string()).ok();
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(900))
        .expect("the server reports its address");
    (child, format!("http://{addr}/api/v1"))
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_containers_never_leak_across_kill_9_or_a_graceful_stop() {
    let Some(docker) = docker_or_skip("pool_containers_never_leak_across_kill_9_or_a_graceful_stop").await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let pool_ready = |base: String| {
        let client = client.clone();
        async move {
            let (_, s) = send(client.get(format!("{base}/pool/status"))).await;
            s["images"][0]["ready"] == 2
        }
    };
    let (mut first, base) = start_server(data.path());
    assert!(eventually(Duration::from_secs(60), || pool_ready(base.clone())).await);
    let (status, sb) = send(
        client
            .post(format!("{base}/sandboxes"))
            .json(&json!({"provider": "docker"})),
    )
    .await;
    assert_eq!(status, 201, "{sb}");
    let kept = sb["id"].as_str().unwrap().to_string();
    assert!(eventually(Duration::from_secs(60), || pool_ready(base.clone())).await);
    let old_ready: Vec<String> = containers_in(&docker, data.path(), &["stacyvm.pool"])
        .await
        .into_iter()
        .map(|l| l["stacyvm.sandbox"].clone())
        .filter(|id| *id != kept)
        .collect();
    assert_eq!(old_ready.len(), 2);

    first.kill().unwrap(); // SIGKILL: the ready containers are left behind.
    first.wait().unwrap();
    let (mut second, base) = start_server(data.path());
    // The sandbox that was served from the pool is re-adopted, the old ready
    // containers are removed, and the pool is filled anew.
    let (status, _) = send(client.get(format!("{base}/sandboxes/{kept}"))).await;
    assert_eq!(status, 200);
    let run = send(
        client
            .post(format!("{base}/sandboxes/{kept}/exec"))
            .json(&json!({"command": "echo still"})),
    )
    .await;
    assert_eq!(run.1["stdout"], "still\n");
    assert!(eventually(Duration::from_secs(60), || pool_ready(base.clone())).await);
    let now: Vec<String> = containers_in(&docker, data.path(), &[])
        .await
        .into_iter()
        .map(|l| l["stacyvm.sandbox"].clone())
        .collect();
    assert_eq!(now.len(), 3, "the kept sandbox and two ready: {now:?}");
    for old in &old_ready {
        assert!(!now.contains(old), "{old} leaked");
    }

    // SIGTERM: a graceful stop removes the ready containers and keeps the sandbox's.
    Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    second.wait().unwrap();
    let left: Vec<String> = containers_in(&docker, data.path(), &[])
        .await
        .into_iter()
        .map(|l| l["stacyvm.sandbox"].clone())
        .collect();
    assert_eq!(
        left,
        std::slice::from_ref(&kept),
        "only the sandbox's container is kept"
    );
    remove_containers_in(&docker, data.path()).await;
}
