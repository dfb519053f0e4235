//! Attacks on code contexts: a guest that replaces the driver's reporter or
//! makes its report huge, that holds every file it can open, that the
//! client abandons mid-cell, and a tenant that asks for too many contexts.

use serde_json::{Value, json};

use crate::helpers::{TestApp, send};
use crate::support::assert_up;

async fn context(app: &TestApp, sb: &str) -> String {
    let (status, v) = send(
        app.post(&format!("/sandboxes/{sb}/contexts"))
            .json(&json!({"language": "javascript"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn run(app: &TestApp, sb: &str, ctx: &str, code: &str) -> (u16, Value) {
    send(
        app.post(&format!("/sandboxes/{sb}/contexts/{ctx}/run"))
            .json(&json!({"code": code})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_replaces_or_inflates_the_reporter_gets_an_error_not_the_host_s_memory() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let ctx = context(&app, &sb).await;
    // A 64 MiB report: the host reads at most 16 MiB of it.
    let (status, v) = run(
        &app,
        &sb,
        &ctx,
        "globalThis.__stacyvm_report = () => 'x'.repeat(64 << 20); 1",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["error"]["value"], "the cell's result is too large to report");
    let (_, v) = run(&app, &sb, &ctx, "globalThis.__stacyvm_report = () => 'not json'; 1").await;
    assert_eq!(v["error"]["value"], "the cell's result could not be read");
    // The prelude's function declaration cannot be deleted (it is not
    // configurable), but it can be overwritten with something that is not a
    // function.
    let (_, v) = run(&app, &sb, &ctx, "globalThis.__stacyvm_report = undefined; 1").await;
    assert_eq!(
        v["error"]["value"],
        "the context's result reporter (__stacyvm_report) was removed or replaced"
    );
    assert_eq!(v["error"]["name"], "StacyvmError");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_opens_every_file_it_can_is_stopped_at_the_limit_and_still_forks() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    send(
        app.post(&format!("/sandboxes/{sb}/files"))
            .json(&json!({"path": "f.txt", "content": "abc"})),
    )
    .await;
    let ctx = context(&app, &sb).await;
    let (status, v) = run(
        &app,
        &sb,
        &ctx,
        "var held = []; for (let i = 0; i < 5000; i++) { const f = std.open('f.txt', 'r'); if (!f) break; held.push(f) } held.length",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let opened: u64 = v["result"]["text/plain"].as_str().unwrap().parse().unwrap();
    assert!(opened <= 1024, "{opened} files were opened");
    let (status, forked) = send(app.post(&format!("/sandboxes/{sb}/contexts/{ctx}/fork"))).await;
    assert_eq!(status, 201, "{forked}");
    let copy = forked["id"].as_str().unwrap();
    let (status, v) = run(&app, &sb, copy, "[held.length, held[held.length - 1].readAsString()]").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["application/json"], json!([opened, "abc"]));
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_mid_cell_stops_it_and_the_context_is_rolled_back_not_lost() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let ctx = context(&app, &sb).await;
    run(&app, &sb, &ctx, "var value = 'before'").await;
    let request = app
        .post(&format!("/sandboxes/{sb}/contexts/{ctx}/run"))
        .json(&json!({"code": "value = 'changed'; for (;;) {}", "timeout": "60s"}))
        .send();
    // Hang up after a moment: the request future is dropped.
    let hung_up = tokio::time::timeout(std::time::Duration::from_millis(300), request).await;
    assert!(hung_up.is_err(), "the endless cell answered");
    let started = std::time::Instant::now();
    let (status, v) = run(&app, &sb, &ctx, "value").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["text/plain"], "\"before\"");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_cannot_hold_more_contexts_than_its_limit_and_deep_recursion_is_an_exception() {
    let app = TestApp::spawn_with(|s| s.contexts.max_per_sandbox = 3).await;
    let sb = app.create_wasm().await;
    let first = context(&app, &sb).await;
    context(&app, &sb).await;
    context(&app, &sb).await;
    for answer in [
        send(
            app.post(&format!("/sandboxes/{sb}/contexts"))
                .json(&json!({"language": "javascript"})),
        )
        .await,
        send(app.post(&format!("/sandboxes/{sb}/contexts/{first}/fork"))).await,
    ] {
        assert_eq!(answer.0, 429, "{}", answer.1);
        assert_eq!(
            answer.1["message"],
            "this sandbox already has the maximum of 3 contexts"
        );
    }
    let (status, v) = run(&app, &sb, &first, "function down(n) { return down(n + 1) + 1 } down(0)").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["error"]["name"], "RangeError");
    let long = "1;".repeat(3 << 20);
    let (status, v) = run(&app, &sb, &first, &long).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["message"], "code is longer than 4194304 bytes");
    assert_up(&app).await;
}
