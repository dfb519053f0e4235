//! Templates: stored creates with files and setup commands, per tenant,
//! persisted, spawned ready to use; a failed setup leaves nothing behind.

use serde_json::{Value, json};
use stacyvm::settings::TenantQuota;

use crate::helpers::{TestApp, assert_error, send};
use crate::ops::{ALPHA, BETA, as_key, four_keys, quota};

fn python_template() -> Value {
    json!({
        "name": "py-dev",
        "image": "python:3.14",
        "ttl": "10m",
        "metadata": {"team": "data"},
        "env": {"GREETING": "hello from setup"},
        "files": [
            {"path": "main.py", "content": "print(6 * 7)\n"},
            {"path": "/workspace/bin/data.bin", "content": "AAEC/w==", "encoding": "base64", "mode": "0600"},
        ],
        "setup": [
            "python3 main.py > answer.txt",
            "echo $GREETING > greeting.txt",
        ],
        "setup_timeout": "20s",
    })
}

async fn read(app: &TestApp, id: &str, path: &str) -> (u16, Vec<u8>) {
    let resp = app
        .get(&format!("/sandboxes/{id}/files?path={path}"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn a_template_spawns_a_sandbox_whose_files_are_written_and_setup_has_run() {
    let app = TestApp::spawn().await;
    let (status, saved) = send(app.post("/templates").json(&python_template())).await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["name"], "py-dev");
    assert_eq!(saved["provider"], "wasm");
    assert_eq!(saved["image"], "python:3.14");
    assert_eq!(saved["memory_mb"], 512);
    assert_eq!(saved["vcpus"], 1);
    assert_eq!(saved["ttl"], "10m0s");
    assert_eq!(saved["setup_timeout"], "20s");
    assert_eq!(saved["created_at"], saved["updated_at"]);

    let (status, sb) = send(app.post("/templates/py-dev/spawn")).await;
    assert_eq!(status, 201, "{sb}");
    let id = sb["id"].as_str().unwrap();
    assert_eq!(sb["state"], "running");
    assert_eq!(sb["image"], "python:3.14");
    assert_eq!(sb["metadata"], json!({"team": "data", "template": "py-dev"}));
    assert_eq!(read(&app, id, "answer.txt").await, (200, b"42\n".to_vec()));
    assert_eq!(
        read(&app, id, "greeting.txt").await,
        (200, b"hello from setup\n".to_vec())
    );
    assert_eq!(read(&app, id, "bin/data.bin").await, (200, vec![0, 1, 2, 255]));
    let (_, stat) = send(app.get(&format!("/sandboxes/{id}/files/stat?path=bin/data.bin"))).await;
    assert_eq!(stat["mode"], "0600");
    // The setup commands are in the sandbox's exec history like any exec.
    let (_, logs) = send(app.get(&format!("/sandboxes/{id}/logs"))).await;
    let logs: Vec<&str> = logs.as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(
        logs[0].contains("exec python3 main.py > answer.txt: exit 0"),
        "{logs:?}"
    );

    // Overrides: a TTL and more labels; owner from X-User-ID.
    let (status, sb) = send(
        app.post("/templates/py-dev/spawn")
            .header("X-User-ID", "u1")
            .json(&json!({"ttl": "1m", "metadata": {"run": "2"}})),
    )
    .await;
    assert_eq!(status, 201, "{sb}");
    assert_eq!(sb["owner_id"], "u1");
    assert_eq!(
        sb["metadata"],
        json!({"team": "data", "template": "py-dev", "run": "2"})
    );
    let created = humantime::parse_rfc3339(sb["created_at"].as_str().unwrap()).unwrap();
    let expires = humantime::parse_rfc3339(sb["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires.duration_since(created).unwrap().as_secs(), 60);
}

#[tokio::test]
async fn templates_are_listed_read_replaced_and_deleted() {
    let app = TestApp::spawn().await;
    let (_, empty) = send(app.get("/templates")).await;
    assert_eq!(empty, json!([]));
    assert_eq!(send(app.post("/templates").json(&python_template())).await.0, 201);
    let (status, js) = send(
        app.put("/templates/js")
            .json(&json!({"image": "quickjs", "setup": ["echo hi"]})),
    )
    .await;
    assert_eq!(status, 201, "{js}");
    assert_eq!(js["name"], "js");
    let (_, list) = send(app.get("/templates")).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["js", "py-dev"]);

    let (status, got) = send(app.get("/templates/py-dev")).await;
    assert_eq!(status, 200);
    assert_eq!(got["files"][1]["encoding"], "base64");
    // Saving the same name again replaces it: 200, and created_at is kept.
    let mut changed = python_template();
    changed["memory_mb"] = json!(256);
    let (status, replaced) = send(app.post("/templates").json(&changed)).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["memory_mb"], 256);
    assert_eq!(replaced["created_at"], got["created_at"]);
    let (status, put) = send(
        app.put("/templates/js")
            .json(&json!({"name": "js", "image": "javascript"})),
    )
    .await;
    assert_eq!((status, put["image"].clone()), (200, json!("javascript")));

    let (status, body) = send(app.delete("/templates/js")).await;
    assert_eq!((status, body), (200, json!({"status": "deleted"})));
    assert_error(
        &send(app.get("/templates/js")).await,
        404,
        "not_found",
        "template js not found",
    );
    assert_error(
        &send(app.delete("/templates/js")).await,
        404,
        "not_found",
        "template js not found",
    );
}

#[tokio::test]
async fn bad_templates_are_refused_with_the_reason() {
    let app = TestApp::spawn().await;
    let post = |body: Value| send(app.post("/templates").json(&body));
    let bad = post(json!({"name": "a b"})).await;
    assert_error(
        &bad,
        400,
        "bad_request",
        "template name \"a b\" is invalid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    );
    let unknown_field = post(json!({"name": "x", "imag": "python"})).await;
    assert_eq!(unknown_field.0, 400);
    assert!(
        unknown_field.1["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `imag`"),
        "{}",
        unknown_field.1
    );
    let missing_name = post(json!({"image": "python"})).await;
    assert_eq!(
        (missing_name.0, missing_name.1["code"].clone()),
        (400, json!("bad_request"))
    );
    let malformed = send(app.post("/templates").body("{nope")).await;
    assert_eq!((malformed.0, malformed.1["code"].clone()), (400, json!("bad_request")));
    assert_error(
        &post(json!({"name": "x", "provider": "firecracker"})).await,
        400,
        "bad_request",
        "unknown provider \"firecracker\"; known providers: wasm, docker",
    );
    assert_error(
        &post(json!({"name": "x", "memory_mb": 100000})).await,
        429,
        "resource_limit",
        "memory_mb 100000 is above the maximum of 8192",
    );
    assert_error(
        &post(json!({"name": "x", "ttl": "48h"})).await,
        429,
        "resource_limit",
        "ttl 48h0m0s is above the maximum of 24h0m0s",
    );
    assert_error(
        &post(json!({"name": "x", "setup": ["  "]})).await,
        400,
        "bad_request",
        "a setup command is empty",
    );
    assert_error(
        &post(json!({"name": "x", "files": [{"path": "../../etc/x", "content": ""}]})).await,
        400,
        "bad_request",
        "path \"../../etc/x\" escapes the sandbox",
    );
    assert_error(
        &post(json!({"name": "x", "files": [{"path": "a", "content": "", "mode": "4755"}]})).await,
        400,
        "bad_request",
        "mode \"4755\" sets setuid, setgid or sticky bits; only permission bits (at most 0777) are allowed",
    );
    assert_error(
        &post(json!({"name": "x", "setup_timeout": "1h"})).await,
        429,
        "resource_limit",
        "setup_timeout 1h0m0s is above the maximum of 10m0s",
    );
    let put_other_name = send(app.put("/templates/a").json(&json!({"name": "b"}))).await;
    assert_error(
        &put_other_name,
        400,
        "bad_request",
        "the body names template \"b\", but the path names \"a\"",
    );
    let spawn_unknown_field = send(app.post("/templates/x/spawn").json(&json!({"image": "python"}))).await;
    assert_eq!(spawn_unknown_field.0, 400, "{}", spawn_unknown_field.1);
    assert_error(
        &send(app.post("/templates/nope/spawn")).await,
        404,
        "not_found",
        "template nope not found",
    );
    let (_, list) = send(app.get("/templates")).await;
    assert_eq!(list, json!([]), "nothing was stored");
}

#[tokio::test]
async fn a_failed_setup_command_answers_422_with_its_output_and_leaves_no_sandbox() {
    let app = TestApp::spawn().await;
    let template = json!({
        "name": "broken",
        "files": [{"path": "a.txt", "content": "a"}],
        "setup": ["echo first", "echo out; echo err >&2; exit 3", "echo never > never.txt"],
    });
    assert_eq!(send(app.post("/templates").json(&template)).await.0, 201);
    let (status, body) = send(app.post("/templates/broken/spawn")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "setup_failed");
    assert_eq!(
        body["message"],
        "setup command 2 (echo out; echo err >&2; exit 3) exited with 3"
    );
    assert_eq!(body["step"], 2);
    assert_eq!(body["command"], "echo out; echo err >&2; exit 3");
    assert_eq!(body["exit_code"], 3);
    assert_eq!(body["stdout"], "out\n");
    assert_eq!(body["stderr"], "err\n");
    let (_, list) = send(app.get("/sandboxes")).await;
    assert_eq!(list, json!([]));
    let dirs = std::fs::read_dir(app.data_dir.path().join("sandboxes"))
        .unwrap()
        .count();
    assert_eq!(dirs, 0, "the sandbox's directory is gone");

    // A setup command stopped at its deadline fails the same way.
    let slow = json!({"name": "slow", "setup": ["sleep 5"], "setup_timeout": "300ms"});
    assert_eq!(send(app.post("/templates").json(&slow)).await.0, 201);
    let (status, body) = send(app.post("/templates/slow/spawn")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["message"],
        "setup command 1 (sleep 5) was stopped: the command ran past its timeout of 300ms and was stopped"
    );
    assert!(body.get("exit_code").is_none(), "{body}");
    let (_, list) = send(app.get("/sandboxes")).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn a_create_naming_a_template_spawns_it() {
    let app = TestApp::spawn().await;
    assert_eq!(send(app.post("/templates").json(&python_template())).await.0, 201);
    // What the StacyVM SDK sends for spawn(template="py-dev"): its default image comes along.
    let (status, sb) = send(
        app.post("/sandboxes")
            .json(&json!({"image": "alpine:latest", "template": "py-dev", "ttl": "2m"})),
    )
    .await;
    assert_eq!(status, 201, "{sb}");
    assert_eq!(sb["image"], "python:3.14");
    let id = sb["id"].as_str().unwrap();
    assert_eq!(read(&app, id, "answer.txt").await, (200, b"42\n".to_vec()));
    assert_error(
        &send(
            app.post("/sandboxes")
                .json(&json!({"template": "py-dev", "memory_mb": 1024})),
        )
        .await,
        400,
        "bad_request",
        "memory_mb is fixed by template py-dev; leave it out or spawn without the template",
    );
    assert_error(
        &send(app.post("/sandboxes").json(&json!({"template": "nope"}))).await,
        404,
        "not_found",
        "template nope not found",
    );
}

#[tokio::test]
async fn templates_belong_to_their_tenant_and_spawns_count_against_its_quota() {
    let app = TestApp::spawn_with(|s| {
        four_keys(s);
        quota(
            s,
            "alpha",
            TenantQuota {
                max_sandboxes: Some(1),
                ..Default::default()
            },
        );
    })
    .await;
    let (alpha, beta) = (as_key(&app, ALPHA), as_key(&app, BETA));
    let t = json!({"name": "mine", "image": "python:3.14"});
    assert_eq!(send(alpha.post("/templates").json(&t)).await.0, 201);
    // Another tenant neither sees nor uses it, and may have its own of that name.
    assert_error(
        &send(beta.get("/templates/mine")).await,
        404,
        "not_found",
        "template mine not found",
    );
    assert_error(
        &send(beta.post("/templates/mine/spawn")).await,
        404,
        "not_found",
        "template mine not found",
    );
    assert_error(
        &send(beta.delete("/templates/mine")).await,
        404,
        "not_found",
        "template mine not found",
    );
    assert_eq!(send(beta.get("/templates")).await.1, json!([]));
    assert_eq!(send(beta.post("/templates").json(&t)).await.0, 201);
    // Without a key: 401.
    let anonymous = send(app.client.get(app.url("/templates"))).await;
    assert_error(&anonymous, 401, "unauthorized", "a valid X-API-Key header is required");

    assert_eq!(send(alpha.post("/templates/mine/spawn")).await.0, 201);
    assert_error(
        &send(alpha.post("/templates/mine/spawn")).await,
        429,
        "resource_limit",
        "this tenant already has the maximum of 1 sandboxes",
    );
}

#[tokio::test]
async fn templates_survive_a_restart_of_the_server() {
    let data = tempfile::tempdir().unwrap();
    let settings = |s: &mut stacyvm::settings::Settings| s.data_dir = data.path().to_path_buf();
    {
        let app = TestApp::spawn_with(settings).await;
        assert_eq!(send(app.post("/templates").json(&python_template())).await.0, 201);
    }
    let app = TestApp::spawn_with(settings).await;
    let (status, got) = send(app.get("/templates/py-dev")).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["setup"][0], "python3 main.py > answer.txt");
    assert_eq!(send(app.post("/templates/py-dev/spawn")).await.0, 201);
}
