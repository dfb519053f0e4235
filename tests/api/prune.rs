//! `DELETE /sandboxes`: prune the caller's sandboxes (of one owner), and
//! an admin's prune of another tenant.

use serde_json::json;

use crate::helpers::{TestApp, assert_error, send};
use crate::ops::{ALPHA, BETA, OPS, ROOT, as_key, four_keys};

#[tokio::test]
async fn prune_destroys_every_sandbox_of_the_caller_and_only_those() {
    let app = TestApp::spawn_with(four_keys).await;
    let (alpha, beta) = (as_key(&app, ALPHA), as_key(&app, BETA));
    let mut mine = vec![];
    for owner in ["ann", "ann", "bob"] {
        mine.push(alpha.create(json!({"owner_id": owner})).await);
    }
    let theirs = beta.create(json!({})).await;

    // One owner's first.
    let (status, body) = send(alpha.delete("/sandboxes?owner_id=ann")).await;
    assert_eq!((status, body), (200, json!({"pruned": 2})));
    let (_, left) = send(alpha.get("/sandboxes")).await;
    let left: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [mine[2].as_str()]);
    for id in &mine[..2] {
        assert!(!app.sandbox_dir(id).exists(), "{id}'s directory is gone");
    }
    // Then everything left.
    let (status, body) = send(alpha.delete("/sandboxes")).await;
    assert_eq!((status, body), (200, json!({"pruned": 1})));
    assert_eq!(send(alpha.get("/sandboxes")).await.1, json!([]));
    let (status, body) = send(alpha.delete("/sandboxes")).await;
    assert_eq!((status, body), (200, json!({"pruned": 0})));
    // The other tenant's sandbox is untouched.
    let (status, _) = send(beta.get(&format!("/sandboxes/{theirs}"))).await;
    assert_eq!(status, 200);
    assert!(app.sandbox_dir(&theirs).exists());
}

#[tokio::test]
async fn only_an_admin_prunes_another_tenant() {
    let app = TestApp::spawn_with(four_keys).await;
    let (alpha, beta, ops, root) = (
        as_key(&app, ALPHA),
        as_key(&app, BETA),
        as_key(&app, OPS),
        as_key(&app, ROOT),
    );
    let victim = alpha.create(json!({})).await;
    for (who, key) in [("user", &beta), ("operator", &ops)] {
        assert_error(
            &send(key.delete("/sandboxes?tenant=alpha")).await,
            403,
            "forbidden",
            "only an admin key may prune the sandboxes of another tenant",
        );
        assert_eq!(send(alpha.get(&format!("/sandboxes/{victim}"))).await.0, 200, "{who}");
    }
    // Naming one's own tenant is allowed to anyone.
    assert_eq!(
        send(beta.delete("/sandboxes?tenant=beta")).await,
        (200, json!({"pruned": 0}))
    );
    let (status, body) = send(root.delete("/sandboxes?tenant=alpha")).await;
    assert_eq!((status, body), (200, json!({"pruned": 1})));
    assert_error(
        &send(alpha.get(&format!("/sandboxes/{victim}"))).await,
        404,
        "not_found",
        &format!("sandbox {victim} not found"),
    );
}

#[tokio::test]
async fn a_bad_prune_query_answers_400_and_no_key_401() {
    let app = TestApp::spawn_with(four_keys).await;
    let alpha = as_key(&app, ALPHA);
    let kept = alpha.create(json!({})).await;
    let unknown = send(alpha.delete("/sandboxes?owner=ann")).await;
    assert_eq!((unknown.0, unknown.1["code"].clone()), (400, json!("bad_request")));
    assert_error(
        &send(alpha.delete("/sandboxes?owner_id=a%2Fb")).await,
        400,
        "bad_request",
        "invalid owner_id: user id contains the forbidden character '/'",
    );
    assert_error(
        &send(app.client.delete(app.url("/sandboxes"))).await,
        401,
        "unauthorized",
        "a valid X-API-Key header is required",
    );
    assert_eq!(
        send(alpha.get(&format!("/sandboxes/{kept}"))).await.0,
        200,
        "nothing was pruned"
    );
}
