//! The audit log: every create, destroy, exec, file change, template change
//! and failed login is kept with its tenant, key id (never the key), owner,
//! sandbox and outcome; `GET /audit` shows a tenant its own, an operator all.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, send};
use crate::ops::{ALPHA, BETA, OPS, as_key, four_keys};

fn key_id(key: &str) -> String {
    stacyvm::sandbox::audit::key_id(key.as_bytes())
}

fn actions(entries: &Value) -> Vec<String> {
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_action_is_recorded_with_who_what_and_how_it_ended() {
    let app = TestApp::spawn_with(four_keys).await;
    let alpha = as_key(&app, ALPHA);
    let (status, sb) = send(alpha.post("/sandboxes").header("X-User-ID", "ann").json(&json!({}))).await;
    assert_eq!(status, 201);
    let id = sb["id"].as_str().unwrap().to_string();
    let exec = send(
        alpha
            .post(&format!("/sandboxes/{id}/exec"))
            .json(&json!({"command": "echo hi; exit 4"})),
    )
    .await;
    assert_eq!(exec.0, 200);
    let write = alpha
        .post(&format!("/sandboxes/{id}/files"))
        .json(&json!({"path": "a.txt", "content": "abc"}));
    assert_eq!(send(write).await.0, 200);
    assert_eq!(
        send(alpha.delete(&format!("/sandboxes/{id}/files?path=a.txt"))).await.0,
        200
    );
    assert_eq!(
        send(alpha.delete(&format!("/sandboxes/{id}/files?path=missing")))
            .await
            .0,
        404
    );
    assert_eq!(send(alpha.post("/templates").json(&json!({"name": "t"}))).await.0, 201);
    assert_eq!(send(alpha.delete("/templates/t")).await.0, 200);
    assert_eq!(send(alpha.delete(&format!("/sandboxes/{id}"))).await.0, 200);
    let refused = send(alpha.post("/sandboxes").json(&json!({"ttl": "99h"}))).await;
    assert_eq!(refused.0, 429);

    let (status, entries) = send(alpha.get("/audit")).await;
    assert_eq!(status, 200, "{entries}");
    assert_eq!(
        actions(&entries),
        [
            "sandbox.create",
            "sandbox.destroy",
            "template.delete",
            "template.save",
            "file.delete",
            "file.delete",
            "file.write",
            "exec",
            "sandbox.create",
        ]
    );
    let e = entries.as_array().unwrap();
    let alpha_key = key_id(ALPHA);
    for entry in e {
        assert_eq!(entry["tenant"], "alpha", "{entry}");
        assert_eq!(entry["key_id"], alpha_key.as_str(), "{entry}");
        assert!(
            humantime::parse_rfc3339(entry["time"].as_str().unwrap()).is_ok(),
            "{entry}"
        );
    }
    let created = &e[8];
    assert_eq!(
        (
            &created["sandbox_id"],
            &created["owner_id"],
            &created["subject"],
            &created["outcome"]
        ),
        (&json!(id), &json!("ann"), &json!("wasm python:3.14"), &json!("ok"))
    );
    let exec = &e[7];
    assert_eq!(exec["subject"], "echo hi; exit 4");
    assert_eq!(exec["outcome"], "exit 4");
    assert_eq!(exec["owner_id"], "ann");
    assert_eq!(e[6]["subject"], "a.txt (3 bytes)");
    assert_eq!(e[5]["outcome"], "ok");
    assert_eq!(e[4]["outcome"], "not_found: file /workspace/missing not found");
    assert_eq!(e[3]["subject"], "t");
    assert_eq!(
        e[0]["outcome"],
        "resource_limit: ttl 99h0m0s is above the maximum of 24h0m0s"
    );
    assert_eq!(e[0]["sandbox_id"], Value::Null);

    // The filters: one sandbox, a time, a limit.
    let (_, one) = send(alpha.get(&format!("/audit?sandbox_id={id}&limit=2"))).await;
    assert_eq!(actions(&one), ["sandbox.destroy", "file.delete"]);
    let (_, none) = send(alpha.get("/audit?since=2999-01-01T00:00:00Z")).await;
    assert_eq!(none, json!([]));
    let (_, all) = send(alpha.get("/audit?since=2000-01-01T00:00:00Z")).await;
    assert_eq!(all.as_array().unwrap().len(), 9);
}

#[tokio::test]
async fn failed_logins_are_recorded_for_operators_and_keys_never_reach_the_log() {
    let app = TestApp::spawn_with(four_keys).await;
    let wrong = "sk_test_wrong_key_123";
    let denied = send(app.client.get(app.url("/sandboxes")).header("X-API-Key", wrong)).await;
    assert_eq!(denied.0, 401);
    assert_eq!(send(app.client.post(app.url("/sandboxes"))).await.0, 401);
    as_key(&app, ALPHA).create(json!({})).await;
    as_key(&app, BETA).create(json!({})).await;

    // A user sees its own tenant only: no failed logins, no other tenant.
    let (_, mine) = send(as_key(&app, ALPHA).get("/audit")).await;
    assert_eq!(actions(&mine), ["sandbox.create"]);
    assert_error(
        &send(as_key(&app, ALPHA).get("/audit?tenant=beta")).await,
        403,
        "forbidden",
        "only an operator key may read another tenant's audit log",
    );
    // An operator sees everything, or one tenant.
    let (_, all) = send(as_key(&app, OPS).get("/audit")).await;
    assert_eq!(
        actions(&all),
        ["sandbox.create", "sandbox.create", "auth.failure", "auth.failure"]
    );
    let failures: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "auth.failure")
        .collect();
    assert_eq!(failures[0]["subject"], "POST /api/v1/sandboxes");
    assert_eq!(failures[0]["outcome"], "unauthorized: no API key was sent");
    assert_eq!(failures[0]["key_id"], Value::Null);
    assert_eq!(failures[1]["subject"], "GET /api/v1/sandboxes");
    assert_eq!(failures[1]["outcome"], "unauthorized: the API key is not valid");
    assert_eq!(failures[1]["key_id"], key_id(wrong).as_str());
    assert_eq!(failures[1]["tenant"], Value::Null);
    let (_, beta) = send(as_key(&app, OPS).get("/audit?tenant=beta")).await;
    assert_eq!(beta.as_array().unwrap().len(), 1);
    assert_eq!(beta[0]["key_id"], key_id(BETA).as_str());

    // No key, right or wrong, is in the log's file.
    let db = std::fs::read(app.data_dir.path().join("audit.db")).unwrap();
    let wal = std::fs::read(app.data_dir.path().join("audit.db-wal")).unwrap_or_default();
    for key in [ALPHA, BETA, OPS, wrong] {
        for bytes in [&db, &wal] {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "{key} is in the audit log"
            );
        }
    }
}

