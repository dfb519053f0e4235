use serde_json::json;

use crate::helpers::{TestApp, assert_error, assert_error_contains, send};

#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_creates_execs_and_deletes_idempotently() {
    let app = TestApp::spawn().await;
    let (status, sb) = send(app.post("/sandboxes").json(&json!({
        "image": "python:3.14", "provider": "wasm", "metadata": {"purpose": "quickstart"}
    })))
    .await;
    assert_eq!(status, 201);
    let id = sb["id"].as_str().unwrap();
    assert_eq!(sb["state"], "running");
    assert_eq!(sb["provider"], "wasm");
    assert_eq!(sb["image"], "python:3.14");
    assert_eq!(sb["memory_mb"], 512);
    assert_eq!(sb["vcpus"], 1);
    assert_eq!(sb["metadata"], json!({"purpose": "quickstart"}));
    let (status, out) = app.exec(id, json!({"command": "python3 -c \"print(40 + 2)\""})).await;
    assert_eq!(status, 200);
    assert_eq!(out["stdout"], "42\n");
    assert_eq!(out["stderr"], "");
    assert_eq!(out["exit_code"], 0);
    assert!(out["duration"].as_str().unwrap().ends_with('s'));
    assert!(out["duration_ms"].as_f64().unwrap() > 0.0);
    for _ in 0..2 {
        let (status, body) = send(app.delete(&format!("/sandboxes/{id}"))).await;
        assert_eq!((status, body), (200, json!({"status": "destroyed"})));
    }
    assert_error(
        &send(app.get(&format!("/sandboxes/{id}"))).await,
        404,
        "not_found",
        &format!("sandbox {id} not found"),
    );
    assert!(!app.sandbox_dir(id).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn create_fills_defaults_and_expiry_from_the_ttl() {
    let app = TestApp::spawn().await;
    let (status, sb) = send(app.post("/sandboxes").json(&json!({"ttl": "1h30m"}))).await;
    assert_eq!(status, 201);
    let id = sb["id"].as_str().unwrap();
    assert!(id.starts_with("sb_") && id.len() >= 19, "{id}");
    assert!(
        id[3..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(sb["provider"], "wasm");
    assert_eq!(sb["image"], "python:3.14");
    let created = humantime::parse_rfc3339(sb["created_at"].as_str().unwrap()).unwrap();
    let expires = humantime::parse_rfc3339(sb["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires.duration_since(created).unwrap().as_secs(), 5400);
    assert!(sb["created_at"].as_str().unwrap().ends_with('Z'));
    let (_, got) = send(app.get(&format!("/sandboxes/{id}"))).await;
    assert_eq!(got, sb);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_rejects_bad_input_with_the_documented_codes() {
    let app = TestApp::spawn().await;
    let create = |body: serde_json::Value| send(app.post("/sandboxes").json(&body));
    assert_error(
        &create(json!({"ttl": "ten minutes"})).await,
        400,
        "bad_request",
        "invalid duration \"ten minutes\": expected a number followed by a unit such as 30s",
    );
    assert_error(
        &create(json!({"ttl": "0s"})).await,
        400,
        "bad_request",
        "invalid duration \"0s\": it must be greater than zero",
    );
    assert_error(
        &create(json!({"ttl": "25h"})).await,
        429,
        "resource_limit",
        "ttl 25h0m0s is above the maximum of 24h0m0s",
    );
    assert_error(
        &create(json!({"provider": "firecracker"})).await,
        400,
        "bad_request",
        "unknown provider \"firecracker\"; known providers: wasm, docker",
    );
    assert_error_contains(
        &create(json!({"provider": "wasm", "image": "ruby:3"})).await,
        400,
        "bad_request",
        "unknown wasm image \"ruby:3\"; known images: python:3.14, python:3, python, python3, python:3.12, python:3.15, python:data, quickjs",
    );
    assert_error_contains(
        &create(json!({"memory_mb": "lots"})).await,
        400,
        "bad_request",
        "invalid JSON body: invalid type",
    );
    assert_error_contains(
        &create(json!({"memory_mb": 999999})).await,
        429,
        "resource_limit",
        "memory_mb 999999 is above",
    );
    assert_error(
        &create(json!({"vcpus": 0})).await,
        400,
        "bad_request",
        "vcpus must be positive",
    );
    let raw = send(app.post("/sandboxes").body("{not json")).await;
    assert_error_contains(&raw, 400, "bad_request", "invalid JSON body");
    assert_eq!(
        app.get("/sandboxes")
            .send()
            .await
            .unwrap()
            .json::<Vec<serde_json::Value>>()
            .await
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn user_id_header_sets_the_owner_and_bad_ones_are_refused() {
    let app = TestApp::spawn().await;
    let (status, sb) = send(
        app.post("/sandboxes")
            .header("X-User-ID", "  user_123 ")
            .json(&json!({"owner_id": "other"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(sb["owner_id"], "user_123");
    let (_, sb2) = send(app.post("/sandboxes").json(&json!({"owner_id": "body_owner"}))).await;
    assert_eq!(sb2["owner_id"], "body_owner");
    for bad in ["a/b", "a\\b", &"x".repeat(129)] {
        let got = send(app.post("/sandboxes").header("X-User-ID", bad).json(&json!({}))).await;
        assert_eq!(got.0, 400, "{bad}");
        assert_eq!(got.1["code"], "bad_request");
    }
    let got = send(app.post("/sandboxes").header("X-User-ID", "a b").json(&json!({}))).await;
    assert_error(
        &got,
        400,
        "bad_request",
        "invalid X-User-ID: user id contains the forbidden character ' '",
    );
    let (_, list) = send(app.get("/sandboxes?owner_id=user_123")).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], sb["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_newest_first_and_filters() {
    let app = TestApp::spawn().await;
    let mut ids = vec![];
    for _ in 0..3 {
        ids.push(app.create_wasm().await);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (_, list) = send(app.get("/sandboxes")).await;
    let got: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.reverse();
    assert_eq!(got, ids);
    let (_, none) = send(app.get("/sandboxes?provider=docker")).await;
    assert_eq!(none, json!([]));
    let (_, running) = send(app.get("/sandboxes?state=running&provider=wasm")).await;
    assert_eq!(running.as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn extend_moves_expiry_to_now_plus_ttl() {
    let app = TestApp::spawn().await;
    let id = app.create_sandbox(json!({"ttl": "1m"})).await;
    let (status, sb) = send(app.post(&format!("/sandboxes/{id}/extend")).json(&json!({"ttl": "2h"}))).await;
    assert_eq!(status, 200);
    let expires = humantime::parse_rfc3339(sb["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.duration_since(std::time::SystemTime::now()).unwrap().as_secs();
    assert!((7190..=7200).contains(&left), "{left}");
    assert_error_contains(
        &send(
            app.post(&format!("/sandboxes/{id}/extend"))
                .json(&json!({"ttl": "1.5x"})),
        )
        .await,
        400,
        "bad_request",
        "invalid duration",
    );
    assert_error(
        &send(
            app.post(&format!("/sandboxes/{id}/extend"))
                .json(&json!({"ttl": "48h"})),
        )
        .await,
        429,
        "resource_limit",
        "ttl 48h0m0s is above the maximum of 24h0m0s",
    );
    assert_error(
        &send(
            app.post("/sandboxes/sb_00000000000000000000/extend")
                .json(&json!({"ttl": "1h"})),
        )
        .await,
        404,
        "not_found",
        "sandbox sb_00000000000000000000 not found",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_sandbox_is_reaped_with_its_directory() {
    let app = TestApp::spawn().await;
    let id = app.create_sandbox(json!({"ttl": "300ms"})).await;
    assert!(app.sandbox_dir(&id).is_dir());
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_error(
        &send(app.get(&format!("/sandboxes/{id}"))).await,
        404,
        "not_found",
        &format!("sandbox {id} not found"),
    );
    assert_error(
        &app.exec(&id, json!({"command": "python3 -c 'print(1)'"})).await,
        404,
        "not_found",
        &format!("sandbox {id} not found"),
    );
    assert!(!app.sandbox_dir(&id).exists());
    let (status, _) = send(app.delete(&format!("/sandboxes/{id}"))).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_are_required_and_tenants_are_isolated() {
    let app = TestApp::with_keys(&[("sk_test_alpha", "alpha"), ("sk_test_bravo", "bravo")]).await;
    assert_error(
        &send(app.client.get(app.url("/sandboxes"))).await,
        401,
        "unauthorized",
        "a valid X-API-Key header is required",
    );
    assert_error(
        &send(
            app.client
                .get(app.url("/sandboxes"))
                .header("X-API-Key", "sk_test_wrong"),
        )
        .await,
        401,
        "unauthorized",
        "a valid X-API-Key header is required",
    );
    let id = app.create_wasm().await;
    let bravo = |rb: reqwest::RequestBuilder| rb.header("X-API-Key", "sk_test_bravo");
    let not_found = format!("sandbox {id} not found");
    assert_error(
        &send(bravo(app.client.get(app.url(&format!("/sandboxes/{id}"))))).await,
        404,
        "not_found",
        &not_found,
    );
    assert_error(
        &send(
            bravo(app.client.post(app.url(&format!("/sandboxes/{id}/exec")))).json(&json!({"command": "python3 -V"})),
        )
        .await,
        404,
        "not_found",
        &not_found,
    );
    assert_error(
        &send(bravo(app.client.get(app.url(&format!("/sandboxes/{id}/files?path=/"))))).await,
        404,
        "not_found",
        &not_found,
    );
    let (_, list) = send(bravo(app.client.get(app.url("/sandboxes")))).await;
    assert_eq!(list, json!([]));
    // Another tenant's delete answers like a delete of nothing, and deletes nothing.
    let (status, _) = send(bravo(app.client.delete(app.url(&format!("/sandboxes/{id}"))))).await;
    assert_eq!(status, 200);
    let (status, _) = send(app.get(&format!("/sandboxes/{id}"))).await;
    assert_eq!(status, 200);
    // Health stays open for probes.
    let (status, _) = send(app.client.get(app.url("/health"))).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_ready_live_and_providers_are_real() {
    let app = TestApp::spawn().await;
    let (status, h) = send(app.get("/health")).await;
    assert_eq!(status, 200);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["uptime"].as_str().unwrap().ends_with('s'));
    assert_eq!(send(app.get("/live")).await.0, 200);
    assert_eq!(send(app.get("/ready")).await, (200, json!({"status": "ready"})));
    let (_, providers) = send(app.get("/providers")).await;
    let wasm = &providers[0];
    assert_eq!(wasm["name"], "wasm");
    assert_eq!(wasm["available"], true);
    assert_eq!(wasm["default"], true);
    assert_eq!(
        wasm["images"],
        json!([
            "python:3.14",
            "python:3",
            "python",
            "python3",
            "python:3.12",
            "python:3.15",
            "python:data",
            "quickjs",
            "quickjs:0.11",
            "javascript",
            "js"
        ])
    );
    let docker = &providers[1];
    assert_eq!(docker["name"], "docker");
    assert_eq!(docker["default"], false);
    // Whether a daemon runs here is the docker tests' business; either way
    // the entry says so, with a reason when it is unavailable.
    assert_eq!(docker["reason"].is_string(), docker["available"] == false, "{docker}");
    assert_eq!(send(app.get("/providers/wasm")).await.1, *wasm);
    assert_error(
        &send(app.get("/providers/xen")).await,
        404,
        "not_found",
        "provider xen not found",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_methods_and_oversized_bodies_get_json_errors() {
    let app = TestApp::spawn_with(|s| s.http.body_limit_bytes = 4096).await;
    assert_error(
        &send(app.get("/nope")).await,
        404,
        "not_found",
        "no route for GET /api/v1/nope",
    );
    assert_error(
        &send(app.put("/sandboxes")).await,
        405,
        "method_not_allowed",
        "PUT is not allowed on /api/v1/sandboxes",
    );
    let big = json!({"metadata": {"k": "x".repeat(10_000)}});
    assert_error(
        &send(app.post("/sandboxes").json(&big)).await,
        413,
        "payload_too_large",
        "the request body is over the configured limit",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_record_the_exec_history_and_stats_report_disk_use() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    app.run(&id, "python3 -c 'print(1)'").await;
    app.run(&id, "python3 -c 'import sys; sys.exit(3)'").await;
    let (status, logs) = send(app.get(&format!("/sandboxes/{id}/logs?lines=1"))).await;
    assert_eq!(status, 200);
    let lines = logs.as_array().unwrap();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0]
            .as_str()
            .unwrap()
            .contains("exec python3 -c 'import sys; sys.exit(3)': exit 3"),
        "{logs}"
    );
    let (status, stats) = send(app.get(&format!("/sandboxes/{id}/stats"))).await;
    assert_eq!(status, 200);
    assert_eq!(stats["supported"], true);
    assert_eq!(stats["mem_limit_bytes"], 512 << 20);
    // The two directories a sandbox starts with, a block each.
    assert_eq!(stats["disk_bytes"], 8192);
}

#[tokio::test(flavor = "multi_thread")]
async fn preview_is_unsupported_on_wasm() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_error(
        &send(app.get(&format!("/sandboxes/{id}/preview/8080/index.html"))).await,
        422,
        "unsupported",
        "preview is not supported by the wasm provider: its sandboxes have no network",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_metrics_count_sandboxes_execs_and_limit_kills() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    app.run(&id, "python3 -c 'print(1)'").await;
    let (status, _) = app
        .exec(
            &id,
            json!({"command": "python3 -c 'while True: pass'", "timeout": "200ms"}),
        )
        .await;
    assert_eq!(status, 408);
    let resp = app.get("/metrics/prometheus").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4");
    let text = resp.text().await.unwrap();
    for line in [
        "stacyvm_sandboxes{provider=\"wasm\",state=\"running\"} 1",
        "stacyvm_sandboxes_created_total{provider=\"wasm\"} 1",
        "stacyvm_execs_total{provider=\"wasm\",outcome=\"completed\"} 1",
        "stacyvm_execs_total{provider=\"wasm\",outcome=\"timeout\"} 1",
        "stacyvm_limit_kills_total{kind=\"timeout\"} 1",
        "stacyvm_exec_duration_seconds_count{provider=\"wasm\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_lists_exactly_routes_the_server_serves() {
    let app = TestApp::spawn().await;
    let (status, doc) = send(app.get("/openapi.json")).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let id = app.create_wasm().await;
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 37);
    let mut deletes = vec![];
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", &id)
            .replace("{port}", "8080")
            .replace("{rest}", "index.html")
            .replace("{ctx}", "ctx_missing")
            .replace("{name}", "wasm");
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            if method == "delete" {
                deletes.push(concrete.clone());
                continue;
            }
            let rb = match method {
                "get" => app.get(&concrete),
                "post" => app.post(&concrete).json(&json!({})),
                _ => app.put(&concrete).body("x"),
            };
            let resp = rb.send().await.unwrap();
            let code = resp.status().as_u16();
            if code == 404 {
                let body: serde_json::Value = resp.json().await.unwrap();
                assert!(
                    !body["message"].as_str().unwrap().starts_with("no route"),
                    "{method} {path} is not served"
                );
            }
            assert_ne!(code, 405, "{method} {path} is not served");
        }
    }
    for path in deletes {
        assert_ne!(send(app.delete(&path)).await.0, 405, "delete {path}");
    }
}
