//! Per-tenant quotas: sandboxes, total memory, total disk, execs per minute
//! (429 with Retry-After), TTL and exec timeout; `GET /quotas/summary` in
//! the SDK's shape and `GET /quotas/usage`.

use std::time::Duration;

use serde_json::json;
use stacyvm::settings::{Settings, TenantQuota};

use crate::helpers::{TestApp, assert_error, send};
use crate::ops::{ALPHA, BETA, OPS, as_key, four_keys, quota};

fn alpha_quota(s: &mut Settings) {
    four_keys(s);
    quota(
        s,
        "alpha",
        TenantQuota {
            max_sandboxes: Some(3),
            max_memory_mb: Some(768),
            max_execs_per_minute: Some(2),
            max_disk_mb: Some(1024),
            max_ttl: Some(Duration::from_secs(600)),
            max_exec_timeout: Some(Duration::from_secs(5)),
        },
    );
    s.sandbox.disk_quota_mb = 256;
}

#[tokio::test]
async fn memory_disk_and_count_quotas_refuse_the_create_that_would_pass_them() {
    let app = TestApp::spawn_with(alpha_quota).await;
    let (alpha, beta) = (as_key(&app, ALPHA), as_key(&app, BETA));
    alpha.create(json!({"memory_mb": 512})).await;
    assert_error(
        &send(alpha.post("/sandboxes").json(&json!({"memory_mb": 512}))).await,
        429,
        "resource_limit",
        "memory_mb 512 would bring this tenant's sandboxes to 1024 MiB, above its quota of 768 MiB",
    );
    alpha.create(json!({"memory_mb": 128})).await;
    alpha.create(json!({"memory_mb": 128})).await;
    // Three sandboxes of 256 MiB of disk each is 768; a fourth is over the count first.
    assert_error(
        &send(alpha.post("/sandboxes").json(&json!({"memory_mb": 1}))).await,
        429,
        "resource_limit",
        "this tenant already has the maximum of 3 sandboxes",
    );
    // Beta has no quota of its own: the server-wide limits apply.
    for _ in 0..4 {
        beta.create(json!({"memory_mb": 512})).await;
    }
    let (status, usage) = send(alpha.get("/quotas/usage")).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(
        usage,
        json!({
            "tenant": "alpha", "configured": true,
            "sandboxes": {"used": 3, "limit": 3},
            "memory_mb": {"used": 768, "limit": 768},
            "disk_mb": {"used": 768, "limit": 1024},
            "execs_per_minute": {"limit": 2, "available": 2},
            "max_ttl": "10m0s", "max_exec_timeout": "5s",
        })
    );
    let (_, usage) = send(beta.get("/quotas/usage")).await;
    assert_eq!(
        usage,
        json!({
            "tenant": "beta", "configured": false,
            "sandboxes": {"used": 4, "limit": 10000},
            "memory_mb": {"used": 2048, "limit": null},
            "disk_mb": {"used": 1024, "limit": null},
            "execs_per_minute": {"limit": null, "available": null},
            "max_ttl": "24h0m0s", "max_exec_timeout": "10m0s",
        })
    );
}

#[tokio::test]
async fn the_disk_quota_counts_each_sandboxs_reservation() {
    let app = TestApp::spawn_with(|s| {
        four_keys(s);
        quota(
            s,
            "alpha",
            TenantQuota {
                max_disk_mb: Some(600),
                ..Default::default()
            },
        );
        s.sandbox.disk_quota_mb = 256;
    })
    .await;
    let alpha = as_key(&app, ALPHA);
    let first = alpha.create(json!({})).await;
    alpha.create(json!({})).await;
    assert_error(
        &send(alpha.post("/sandboxes").json(&json!({}))).await,
        429,
        "resource_limit",
        "a sandbox reserves 256 MiB of disk, which would bring this tenant's sandboxes to 768 MiB, above its quota of 600 MiB",
    );
    assert_eq!(send(alpha.delete(&format!("/sandboxes/{first}"))).await.0, 200);
    alpha.create(json!({})).await;
}

