//! `POST /providers/test`: each provider's health as the StacyVM SDK's
//! `ProviderManager.test()` reads it.

use serde_json::json;

use crate::helpers::{TestApp, assert_error, send};

#[tokio::test]
async fn provider_test_answers_each_providers_health_as_get_providers_sees_it() {
    let app = TestApp::spawn_with(|s| s.docker.host = Some("unix:///nonexistent/docker.sock".into())).await;
    let (status, health) = send(app.post("/providers/test")).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health, json!({"wasm": true, "docker": false}));
    // The static route wins over `/providers/{name}` only for POST.
    let (status, listed) = send(app.get("/providers/test")).await;
    assert_eq!(status, 405, "{listed}");
}

#[tokio::test]
async fn provider_test_needs_a_key_when_keys_are_configured() {
    let app = TestApp::with_keys(&[("sk_test_provider_health", "alpha")]).await;
    let anonymous = send(reqwest::Client::new().post(app.url("/providers/test"))).await;
    assert_error(&anonymous, 401, "unauthorized", "a valid X-API-Key header is required");
    let (status, health) = send(app.post("/providers/test")).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["wasm"], true);
}
