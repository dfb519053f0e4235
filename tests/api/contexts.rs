//! Code contexts over HTTP: state that persists, MIME results, errors,
//! rollback on timeout, fuel and memory, forks in both directions, pause and
//! resume (also across a restart), tenancy and the disk quota.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, send};

async fn context(app: &TestApp, sb: &str) -> String {
    let (status, v) = send(
        app.post(&format!("/sandboxes/{sb}/contexts"))
            .json(&json!({"language": "javascript"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

pub(crate) async fn run(app: &TestApp, sb: &str, ctx: &str, body: Value) -> (u16, Value) {
    send(app.post(&format!("/sandboxes/{sb}/contexts/{ctx}/run")).json(&body)).await
}

/// Runs a cell that must answer 200 and returns its body.
pub(crate) async fn cell(app: &TestApp, sb: &str, ctx: &str, code: &str) -> Value {
    let (status, v) = run(app, sb, ctx, json!({"code": code})).await;
    assert_eq!(status, 200, "{code}: {v}");
    v
}

pub(crate) fn plain(v: &Value) -> &str {
    v["result"]["text/plain"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_context_is_created_ready_and_listed_and_its_state_persists_between_runs() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let (status, created) = send(
        app.post(&format!("/sandboxes/{sb}/contexts"))
            .json(&json!({"language": "javascript", "cwd": "/workspace", "env": {"GREETING": "hello"}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let ctx = created["id"].as_str().unwrap();
    assert!(ctx.starts_with("ctx_") && ctx.len() == 24, "{ctx}");
    assert_eq!(created["language"], "javascript");
    assert_eq!(created["image"], "quickjs:0.17");
    assert_eq!(created["cwd"], "/workspace");
    assert_eq!(created["state"], "ready");
    assert!(created["memory_bytes"].as_u64().unwrap() > 1 << 20);

    assert_eq!(
        plain(&cell(&app, &sb, ctx, "let x = 41; function inc(v) { return v + 1 }; inc(x)").await),
        "42"
    );
    let v = cell(
        &app,
        &sb,
        ctx,
        "console.log('x is', x); std.err.puts('oops\\n'); x = inc(x); x",
    )
    .await;
    assert_eq!(
        (v["stdout"].as_str(), v["stderr"].as_str()),
        (Some("x is 41\n"), Some("oops\n"))
    );
    assert_eq!(plain(&v), "42");
    assert_eq!(v["error"], Value::Null);
    assert_eq!(v["rolled_back"], false);
    assert_eq!(
        plain(&cell(&app, &sb, ctx, "std.getenv('GREETING') + ' ' + x").await),
        "\"hello 42\""
    );

    let (_, list) = send(app.get(&format!("/sandboxes/{sb}/contexts"))).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], ctx);
    let (status, one) = send(app.get(&format!("/sandboxes/{sb}/contexts/{ctx}"))).await;
    assert_eq!((status, one["state"].as_str()), (200, Some("ready")));

    // Two contexts of one sandbox share only its files.
    let other = context(&app, &sb).await;
    let v = cell(&app, &sb, &other, "typeof x").await;
    assert_eq!(plain(&v), "\"undefined\"");
    cell(&app, &sb, ctx, "std.writeFile('shared.txt', 'from the first')").await;
    assert_eq!(
        plain(&cell(&app, &sb, &other, "std.loadFile('shared.txt')").await),
        "\"from the first\""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_result_is_a_mime_bundle_and_an_exception_is_a_200_with_its_error() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let ctx = context(&app, &sb).await;
    let v = cell(
        &app,
        &sb,
        &ctx,
        "({rows: [1, 2], _repr_html_() { return '<b>2 rows</b>' }})",
    )
    .await;
    assert_eq!(
        v["result"],
        json!({"text/plain": "{\"rows\":[1,2]}", "text/html": "<b>2 rows</b>", "application/json": {"rows": [1, 2]}})
    );
    let v = cell(&app, &sb, &ctx, "let kept = 1; undefined").await;
    assert_eq!(v["result"], Value::Null);

    let v = cell(&app, &sb, &ctx, "kept = 2; 1 / 0; null.boom").await;
    assert_eq!(v["result"], Value::Null);
    assert_eq!(v["error"]["name"], "TypeError");
    assert_eq!(v["error"]["value"], "cannot read property 'boom' of null");
    assert!(v["error"]["traceback"].as_str().unwrap().contains("<cell>:1"), "{v}");
    // An exception is not a rollback: what ran before it stays done.
    assert_eq!(v["rolled_back"], false);
    assert_eq!(plain(&cell(&app, &sb, &ctx, "kept").await), "2");
    let v = cell(&app, &sb, &ctx, "throw 'a string'").await;
    assert_eq!(v["error"]["name"], "Uncaught");
    assert_eq!(v["error"]["value"], "\"a string\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_cell_answers_408_and_the_context_returns_to_its_state_before_it() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let ctx = context(&app, &sb).await;
    cell(&app, &sb, &ctx, "var n = 1; let items = ['a']").await;
    let (status, v) = run(
        &app,
        &sb,
        &ctx,
        json!({"code": "n = 2; items.push('b'); console.log('before the loop'); for (;;) {}", "timeout": "300ms"}),
    )
    .await;
    assert_eq!(status, 408, "{v}");
    assert_eq!(v["code"], "timeout");
    assert_eq!(v["rolled_back"], true);
    assert_eq!(v["stdout"], "before the loop\n");
    let v = cell(&app, &sb, &ctx, "[n, items]").await;
    assert_eq!(v["result"]["application/json"], json!([1, ["a"]]));
    assert_eq!(v["rolled_back"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cell_that_runs_out_of_fuel_answers_429_and_is_rolled_back() {
    let app = TestApp::spawn_with(|s| s.exec.fuel = 2_000_000_000).await;
    let sb = app.create_wasm().await;
    let ctx = context(&app, &sb).await;
    cell(&app, &sb, &ctx, "var total = 0").await;
    let (status, v) = run(&app, &sb, &ctx, json!({"code": "total = 5; while (true) { total++ }"})).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["code"], "resource_limit");
    assert_eq!(
        v["message"],
        "the command used up its CPU budget of 2000000000 fuel units and was stopped"
    );
    assert_eq!(v["rolled_back"], true);
    assert_eq!(plain(&cell(&app, &sb, &ctx, "total").await), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cell_over_the_memory_cap_answers_429_and_is_rolled_back() {
    let app = TestApp::spawn().await;
    let sb = app.create_sandbox(json!({"provider": "wasm", "memory_mb": 64})).await;
    let ctx = context(&app, &sb).await;
    cell(
        &app,
        &sb,
        &ctx,
        "var small = new Uint8Array(1 << 20).fill(7); var note = 'before'",
    )
    .await;
    let (status, v) = run(
        &app,
        &sb,
        &ctx,
        json!({"code": "note = 'changed'; var big = new Uint8Array(128 << 20); big.length"}),
    )
    .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(
        v["message"],
        "the command exceeded its memory limit of 64 MiB and was stopped"
    );
    assert_eq!(v["rolled_back"], true);
    let v = cell(&app, &sb, &ctx, "[note, small[12345], typeof big]").await;
    assert_eq!(v["result"]["application/json"], json!(["before", 7, "undefined"]));
    let (_, info) = send(app.get(&format!("/sandboxes/{sb}/contexts/{ctx}"))).await;
    assert!(info["memory_bytes"].as_u64().unwrap() <= 64 << 20, "{info}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stdout_stdin_and_an_open_file_work_after_a_rollback() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let (status, _) = send(
        app.post(&format!("/sandboxes/{sb}/files"))
            .json(&json!({"path": "data.txt", "content": "0123456789"})),
    )
    .await;
    assert_eq!(status, 200);
    let ctx = context(&app, &sb).await;
    let v = cell(&app, &sb, &ctx, "var f = std.open('data.txt', 'r'); f.getByte() - 48").await;
    assert_eq!(plain(&v), "0");
    let (status, _) = run(
        &app,
        &sb,
        &ctx,
        json!({"code": "f.getByte(); f.getByte(); f.close(); for (;;) {}", "timeout": "200ms"}),
    )
    .await;
    assert_eq!(status, 408);
    // The file is open again, at the position it had before the cell.
    let v = run(
        &app,
        &sb,
        &ctx,
        json!({"code": "console.log('rest:', f.readAsString()); std.in.readAsString()", "stdin": "typed in"}),
    )
    .await;
    assert_eq!(v.0, 200, "{}", v.1);
    assert_eq!(v.1["stdout"], "rest: 123456789\n");
    assert_eq!(plain(&v.1), "\"typed in\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forked_sandbox_and_its_parent_never_see_each_others_changes() {
    let app = TestApp::spawn().await;
    let parent = app.create_wasm().await;
    send(
        app.post(&format!("/sandboxes/{parent}/files"))
            .json(&json!({"path": "data.txt", "content": "0123456789"})),
    )
    .await;
    let ctx = context(&app, &parent).await;
    cell(
        &app,
        &parent,
        &ctx,
        "var x = 1; var f = std.open('data.txt', 'r'); f.getByte()",
    )
    .await;
    let (status, child) = send(
        app.post(&format!("/sandboxes/{parent}/fork"))
            .json(&json!({"ttl": "10m", "metadata": {"branch": "b"}})),
    )
    .await;
    assert_eq!(status, 201, "{child}");
    let child_id = child["id"].as_str().unwrap().to_string();
    assert_ne!(child_id, parent);
    assert_eq!(child["metadata"], json!({"branch": "b"}));
    assert_eq!(child["state"], "running");

    // The child holds the same context id with the same state; its open
    // file is the child's own copy of data.txt, at the same position.
    send(
        app.post(&format!("/sandboxes/{parent}/files"))
            .json(&json!({"path": "data.txt", "content": "ABCDEFGHIJ"})),
    )
    .await;
    let v = cell(&app, &child_id, &ctx, "x = 100; [x, f.readAsString()]").await;
    assert_eq!(v["result"]["application/json"], json!([100, "123456789"]));
    assert_eq!(plain(&cell(&app, &parent, &ctx, "x").await), "1");

    // Parent to child: neither variables nor files cross.
    cell(&app, &parent, &ctx, "x = 7; std.writeFile('from-parent.txt', 'p')").await;
    assert_eq!(plain(&cell(&app, &child_id, &ctx, "x").await), "100");
    let (status, _) = send(app.get(&format!("/sandboxes/{child_id}/files?path=from-parent.txt"))).await;
    assert_eq!(status, 404);
    // Child to parent.
    cell(&app, &child_id, &ctx, "std.writeFile('from-child.txt', 'c')").await;
    let (status, _) = send(app.get(&format!("/sandboxes/{parent}/files?path=from-child.txt"))).await;
    assert_eq!(status, 404);
    // Destroying the child leaves the parent whole.
    send(app.delete(&format!("/sandboxes/{child_id}"))).await;
    assert_eq!(plain(&cell(&app, &parent, &ctx, "x").await), "7");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forked_context_holds_a_copy_of_the_state_and_goes_its_own_way() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let ctx = context(&app, &sb).await;
    cell(&app, &sb, &ctx, "var counter = 10").await;
    let (status, forked) = send(app.post(&format!("/sandboxes/{sb}/contexts/{ctx}/fork"))).await;
    assert_eq!(status, 201, "{forked}");
    let copy = forked["id"].as_str().unwrap();
    assert_ne!(copy, ctx);
    assert_eq!(forked["state"], "ready");
    cell(&app, &sb, copy, "counter += 5").await;
    cell(&app, &sb, &ctx, "counter -= 1").await;
    assert_eq!(plain(&cell(&app, &sb, copy, "counter").await), "15");
    assert_eq!(plain(&cell(&app, &sb, &ctx, "counter").await), "9");
}

#[tokio::test(flavor = "multi_thread")]
async fn stdout_stdin_and_an_open_file_work_after_a_context_fork_each_copy_at_its_own_position() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let (status, _) = send(
        app.post(&format!("/sandboxes/{sb}/files"))
            .json(&json!({"path": "data.txt", "content": "0123456789"})),
    )
    .await;
    assert_eq!(status, 200);
    let ctx = context(&app, &sb).await;
    let v = cell(&app, &sb, &ctx, "var f = std.open('data.txt', 'r'); f.getByte() - 48").await;
    assert_eq!(plain(&v), "0");
    let (status, forked) = send(app.post(&format!("/sandboxes/{sb}/contexts/{ctx}/fork"))).await;
    assert_eq!(status, 201, "{forked}");
    let copy = forked["id"].as_str().unwrap().to_string();

    // The copy's descriptor reads on from where the original stood at the
    // fork, and moving it does not move the original's.
    let (status, v) = run(
        &app,
        &sb,
        &copy,
        json!({"code": "console.log('copy read', f.getByte() - 48); std.in.readAsString()", "stdin": "to the copy"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "copy read 1\n");
    assert_eq!(plain(&v), "\"to the copy\"");
    let (status, v) = run(
        &app,
        &sb,
        &ctx,
        json!({"code": "console.log('original read', f.readAsString()); std.in.readAsString()", "stdin": "to the original"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "original read 123456789\n");
    assert_eq!(plain(&v), "\"to the original\"");
    assert_eq!(plain(&cell(&app, &sb, &copy, "f.readAsString()").await), "\"23456789\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_context_the_language_and_the_tenant_boundary() {
    let app = TestApp::with_keys(&[("sk_alpha_0001", "alpha"), ("sk_beta_00001", "beta")]).await;
    let sb = app.create_wasm().await;
    let ctx = context(&app, &sb).await;
    assert_error(
        &send(app.get(&format!("/sandboxes/{sb}/contexts/ctx_00000000000000000000"))).await,
        404,
        "not_found",
        "context ctx_00000000000000000000 not found",
    );
    assert_error(
        &run(&app, &sb, "nope", json!({"code": "1"})).await,
        404,
        "not_found",
        "context nope not found",
    );
    assert_error(
        &send(
            app.post(&format!("/sandboxes/{sb}/contexts"))
                .json(&json!({"language": "cobol"})),
        )
        .await,
        400,
        "bad_request",
        "unknown language \"cobol\"; use \"python\" or \"javascript\"",
    );
    // Another tenant sees neither the sandbox nor its contexts.
    let beta = |rb: reqwest::RequestBuilder| rb.header("X-API-Key", "sk_beta_00001");
    let url = |p: &str| app.url(p);
    for (status, body) in [
        send(beta(app.client.get(url(&format!("/sandboxes/{sb}/contexts"))))).await,
        send(beta(app.client.get(url(&format!("/sandboxes/{sb}/contexts/{ctx}"))))).await,
        send(beta(app.client.post(url(&format!("/sandboxes/{sb}/contexts/{ctx}/run")))).json(&json!({"code": "1"})))
            .await,
        send(beta(app.client.post(url(&format!("/sandboxes/{sb}/fork"))))).await,
    ] {
        assert_eq!(
            (status, body["message"].clone()),
            (404, json!(format!("sandbox {sb} not found")))
        );
    }
    // Delete is idempotent, for the owner and for anyone else.
    let (status, _) = send(beta(app.client.delete(url(&format!("/sandboxes/{sb}/contexts/{ctx}"))))).await;
    assert_eq!(status, 200);
    assert_eq!(plain(&cell(&app, &sb, &ctx, "1 + 1").await), "2");
    for _ in 0..2 {
        let (status, v) = send(app.delete(&format!("/sandboxes/{sb}/contexts/{ctx}"))).await;
        assert_eq!((status, v), (200, json!({"status": "deleted"})));
    }
    assert_eq!(send(app.get(&format!("/sandboxes/{sb}/contexts/{ctx}"))).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_code_shorthand_runs_in_a_default_context_created_on_first_use() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let post = |body: Value| send(app.post(&format!("/sandboxes/{sb}/code")).json(&body));
    let (status, v) = post(json!({"code": "var seen = 'yes'; 6 * 7", "language": "javascript"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(plain(&v), "42");
    let (_, v) = post(json!({"code": "seen", "language": "javascript"})).await;
    assert_eq!(plain(&v), "\"yes\"");
    let (_, list) = send(app.get(&format!("/sandboxes/{sb}/contexts"))).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let other = context(&app, &sb).await;
    let (_, v) = post(json!({"code": "typeof seen", "context_id": other})).await;
    assert_eq!(plain(&v), "\"undefined\"");
    assert_error(
        &post(json!({"code": "1", "context_id": "ctx_ffffffffffffffffffff"})).await,
        404,
        "not_found",
        "context ctx_ffffffffffffffffffff not found",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_run_sends_output_lines_then_the_result() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let ctx = context(&app, &sb).await;
    let resp = app
        .post(&format!("/sandboxes/{sb}/contexts/{ctx}/run"))
        .json(&json!({"code": "console.log('one'); console.log('two'); 3", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let out: String = lines
        .iter()
        .filter(|l| l["stream"] == "stdout")
        .map(|l| l["data"].as_str().unwrap())
        .collect();
    assert_eq!(out, "one\ntwo\n");
    let last = lines.last().unwrap();
    assert_eq!(last["result"], json!({"text/plain": "3"}));
    assert_eq!(
        (last["error"].clone(), last["rolled_back"].clone()),
        (Value::Null, json!(false))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_context_is_paused_to_disk_counts_against_the_quota_and_resumes_on_the_next_run() {
    let app = TestApp::spawn_with(|s| {
        s.contexts.idle_pause = Duration::from_millis(300);
        s.sandbox.disk_quota_mb = 2;
    })
    .await;
    let sb = app.create_wasm().await;
    let ctx = context(&app, &sb).await;
    cell(
        &app,
        &sb,
        &ctx,
        "var data = new Uint8Array(600 * 1024).fill(9); data.length",
    )
    .await;
    let mut state = Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = send(app.get(&format!("/sandboxes/{sb}/contexts/{ctx}"))).await.1["state"].clone();
        if state == "paused" {
            break;
        }
    }
    assert_eq!(state, "paused");
    let paused_dir = app.data_dir.path().join("contexts").join(&sb).join(&ctx);
    let on_disk: u64 = std::fs::read_dir(&paused_dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk > 600 * 1024, "{on_disk}");
    let (_, stats) = send(app.get(&format!("/sandboxes/{sb}/stats"))).await;
    assert!(stats["disk_bytes"].as_u64().unwrap() >= on_disk, "{stats}");
    // The paused bytes leave less room for files: 1.5 MiB fits 2 MiB alone, not beside them.
    let big = "x".repeat(1536 * 1024);
    let (status, v) = send(
        app.post(&format!("/sandboxes/{sb}/files"))
            .json(&json!({"path": "big.txt", "content": big})),
    )
    .await;
    assert_eq!(status, 429, "{v}");
    // The next run resumes it, and frees the reservation.
    let v = cell(&app, &sb, &ctx, "[data.length, data[1000]]").await;
    assert_eq!(v["result"]["application/json"], json!([614400, 9]));
    assert!(!paused_dir.exists());
    let (status, _) = send(
        app.post(&format!("/sandboxes/{sb}/files"))
            .json(&json!({"path": "big.txt", "content": big})),
    )
    .await;
    assert_eq!(status, 200);
    // Now the pause does not fit the quota: the context stays in memory.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, info) = send(app.get(&format!("/sandboxes/{sb}/contexts/{ctx}"))).await;
    assert_eq!(info["state"], "ready");
    assert_eq!(plain(&cell(&app, &sb, &ctx, "data[5]").await), "9");
}

#[tokio::test(flavor = "multi_thread")]
async fn destroying_a_sandbox_destroys_its_contexts_live_and_paused() {
    let app = TestApp::spawn_with(|s| s.contexts.idle_pause = Duration::from_millis(200)).await;
    let sb = app.create_wasm().await;
    let paused = context(&app, &sb).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let live = context(&app, &sb).await;
    let dir = app.data_dir.path().join("contexts").join(&sb);
    assert!(dir.join(&paused).join("state.json").exists());
    let (status, _) = send(app.delete(&format!("/sandboxes/{sb}"))).await;
    assert_eq!(status, 200);
    assert!(!dir.exists());
    assert_eq!(send(app.get(&format!("/sandboxes/{sb}/contexts/{live}"))).await.0, 404);
    // TTL expiry too.
    let short = app.create_sandbox(json!({"provider": "wasm", "ttl": "1s"})).await;
    let ctx = context(&app, &short).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        send(app.get(&format!("/sandboxes/{short}/contexts/{ctx}"))).await.0,
        404
    );
    assert!(!app.data_dir.path().join("contexts").join(&short).exists());
}

/// A server process on `data_dir`, and its base URL.
fn start_server(data_dir: &std::path::Path, idle_pause: &str) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stacyvm"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("STACYVM_DATA_DIR", data_dir)
        .env("STACYVM_IMAGE_DIR", crate::helpers::shared_image_dir())
        .env("STACYVM_CONTEXT_IDLE_PAUSE", idle_pause)
        .env("STACYVM_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(addr) = line.split("addr=").nth(1) {
                tx.send(addr.trim().to_string()).ok();
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(900))
        .expect("the server reports its address");
    (child, format!("http://{addr}/api/v1"))
}

#[tokio::test(flavor = "multi_thread")]
async fn contexts_survive_a_graceful_restart_and_kill_9_keeps_only_the_paused_ones() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let post = |url: String, body: Value| {
        let client = client.clone();
        async move { send(client.post(url).json(&body)).await }
    };
    let (mut server, base) = start_server(data.path(), "1h");
    let sb = post(format!("{base}/sandboxes"), json!({})).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ctx = post(
        format!("{base}/sandboxes/{sb}/contexts"),
        json!({"language": "javascript"}),
    )
    .await
    .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = post(
        format!("{base}/sandboxes/{sb}/contexts/{ctx}/run"),
        json!({"code": "var kept = 'across restarts'"}),
    )
    .await;
    assert_eq!(status, 200);
    // SIGTERM: a graceful stop pauses every context to disk.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(server.wait().unwrap().success());
    let (mut server, base) = start_server(data.path(), "1h");
    let (status, info) = send(client.get(format!("{base}/sandboxes/{sb}/contexts/{ctx}"))).await;
    assert_eq!((status, info["state"].as_str()), (200, Some("paused")), "{info}");
    let (status, v) = post(
        format!("{base}/sandboxes/{sb}/contexts/{ctx}/run"),
        json!({"code": "kept"}),
    )
    .await;
    assert_eq!(
        (status, v["result"]["text/plain"].as_str()),
        (200, Some("\"across restarts\"")),
        "{v}"
    );

    // kill -9: the context now in memory is lost; a paused one survives.
    let in_memory = ctx;
    let (mut server, base) = {
        server.kill().unwrap();
        server.wait().unwrap();
        start_server(data.path(), "300ms")
    };
    let (status, _) = send(client.get(format!("{base}/sandboxes/{sb}/contexts/{in_memory}"))).await;
    assert_eq!(status, 404);
    let paused = post(
        format!("{base}/sandboxes/{sb}/contexts"),
        json!({"language": "javascript"}),
    )
    .await
    .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    post(
        format!("{base}/sandboxes/{sb}/contexts/{paused}/run"),
        json!({"code": "var survivor = 1"}),
    )
    .await;
    let mut state = Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = send(client.get(format!("{base}/sandboxes/{sb}/contexts/{paused}")))
            .await
            .1["state"]
            .clone();
        if state == "paused" {
            break;
        }
    }
    assert_eq!(state, "paused");
    server.kill().unwrap();
    server.wait().unwrap();
    let (mut server, base) = start_server(data.path(), "1h");
    let (status, v) = post(
        format!("{base}/sandboxes/{sb}/contexts/{paused}/run"),
        json!({"code": "survivor"}),
    )
    .await;
    assert_eq!((status, v["result"]["text/plain"].as_str()), (200, Some("1")), "{v}");
    server.kill().unwrap();
    server.wait().unwrap();
}
