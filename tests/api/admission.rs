//! `POST /sandboxes/admission`: would this create be admitted now? The same
//! checks as a create, in the StacyVM SDK's shape, and nothing is created.

use serde_json::json;
use stacyvm::settings::TenantQuota;

use crate::helpers::{TestApp, assert_error, send};
use crate::ops::{ALPHA, BETA, as_key, four_keys, quota};

#[tokio::test]
async fn an_admissible_create_is_allowed_and_nothing_is_created() {
    let app = TestApp::spawn().await;
    let (status, decision) = send(app.post("/sandboxes/admission").json(&json!({"image": "python:3.14"}))).await;
    assert_eq!(status, 200, "{decision}");
    assert_eq!(
        decision,
        json!({
            "allowed": true, "queueable": false, "reason": "",
            "active_sandboxes": 0, "max_sandboxes": 10000,
            "active_owner_sandboxes": 0, "max_owner_sandboxes": 0,
            "max_ttl": "24h0m0s",
        })
    );
    let (_, list) = send(app.get("/sandboxes")).await;
    assert_eq!(list, json!([]));
    // An empty object is a create with every default.
    let (_, decision) = send(app.post("/sandboxes/admission").json(&json!({}))).await;
    assert_eq!(decision["allowed"], true);
}

#[tokio::test]
async fn a_create_that_would_be_refused_is_not_allowed_and_says_why() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"ttl": "48h"}), "ttl 48h0m0s is above the maximum of 24h0m0s"),
        (
            json!({"ttl": "soon"}),
            "invalid duration \"soon\": expected a number followed by a unit such as 30s",
        ),
        (
            json!({"image": "cobol:1"}),
            "unknown wasm image \"cobol:1\"; known images: ",
        ),
        (
            json!({"memory_mb": 9000}),
            "memory_mb 9000 is above the maximum of 8192",
        ),
        (json!({"memory_mb": 0}), "memory_mb must be positive"),
        (
            json!({"provider": "firecracker"}),
            "unknown provider \"firecracker\"; known providers: wasm, docker",
        ),
        (json!({"metadata": {"": "x"}}), "metadata keys must not be empty"),
    ];
    for (body, reason) in cases {
        let (status, decision) = send(app.post("/sandboxes/admission").json(&body)).await;
        assert_eq!(status, 200, "{body}: {decision}");
        assert_eq!(decision["allowed"], false, "{body}");
        assert_eq!(decision["queueable"], false, "{body}");
        let got = decision["reason"].as_str().unwrap();
        assert!(
            got.starts_with(reason),
            "{body}: {got:?} does not start with {reason:?}"
        );
        // A create of the same body is refused for the same reason.
        let (create_status, create) = send(app.post("/sandboxes").json(&body)).await;
        assert!(create_status >= 400, "{body}");
        assert_eq!(create["message"].as_str().unwrap(), got, "{body}");
    }
}

#[tokio::test]
async fn admission_counts_the_tenant_and_the_owner_against_the_quota() {
    let app = TestApp::spawn_with(|s| {
        four_keys(s);
        quota(
            s,
            "alpha",
            TenantQuota {
                max_sandboxes: Some(2),
                max_memory_mb: Some(1024),
                max_ttl: Some(std::time::Duration::from_secs(3600)),
                ..Default::default()
            },
        );
    })
    .await;
    let (alpha, beta) = (as_key(&app, ALPHA), as_key(&app, BETA));
    alpha.create(json!({"memory_mb": 256, "owner_id": "ann"})).await;
    beta.create(json!({})).await;
    let (_, decision) = send(
        alpha
            .post("/sandboxes/admission")
            .header("X-User-ID", "ann")
            .json(&json!({"memory_mb": 1024})),
    )
    .await;
    assert_eq!(
        decision,
        json!({
            "allowed": false, "queueable": false,
            "reason": "memory_mb 1024 would bring this tenant's sandboxes to 1280 MiB, above its quota of 1024 MiB",
            "active_sandboxes": 1, "max_sandboxes": 2,
            "active_owner_sandboxes": 1, "max_owner_sandboxes": 0,
            "max_ttl": "1h0m0s",
        })
    );
    let (_, decision) = send(alpha.post("/sandboxes/admission").json(&json!({"ttl": "2h"}))).await;
    assert_eq!(decision["reason"], "ttl 2h0m0s is above the maximum of 1h0m0s");
    alpha.create(json!({"memory_mb": 256})).await;
    let (_, decision) = send(alpha.post("/sandboxes/admission").json(&json!({}))).await;
    assert_eq!(decision["allowed"], false);
    assert_eq!(decision["reason"], "this tenant already has the maximum of 2 sandboxes");
    assert_eq!(decision["active_sandboxes"], 2);
    // Beta's view: its own sandbox only, and the server-wide limits.
    let (_, decision) = send(beta.post("/sandboxes/admission").json(&json!({}))).await;
    assert_eq!(
        (
            decision["allowed"].clone(),
            decision["active_sandboxes"].clone(),
            decision["max_sandboxes"].clone()
        ),
        (json!(true), json!(1), json!(10000))
    );
}

#[tokio::test]
async fn a_bad_admission_body_answers_400_and_a_missing_key_401() {
    let app = TestApp::spawn_with(four_keys).await;
    let alpha = as_key(&app, ALPHA);
    let malformed = send(alpha.post("/sandboxes/admission").body("{")).await;
    assert_eq!((malformed.0, malformed.1["code"].clone()), (400, json!("bad_request")));
    let wrong_type = send(alpha.post("/sandboxes/admission").json(&json!({"memory_mb": "lots"}))).await;
    assert_eq!(
        (wrong_type.0, wrong_type.1["code"].clone()),
        (400, json!("bad_request"))
    );
    let unknown = send(alpha.post("/sandboxes/admission").json(&json!({"template": "x"}))).await;
    assert_eq!(unknown.0, 400);
    assert!(
        unknown.1["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `template`"),
        "{}",
        unknown.1
    );
    let bad_owner = send(alpha.post("/sandboxes/admission").json(&json!({"owner_id": "a b"}))).await;
    assert_error(
        &bad_owner,
        400,
        "bad_request",
        "invalid owner_id: user id contains the forbidden character ' '",
    );
    assert_error(
        &send(app.client.post(app.url("/sandboxes/admission")).json(&json!({}))).await,
        401,
        "unauthorized",
        "a valid X-API-Key header is required",
    );
    let get = send(alpha.get("/sandboxes/admission")).await;
    assert_eq!(get.0, 405, "{}", get.1);
}
