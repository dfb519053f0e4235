//! The hardening of the HTTP layer and the sandbox service: numbers that
//! overflow, bounded globs, roles, tenant isolation of metrics, providers and
//! events, WebSocket message limits, the tenant quota under concurrency,
//! and file modes.

use serde_json::json;

use crate::helpers::{TestApp, assert_error, send};

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