#[tokio::test]
async fn bad_audit_queries_answer_400() {
    let app = TestApp::spawn_with(four_keys).await;
    let alpha = as_key(&app, ALPHA);
    assert_error(
        &send(alpha.get("/audit?limit=0")).await,
        400,
        "bad_request",
        "limit must be between 1 and 1000",
    );
    assert_error(
        &send(alpha.get("/audit?limit=1001")).await,
        400,
        "bad_request",
        "limit must be between 1 and 1000",
    );
    let bad_since = send(alpha.get("/audit?since=yesterday")).await;
    assert_eq!((bad_since.0, bad_since.1["code"].clone()), (400, json!("bad_request")));
    assert!(
        bad_since.1["message"]
            .as_str()
            .unwrap()
            .starts_with("since \"yesterday\" is not an RFC 3339 time such as 2026-01-31T12:00:00Z"),
        "{}",
        bad_since.1
    );
    let unknown = send(alpha.get("/audit?sandbox=x")).await;
    assert_eq!((unknown.0, unknown.1["code"].clone()), (400, json!("bad_request")));
    assert_error(
        &send(app.client.get(app.url("/audit"))).await,
        401,
        "unauthorized",
        "a valid X-API-Key header is required",
    );
}

#[test]
fn the_audit_retention_comes_from_the_file_or_the_environment_and_is_validated() {
    let mut s = stacyvm::settings::Settings::from_toml("[audit]\nretention = \"168h\"\nmax_entries = 5000\n").unwrap();
    assert_eq!(s.audit.retention, std::time::Duration::from_secs(168 * 3600));
    assert_eq!(s.audit.max_entries, 5000);
    s.apply_env(|n| (n == "STACYVM_AUDIT_RETENTION").then(|| "24h".into()))
        .unwrap();
    assert_eq!(s.audit.retention, std::time::Duration::from_secs(24 * 3600));
    s.validate().unwrap();
    s.audit.retention = std::time::Duration::ZERO;
    assert_eq!(
        s.validate().unwrap_err().to_string(),
        "audit.retention must be at least 1s"
    );
    let defaults = stacyvm::settings::Settings::default();
    assert_eq!(defaults.audit.retention, std::time::Duration::from_secs(30 * 24 * 3600));
}