#[tokio::test]
async fn execs_over_the_rate_answer_429_with_retry_after_and_other_tenants_go_on() {
    let app = TestApp::spawn_with(alpha_quota).await;
    let (alpha, beta) = (as_key(&app, ALPHA), as_key(&app, BETA));
    let id = alpha.create(json!({})).await;
    let exec = |body: serde_json::Value| alpha.post(&format!("/sandboxes/{id}/exec")).json(&body);
    assert_eq!(send(exec(json!({"command": "echo 1"}))).await.0, 200);
    // A streamed exec counts too.
    let streamed = exec(json!({"command": "echo 2", "stream": true})).send().await.unwrap();
    assert_eq!(streamed.status(), 200);
    streamed.text().await.unwrap();
    let refused = exec(json!({"command": "echo 3"})).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "Retry-After: {retry}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "resource_limit");
    assert_eq!(
        body["message"],
        format!("this tenant may start 2 execs a minute; try again in {retry} s")
    );
    // The refused exec did not run.
    let (_, logs) = send(alpha.get(&format!("/sandboxes/{id}/logs"))).await;
    assert_eq!(logs.as_array().unwrap().len(), 2, "{logs}");
    let (_, usage) = send(alpha.get("/quotas/usage")).await;
    assert_eq!(usage["execs_per_minute"], json!({"limit": 2, "available": 0}));
    // Beta has no rate.
    let other = beta.create(json!({})).await;
    for _ in 0..5 {
        let (status, _) = send(
            beta.post(&format!("/sandboxes/{other}/exec"))
                .json(&json!({"command": "true"})),
        )
        .await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn a_tenant_ttl_and_timeout_quota_replaces_the_server_maximum() {
    let app = TestApp::spawn_with(alpha_quota).await;
    let (alpha, beta) = (as_key(&app, ALPHA), as_key(&app, BETA));
    assert_error(
        &send(alpha.post("/sandboxes").json(&json!({"ttl": "1h"}))).await,
        429,
        "resource_limit",
        "ttl 1h0m0s is above the maximum of 10m0s",
    );
    // No TTL: the default (30m) is capped at the tenant's maximum.
    let (_, sb) = send(alpha.post("/sandboxes").json(&json!({}))).await;
    let created = humantime::parse_rfc3339(sb["created_at"].as_str().unwrap()).unwrap();
    let expires = humantime::parse_rfc3339(sb["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires.duration_since(created).unwrap(), Duration::from_secs(600));
    let id = sb["id"].as_str().unwrap();
    assert_error(
        &send(
            alpha
                .post(&format!("/sandboxes/{id}/extend"))
                .json(&json!({"ttl": "11m"})),
        )
        .await,
        429,
        "resource_limit",
        "ttl 11m0s is above the maximum of 10m0s",
    );
    assert_error(
        &send(
            alpha
                .post(&format!("/sandboxes/{id}/exec"))
                .json(&json!({"command": "true", "timeout": "6s"})),
        )
        .await,
        429,
        "resource_limit",
        "timeout 6s is above the maximum of 5s",
    );
    beta.create(json!({"ttl": "1h"})).await;
}

#[tokio::test]
async fn the_quota_summary_has_the_sdks_shape_and_operators_see_every_tenant() {
    let app = TestApp::spawn_with(|s| {
        alpha_quota(s);
        quota(
            s,
            "beta",
            TenantQuota {
                max_sandboxes: Some(5),
                ..Default::default()
            },
        );
    })
    .await;
    let (status, summary) = send(as_key(&app, ALPHA).get("/quotas/summary")).await;
    assert_eq!(status, 200);
    assert_eq!(
        summary,
        json!({"total": 1, "with_max_sandboxes": 1, "with_max_ttl": 1, "with_max_exec_timeout": 1})
    );
    let (_, summary) = send(as_key(&app, BETA).get("/quotas/summary")).await;
    assert_eq!(
        summary,
        json!({"total": 1, "with_max_sandboxes": 1, "with_max_ttl": 0, "with_max_exec_timeout": 0})
    );
    let (_, summary) = send(as_key(&app, OPS).get("/quotas/summary")).await;
    assert_eq!(
        summary,
        json!({"total": 2, "with_max_sandboxes": 2, "with_max_ttl": 1, "with_max_exec_timeout": 1})
    );
    // Usage of another tenant: operators only.
    assert_error(
        &send(as_key(&app, BETA).get("/quotas/usage?tenant=alpha")).await,
        403,
        "forbidden",
        "only an operator key may read the quota usage of another tenant",
    );
    let (status, usage) = send(as_key(&app, OPS).get("/quotas/usage?tenant=alpha")).await;
    assert_eq!((status, usage["tenant"].clone()), (200, json!("alpha")));
    let bad = send(as_key(&app, OPS).get("/quotas/usage?tennant=alpha")).await;
    assert_eq!((bad.0, bad.1["code"].clone()), (400, json!("bad_request")));
    assert_error(
        &send(app.client.get(app.url("/quotas/summary"))).await,
        401,
        "unauthorized",
        "a valid X-API-Key header is required",
    );
}

#[test]
fn quotas_come_from_quota_tables_and_key_entries_and_contradictions_are_refused() {
    let s = Settings::from_toml(
        r#"
        [[auth.keys]]
        key = "sk_test_alpha_1"
        tenant = "alpha"
        max_sandboxes = 5
        max_execs_per_minute = 60

        [[auth.keys]]
        key = "sk_test_alpha_2"
        tenant = "alpha"
        max_sandboxes = 5

        [quotas.alpha]
        max_memory_mb = 4096
        max_ttl = "2h"

        [quotas.beta]
        max_disk_mb = 2048
        "#,
    )
    .unwrap();
    s.validate().unwrap();
    let all = s.all_quotas().unwrap();
    assert_eq!(all["alpha"].max_sandboxes, Some(5));
    assert_eq!(all["alpha"].max_execs_per_minute, Some(60));
    assert_eq!(all["alpha"].max_memory_mb, Some(4096));
    assert_eq!(all["alpha"].max_ttl, Some(Duration::from_secs(7200)));
    assert_eq!(all["beta"].max_disk_mb, Some(2048));

    let twice = Settings::from_toml(
        "[[auth.keys]]\nkey = \"sk_test_alpha_1\"\ntenant = \"alpha\"\nmax_sandboxes = 5\n[quotas.alpha]\nmax_sandboxes = 6\n",
    )
    .unwrap();
    assert_eq!(
        twice.validate().unwrap_err().to_string(),
        "the quota max_sandboxes of tenant \"alpha\" is set twice, to 6 and 5"
    );
    let zero = Settings::from_toml("[quotas.alpha]\nmax_execs_per_minute = 0\n").unwrap();
    assert_eq!(
        zero.validate().unwrap_err().to_string(),
        "quota max_execs_per_minute of tenant \"alpha\" must be between 1 and 16777216"
    );
    let typo = Settings::from_toml("[quotas.alpha]\nmax_sandbox = 1\n").unwrap_err();
    assert!(format!("{typo:#}").contains("unknown field `max_sandbox`"), "{typo:#}");
    let key_typo =
        Settings::from_toml("[[auth.keys]]\nkey = \"sk_test_alpha_1\"\ntenant = \"a\"\nmax_sandbox = 1\n").unwrap_err();
    assert!(
        format!("{key_typo:#}").contains("unknown field `max_sandbox`"),
        "{key_typo:#}"
    );
    let bad_ttl = Settings::from_toml("[quotas.alpha]\nmax_ttl = \"forever\"\n").unwrap_err();
    assert!(
        format!("{bad_ttl:#}").contains("invalid duration \"forever\""),
        "{bad_ttl:#}"
    );
}
