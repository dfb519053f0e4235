//! Attacks on the operator surface the SDK calls: template bombs, setups
//! that never end or whose client leaves, a burst of execs against a rate
//! quota, admission with numbers built to overflow, and audit queries built
//! to break the store.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stacyvm::settings::{ApiKey, Secret, TenantQuota};

use crate::helpers::{TestApp, assert_error, send};
use crate::support::{assert_refused_or_failed, assert_up};

async fn no_sandboxes_within(app: &TestApp, limit: Duration) {
    let started = Instant::now();
    loop {
        let (status, list) = send(app.get("/sandboxes")).await;
        assert_eq!(status, 200, "{list}");
        if list.as_array().unwrap().is_empty() {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "sandboxes outlived the attack by {limit:?}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn template_bombs_are_refused_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let file = |path: &str, content: &str| json!({"path": path, "content": content});
    let many_files: Vec<Value> = (0..257).map(|i| file(&format!("f{i}"), "x")).collect();
    let cases = [
        (
            json!({"name": "bomb", "files": many_files}),
            400,
            "a template may write at most 256 files",
        ),
        (
            json!({"name": "bomb", "setup": vec!["true"; 65]}),
            400,
            "a template may run at most 64 setup commands",
        ),
        (
            json!({"name": "bomb", "setup": ["x".repeat(70_000)]}),
            400,
            "a setup command is longer than 65536 bytes",
        ),
        (
            json!({"name": "bomb", "setup": ["   "]}),
            400,
            "a setup command is empty",
        ),
        (
            json!({"name": "bomb", "env": (0..257).map(|i| (format!("V{i}"), Value::from(""))).collect::<serde_json::Map<String, Value>>()}),
            400,
            "env has more than 256 variables",
        ),
    ];
    for (body, status, message) in cases {
        let answer = send(app.post("/templates").json(&body)).await;
        assert_refused_or_failed(&answer);
        assert_eq!(answer.0, status, "{}", answer.1);
        assert_error(&answer, status, "bad_request", message);
    }
    // 17 MiB of files is over the body limit: 413, or the connection is
    // closed while the body is still being sent (the server answered 413
    // before reading it all).
    let huge =
        json!({"name": "bomb", "files": [file("blob", &"a".repeat(9 << 20)), file("blob2", &"a".repeat(8 << 20))]});
    match app.post("/templates").json(&huge).send().await {
        Ok(resp) => assert_eq!(resp.status(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
    }
    // Names built to escape a URL or a path, or to be huge.
    for name in [
        "x".repeat(10_000),
        "../etc".into(),
        "a/b".into(),
        ".hidden".into(),
        "a\0b".into(),
    ] {
        let answer = send(app.post("/templates").json(&json!({"name": name}))).await;
        assert_eq!(answer.0, 400, "{name:?}: {}", answer.1);
        assert_eq!(answer.1["code"], "bad_request");
    }
    // Files aimed outside the sandbox.
    for path in ["../../etc/passwd", "/workspace/../../x"] {
        let answer = send(
            app.post("/templates")
                .json(&json!({"name": "escape", "files": [file(path, "x")]})),
        )
        .await;
        assert_eq!(answer.0, 400, "{path}: {}", answer.1);
        assert_eq!(answer.1["code"], "bad_request");
    }
    assert_up(&app).await;
    let (_, templates) = send(app.get("/templates")).await;
    assert_eq!(templates, json!([]), "a refused template was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_setup_that_never_ends_is_stopped_by_its_timeout_and_leaves_no_sandbox() {
    let app = TestApp::spawn().await;
    let (status, body) = send(app.post("/templates").json(&json!({
        "name": "spin",
        "image": "python:3.14",
        "setup": ["python3 -c \"while True: pass\""],
        "setup_timeout": "1s",
    })))
    .await;
    assert_eq!(status, 201, "{body}");
    let started = Instant::now();
    let (status, body) = send(app.post("/templates/spin/spawn").json(&json!({}))).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "setup_failed");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("setup command 1 (python3 -c \"while True: pass\") was stopped: "),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    no_sandboxes_within(&app, Duration::from_secs(10)).await;
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_mid_spawn_leaves_no_sandbox_behind() {
    let app = TestApp::spawn().await;
    let (status, body) = send(app.post("/templates").json(&json!({
        "name": "slow",
        "image": "python:3.14",
        "setup": ["python3 -c \"import time; time.sleep(20)\""],
        "setup_timeout": "30s",
    })))
    .await;
    assert_eq!(status, 201, "{body}");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let gone = impatient
        .post(app.url("/templates/slow/spawn"))
        .json(&json!({}))
        .send()
        .await;
    assert!(gone.as_ref().is_err_and(|e| e.is_timeout()), "{gone:?}");
    // The half-prepared sandbox goes with its request, well before its
    // setup command would have finished.
    no_sandboxes_within(&app, Duration::from_secs(10)).await;
    assert_up(&app).await;
}

const RATED: &str = "sk_test_rated_user";

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_concurrent_execs_cannot_pass_the_rate_quota() {
    let app = TestApp::spawn_with(|s| {
        s.auth.keys = vec![ApiKey {
            key: Secret::new(RATED),
            tenant: "rated".into(),
            role: Default::default(),
        }];
        s.quotas.insert(
            "rated".into(),
            TenantQuota {
                max_execs_per_minute: Some(5),
                ..Default::default()
            },
        );
    })
    .await;
    let id = app.create_wasm().await;
    let burst: Vec<_> = (0..40)
        .map(|_| {
            app.post(&format!("/sandboxes/{id}/exec"))
                .json(&json!({"command": "echo x"}))
                .send()
        })
        .collect();
    let answers = futures_util::future::join_all(burst).await;
    let mut ran = 0;
    for answer in answers {
        let answer = answer.unwrap();
        match answer.status().as_u16() {
            200 => ran += 1,
            429 => {
                let retry: u64 = answer.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=60).contains(&retry), "Retry-After: {retry}");
                let body: Value = answer.json().await.unwrap();
                assert_eq!(body["code"], "resource_limit");
            }
            other => panic!("an exec of the burst got {other}"),
        }
    }
    assert_eq!(ran, 5, "the rate of 5 a minute let {ran} execs through");
    // The limit held on the host: only the admitted execs ran.
    let (_, logs) = send(app.get(&format!("/sandboxes/{id}/logs"))).await;
    assert_eq!(logs.as_array().unwrap().len(), 5, "{logs}");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_with_numbers_built_to_overflow_admits_nothing_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let bodies = [
        json!({"memory_mb": u64::MAX}),
        json!({"memory_mb": -1}),
        json!({"vcpus": u64::MAX}),
        json!({"memory_mb": 1e300}),
        json!({"ttl": "94522879700260684295381835.9h"}),
        json!({"ttl": format!("{}ns", "9".repeat(5000))}),
        json!({"metadata": (0..5000).map(|i| (format!("k{i}"), Value::from("v"))).collect::<serde_json::Map<String, Value>>()}),
        json!({"image": "x".repeat(100_000)}),
    ];
    for body in bodies {
        let (status, decision) = send(app.post("/sandboxes/admission").json(&body)).await;
        match status {
            200 => assert_eq!(decision["allowed"], false, "{decision}"),
            400 | 422 => assert!(decision["code"].is_string(), "{decision}"),
            other => panic!("admission got {other}: {decision}"),
        }
    }
    assert_up(&app).await;
    no_sandboxes_within(&app, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_queries_built_to_break_the_store_are_refused_or_answered_safely() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    for limit in ["0", "1001", "-1", "100000000000000000000000000000", "1e3"] {
        let answer = send(app.get("/audit").query(&[("limit", limit)])).await;
        assert_eq!(answer.0, 400, "limit={limit}: {}", answer.1);
        assert_eq!(answer.1["code"], "bad_request");
    }
    for since in [
        "yesterday",
        "99999-01-01T00:00:00Z",
        "2026-13-45T99:99:99Z",
        "'; DROP TABLE audit; --",
    ] {
        let answer = send(app.get("/audit").query(&[("since", since)])).await;
        assert_eq!(answer.0, 400, "since={since}: {}", answer.1);
        assert_eq!(answer.1["code"], "bad_request");
    }
    // Values are bound, never spliced: an injection finds nothing and
    // breaks nothing.
    for sandbox_id in ["' OR '1'='1", "%", "_", "\u{0}", &"x".repeat(4000)] {
        let answer = send(app.get("/audit").query(&[("sandbox_id", sandbox_id)])).await;
        assert_eq!(answer.0, 200, "{sandbox_id:?}: {}", answer.1);
        assert_eq!(answer.1, json!([]), "{sandbox_id:?}");
    }
    let answer = send(app.get("/audit").query(&[("sandbox_id", id.as_str())])).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert!(
        answer
            .1
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "sandbox.create"),
        "the log still works after the attack: {}",
        answer.1
    );
    assert_up(&app).await;
}
