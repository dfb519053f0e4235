//! `GET /events`: live server-sent events, per tenant.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, send};

/// Reads SSE `data:` payloads until `count` have arrived.
async fn read_events(resp: &mut reqwest::Response, count: usize) -> Vec<Value> {
    let mut buf = String::new();
    let mut out = vec![];
    while out.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("events arrive")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    out.push(serde_json::from_str(data).unwrap());
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn events_report_the_life_of_a_sandbox_to_its_tenant_only() {
    let app = TestApp::with_keys(&[("sk_test_alpha", "alpha"), ("sk_test_bravo", "bravo")]).await;
    let mut alpha = app.get("/events").send().await.unwrap();
    assert_eq!(alpha.headers()["content-type"], "text/event-stream");
    let mut bravo = app
        .client
        .get(app.url("/events"))
        .header("X-API-Key", "sk_test_bravo")
        .send()
        .await
        .unwrap();

    let id = app.create_wasm().await;
    app.run(&id, "python3 -c 'print(1)'").await;
    let (status, _) = app
        .exec(
            &id,
            json!({"command": "python3 -c 'while True: pass'", "timeout": "300ms"}),
        )
        .await;
    assert_eq!(status, 408);
    assert_eq!(send(app.delete(&format!("/sandboxes/{id}"))).await.0, 200);

    let events = read_events(&mut alpha, 4).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["sandbox.created", "exec.completed", "exec.timeout", "sandbox.destroyed"]
    );
    assert!(events.iter().all(|e| e["sandbox_id"] == id.as_str()));
    assert_eq!(events[1]["data"]["exit_code"], 0);
    assert!(events[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(events[0]["id"].as_u64().unwrap() < events[3]["id"].as_u64().unwrap());

    // bravo sees its own sandbox and nothing of alpha's.
    let (status, b) = send(
        app.client
            .post(app.url("/sandboxes"))
            .header("X-API-Key", "sk_test_bravo")
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 201);
    let seen = read_events(&mut bravo, 1).await;
    assert_eq!(seen[0]["type"], "sandbox.created");
    assert_eq!(seen[0]["sandbox_id"], b["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_never_reads_does_not_slow_the_server() {
    let app = TestApp::spawn().await;
    let _stalled = app.get("/events").send().await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..1500 {
        app.create_wasm().await;
    }
    // 1500 creates take well under a second here; a blocked publisher
    // would hang instead.
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert_eq!(send(app.get("/health")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_sandbox_is_announced() {
    let app = TestApp::spawn().await;
    let mut sub = app.get("/events").send().await.unwrap();
    let id = app.create_sandbox(json!({"ttl": "200ms"})).await;
    let events = read_events(&mut sub, 2).await;
    assert_eq!(events[1]["type"], "sandbox.expired");
    assert_eq!(events[1]["sandbox_id"], id.as_str());
}
