//! What every hostile test asserts after its attack.

use serde_json::Value;

use crate::helpers::{TestApp, send};

/// The server still answers `/health`, promptly.
pub async fn assert_up(app: &TestApp) {
    let health = tokio::time::timeout(std::time::Duration::from_secs(10), send(app.get("/health")))
        .await
        .expect("the server answers /health within 10s after the attack");
    assert_eq!(
        health.0, 200,
        "the server is not healthy after the attack: {}",
        health.1
    );
}

/// The answer refused the attack (a 4xx) or ran it to a failure (a 200
/// with a non-zero exit); never a 5xx, never a success.
pub fn assert_refused_or_failed(answer: &(u16, Value)) {
    let (status, body) = answer;
    match status {
        400..=499 => assert!(body["code"].is_string(), "a 4xx without an error code: {body}"),
        200 => assert_ne!(body["exit_code"], 0, "the attack succeeded: {body}"),
        _ => panic!("the attack got {status}: {body}"),
    }
}
