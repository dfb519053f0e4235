//! The hardening of the HTTP layer and the sandbox service: numbers that
//! overflow, bounded globs, roles, tenant isolation of metrics, providers and
//! events, WebSocket message limits, the tenant quota under concurrency,
//! and file modes.

use std::time::Duration;

use serde_json::json;
use stacyvm::settings::{ApiKey, Role, Secret, Settings};

use crate::helpers::{TestApp, assert_error, send, ws_connect, ws_next, ws_send};

const OVERFLOWING_TTL: &str = "94522879700260684295381835.9h";

#[tokio::test]
async fn a_ttl_whose_fraction_overflows_is_a_400_not_a_dropped_connection() {
    let app = TestApp::spawn().await;
    let answer = send(app.post("/sandboxes").json(&json!({"ttl": OVERFLOWING_TTL}))).await;
    assert_error(
        &answer,
        400,
        "bad_request",
        &format!("invalid duration {OVERFLOWING_TTL:?}: the duration is too large"),
    );
    let huge = "340282366920938463463374607431768211455s";
    let answer = send(app.post("/sandboxes").json(&json!({"ttl": huge}))).await;
    assert_error(
        &answer,
        400,
        "bad_request",
        &format!("invalid duration {huge:?}: the duration is too large"),
    );
    assert_eq!(send(app.get("/health")).await.0, 200);
}

#[tokio::test]
async fn an_overflowing_extend_ttl_or_exec_timeout_is_a_400() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let message = format!("invalid duration {OVERFLOWING_TTL:?}: the duration is too large");
    let extend = send(
        app.post(&format!("/sandboxes/{id}/extend"))
            .json(&json!({"ttl": OVERFLOWING_TTL})),
    )
    .await;
    assert_error(&extend, 400, "bad_request", &message);
    let exec = app
        .exec(&id, json!({"command": "echo hi", "timeout": OVERFLOWING_TTL}))
        .await;
    assert_error(&exec, 400, "bad_request", &message);
}

#[tokio::test]
async fn a_logs_line_count_beyond_any_integer_is_a_400() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let answer = send(app.get(&format!("/sandboxes/{id}/logs?lines=99999999999999999999999999"))).await;
    assert_eq!(answer.0, 400, "{}", answer.1);
    assert_eq!(answer.1["code"], "bad_request");
    let answer = send(app.get(&format!("/sandboxes/{id}/logs?lines=18446744073709551615"))).await;
    assert_eq!(answer, (200, json!([])));
}

fn key(k: &str, tenant: &str, role: Role) -> ApiKey {
    ApiKey {
        key: Secret::new(k),
        tenant: tenant.to_string(),
        role,
    }
}

const ALPHA: &str = "sk_test_alpha";
const BETA: &str = "sk_test_beta";
const OPS: &str = "sk_test_operator";

/// A server with two user tenants and an operator.
async fn spawn_with_roles(configure: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::spawn_with(|s| {
        s.auth.keys = vec![
            key(ALPHA, "alpha", Role::User),
            key(BETA, "beta", Role::User),
            key(OPS, "ops", Role::Operator),
        ];
        configure(s);
    })
    .await
}

fn as_key(app: &TestApp, method: reqwest::Method, path: &str, k: &str) -> reqwest::RequestBuilder {
    app.client.request(method, app.url(path)).header("X-API-Key", k)
}

async fn metrics_of(app: &TestApp, k: &str) -> String {
    let resp = as_key(app, reqwest::Method::GET, "/metrics/prometheus", k)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_a_key_when_auth_is_on() {
    let app = spawn_with_roles(|_| {}).await;
    let anonymous = send(app.client.get(app.url("/metrics/prometheus"))).await;
    assert_error(&anonymous, 401, "unauthorized", "a valid X-API-Key header is required");
    let wrong = send(as_key(
        &app,
        reqwest::Method::GET,
        "/metrics/prometheus",
        "sk_wrong_key",
    ))
    .await;
    assert_error(&wrong, 401, "unauthorized", "a valid X-API-Key header is required");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_sees_only_its_own_tenants_metrics_and_an_operator_the_whole_server() {
    let app = spawn_with_roles(|_| {}).await;
    for (k, n) in [(ALPHA, 2), (BETA, 1)] {
        for _ in 0..n {
            let (status, body) = send(as_key(&app, reqwest::Method::POST, "/sandboxes", k).json(&json!({}))).await;
            assert_eq!(status, 201, "{body}");
        }
    }
    let alpha = metrics_of(&app, ALPHA).await;
    assert!(
        alpha.contains("stacyvm_sandboxes_created_total{provider=\"wasm\"} 2\n"),
        "{alpha}"
    );
    assert!(
        alpha.contains("stacyvm_sandboxes{provider=\"wasm\",state=\"running\"} 2\n"),
        "{alpha}"
    );
    let beta = metrics_of(&app, BETA).await;
    assert!(
        beta.contains("stacyvm_sandboxes_created_total{provider=\"wasm\"} 1\n"),
        "{beta}"
    );
    assert!(
        beta.contains("stacyvm_sandboxes{provider=\"wasm\",state=\"running\"} 1\n"),
        "{beta}"
    );
    let ops = metrics_of(&app, OPS).await;
    assert!(
        ops.contains("stacyvm_sandboxes_created_total{provider=\"wasm\"} 3\n"),
        "{ops}"
    );
    assert!(
        ops.contains("stacyvm_sandboxes{provider=\"wasm\",state=\"running\"} 3\n"),
        "{ops}"
    );
}

/// A docker daemon address nothing listens on: the provider is down and
/// its reason names the address.
const DEAD_DAEMON: &str = "unix:///nonexistent-stacyvm-test/docker.sock";

#[tokio::test(flavor = "multi_thread")]
async fn only_operators_read_why_a_provider_is_unavailable() {
    let app = spawn_with_roles(|s| s.docker.host = Some(DEAD_DAEMON.into())).await;
    let docker_reason = |v: &serde_json::Value| -> String {
        v.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "docker")
            .map(|p| p["reason"].as_str().unwrap().to_string())
            .unwrap()
    };
    let generic = "the docker provider is unavailable; an operator can see why";
    for k in [Some(ALPHA), None] {
        let rb = match k {
            Some(k) => as_key(&app, reqwest::Method::GET, "/providers", k),
            None => app.client.get(app.url("/providers")),
        };
        let (status, list) = send(rb).await;
        assert_eq!(status, 200);
        assert_eq!(docker_reason(&list), generic);
        let rb = match k {
            Some(k) => as_key(&app, reqwest::Method::GET, "/providers/docker", k),
            None => app.client.get(app.url("/providers/docker")),
        };
        let (status, one) = send(rb).await;
        assert_eq!(status, 200);
        assert_eq!(one["reason"], generic);
    }
    let (status, list) = send(as_key(&app, reqwest::Method::GET, "/providers", OPS)).await;
    assert_eq!(status, 200);
    assert!(
        docker_reason(&list).contains("/nonexistent-stacyvm-test/docker.sock"),
        "{list}"
    );
    let wrong = send(as_key(&app, reqwest::Method::GET, "/providers", "sk_wrong_key")).await;
    assert_error(&wrong, 401, "unauthorized", "a valid X-API-Key header is required");
    // Creating on the missing daemon says it is unavailable, not where it is.
    let create =
        send(as_key(&app, reqwest::Method::POST, "/sandboxes", ALPHA).json(&json!({"provider": "docker"}))).await;
    assert_error(
        &create,
        503,
        "unavailable",
        "the docker provider is unavailable; an operator can see why in GET /providers",
    );
}

/// Reads an SSE stream until `want` events of `kind` arrived; returns the
/// events and whether a "missed" comment came.
async fn read_until(resp: &mut reqwest::Response, want: usize) -> (Vec<serde_json::Value>, bool) {
    let mut buf = String::new();
    let mut events = vec![];
    let mut missed = false;
    while events.len() < want {
        let chunk = tokio::time::timeout(Duration::from_secs(20), resp.chunk())
            .await
            .expect("events arrive")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    events.push(serde_json::from_str(data).unwrap());
                } else if line.starts_with(": missed") {
                    missed = true;
                }
            }
        }
    }
    (events, missed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_noisy_tenant_does_not_make_another_tenants_subscriber_lose_events() {
    let app = spawn_with_roles(|_| {}).await;
    // Alpha listens but never reads; beta listens and reads late.
    let _alpha_stalled = as_key(&app, reqwest::Method::GET, "/events", ALPHA)
        .send()
        .await
        .unwrap();
    let mut beta = as_key(&app, reqwest::Method::GET, "/events", BETA)
        .send()
        .await
        .unwrap();
    let create = |k: &'static str| {
        let rb = as_key(&app, reqwest::Method::POST, "/sandboxes", k).json(&json!({}));
        async move {
            let (status, v) = send(rb).await;
            assert_eq!(status, 201, "{v}");
            v["id"].as_str().unwrap().to_string()
        }
    };
    let first = create(BETA).await;
    // 2 400 events of alpha's, more than twice a buffer.
    let flood = futures_util::future::join_all((0..8).map(|_| {
        let app = &app;
        async move {
            for _ in 0..150 {
                let (status, v) = send(as_key(app, reqwest::Method::POST, "/sandboxes", ALPHA).json(&json!({}))).await;
                assert_eq!(status, 201, "{v}");
                let id = v["id"].as_str().unwrap();
                let path = format!("/sandboxes/{id}");
                assert_eq!(send(as_key(app, reqwest::Method::DELETE, &path, ALPHA)).await.0, 200);
            }
        }
    }));
    flood.await;
    let second = create(BETA).await;
    let (events, missed) = read_until(&mut beta, 2).await;
    assert!(!missed, "beta's subscriber lost events");
    let ids: Vec<&str> = events.iter().map(|e| e["sandbox_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [first.as_str(), second.as_str()]);
    assert_eq!(events[0]["id"], 1);
    assert_eq!(events[1]["id"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_creates_never_pass_the_tenant_quota() {
    let app = TestApp::spawn_with(|s| s.sandbox.max_per_tenant = 2).await;
    let answers = futures_util::future::join_all((0..10).map(|_| send(app.post("/sandboxes").json(&json!({}))))).await;
    let created = answers.iter().filter(|a| a.0 == 201).count();
    assert_eq!(created, 2, "{answers:?}");
    for refused in answers.iter().filter(|a| a.0 != 201) {
        assert_error(
            refused,
            429,
            "resource_limit",
            "this tenant already has the maximum of 2 sandboxes",
        );
    }
    let (_, list) = send(app.get("/sandboxes")).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    // A destroyed sandbox gives its place back.
    let id = list[0]["id"].as_str().unwrap();
    assert_eq!(send(app.delete(&format!("/sandboxes/{id}"))).await.0, 200);
    app.create_wasm().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_message_over_the_body_limit_closes_the_socket_with_1009() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = TestApp::spawn_with(|s| s.http.body_limit_bytes = 4096).await;
    let id = app.create_wasm().await;
    // Under the limit: an ordinary session.
    let mut ws = ws_connect(&app, &id).await;
    ws_send(&mut ws, json!({"type": "start", "command": "echo small"})).await;
    assert_eq!(
        ws_next(&mut ws).await.unwrap(),
        json!({"type": "stdout", "data": "small\n"})
    );
    assert_eq!(ws_next(&mut ws).await.unwrap()["type"], "exit");
    // Over it: the server closes with "message too big".
    let mut ws = ws_connect(&app, &id).await;
    let big = json!({"type": "start", "command": format!("echo {}", "x".repeat(8192))});
    ws.send(Message::Text(big.to_string().into())).await.unwrap();
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the server closes the socket");
    let frame = close.expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), 1009);
    assert_eq!(frame.reason.as_str(), "a message is over the limit of 4096 bytes");
    // Stdin during a session obeys the same limit.
    let mut ws = ws_connect(&app, &id).await;
    ws_send(&mut ws, json!({"type": "start", "command": "cat", "timeout": "5s"})).await;
    ws_send(&mut ws, json!({"type": "stdin", "data": "y".repeat(8192)})).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the server closes the socket");
    assert_eq!(closed, Some(1009));
    assert_eq!(send(app.get("/health")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn setuid_setgid_and_sticky_modes_are_refused_by_the_files_api() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let f = |p: &str| format!("/sandboxes/{id}/files{p}");
    let refused = |mode: &str| {
        format!("mode {mode:?} sets setuid, setgid or sticky bits; only permission bits (at most 0777) are allowed")
    };
    let write = send(
        app.post(&f(""))
            .json(&json!({"path": "tool", "content": "x", "mode": "4755"})),
    )
    .await;
    assert_error(&write, 400, "bad_request", &refused("4755"));
    assert!(!app.sandbox_dir(&id).join("workspace/tool").exists());
    let write = send(
        app.post(&f(""))
            .json(&json!({"path": "tool", "content": "x", "mode": "0755"})),
    )
    .await;
    assert_eq!(write.0, 200, "{}", write.1);
    for mode in ["4755", "2755", "1777", "6777"] {
        let chmod = send(app.post(&f("/chmod")).json(&json!({"path": "tool", "mode": mode}))).await;
        assert_error(&chmod, 400, "bad_request", &refused(mode));
    }
    let on_host = std::fs::metadata(app.sandbox_dir(&id).join("workspace/tool")).unwrap();
    assert_eq!(on_host.permissions().mode() & 0o7777, 0o755);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_directory_and_its_sandboxes_are_private_to_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn().await;
    for dir in [app.data_dir.path().to_path_buf(), app.data_dir.path().join("sandboxes")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn glob_patterns_collapse_double_stars_and_are_bounded() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let f = |p: &str| format!("/sandboxes/{id}/files{p}");
    for path in ["a/x.py", "a/b/x.py", "a/b/c/x.py", "y.py"] {
        let write = send(app.post(&f("")).json(&json!({"path": path, "content": ""}))).await;
        assert_eq!(write.0, 200, "{}", write.1);
    }
    let glob = |pattern: String| send(app.get(&f("/glob")).query(&[("pattern", pattern)]));
    let expected = json!([
        "/workspace/a/b/c/x.py",
        "/workspace/a/b/x.py",
        "/workspace/a/x.py",
        "/workspace/y.py"
    ]);
    assert_eq!(glob("**/*.py".into()).await, (200, expected.clone()));
    assert_eq!(glob("**/**/**/**/*.py".into()).await, (200, expected.clone()));
    assert_eq!(glob(format!("{}*.py", "**/".repeat(300))).await, (200, expected));
    assert_error(
        &glob("a".repeat(1025)).await,
        400,
        "bad_request",
        "the pattern is longer than 1024 bytes",
    );
    assert_error(
        &glob("*/".repeat(33)).await,
        400,
        "bad_request",
        "the pattern has more than 32 components",
    );
    assert_error(
        &glob(format!("{}x", "*".repeat(300))).await,
        400,
        "bad_request",
        "a pattern component is longer than 255 bytes",
    );
    assert_error(
        &glob("a/../b".into()).await,
        400,
        "bad_request",
        "glob patterns may not contain ..",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adversarial_glob_over_many_long_names_answers_promptly() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    // 2 000 names of 200 'a's, written on the host side of the sandbox.
    let dir = app.sandbox_dir(&id).join("workspace/many");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..2000 {
        std::fs::write(dir.join(format!("{i:04}{}", "a".repeat(196))), "").unwrap();
    }
    let pattern = format!("many/{}b", "*a".repeat(120));
    let started = std::time::Instant::now();
    let answer = send(
        app.get(&format!("/sandboxes/{id}/files/glob"))
            .query(&[("pattern", pattern)]),
    )
    .await;
    assert_eq!(answer, (200, json!([])));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
