//! Python code contexts (CPython 3.15 with the scientific stack) over HTTP:
//! globals and imports that persist, MIME results, errors, rollback on
//! timeout, fuel and memory with the variables intact, forks both ways with
//! an open file, pause and resume, and what is refused.

use std::time::Duration;

use serde_json::{Value, json};

use crate::contexts::{cell, plain, run};
use crate::helpers::{TestApp, assert_error, send};

async fn python_context(app: &TestApp, sb: &str) -> String {
    let (status, v) = send(
        app.post(&format!("/sandboxes/{sb}/contexts"))
            .json(&json!({"language": "python"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["image"], "python:3.15");
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_context_keeps_globals_and_imports_and_answers_with_mime_bundles_and_errors() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let (status, created) = send(
        app.post(&format!("/sandboxes/{sb}/contexts"))
            .json(&json!({"language": "python", "env": {"GREETING": "hello"}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (
            created["language"].as_str(),
            created["image"].as_str(),
            created["state"].as_str()
        ),
        (Some("python"), Some("python:3.15"), Some("ready"))
    );
    let ctx = created["id"].as_str().unwrap();
    assert_eq!(
        plain(&cell(&app, &sb, ctx, "import pandas as pd\nx = 41\nx + 1").await),
        "42"
    );
    let v = cell(
        &app,
        &sb,
        ctx,
        "import os, sys\nprint('hi', x)\nprint('oops', file=sys.stderr)\ndf = pd.DataFrame({'a': [1, 2]})\ndf",
    )
    .await;
    assert_eq!(
        (v["stdout"].as_str(), v["stderr"].as_str()),
        (Some("hi 41\n"), Some("oops\n"))
    );
    assert_eq!(plain(&v), "   a\n0  1\n1  2");
    let html = v["result"]["text/html"].as_str().unwrap();
    assert!(html.contains("<table") && html.contains("<td>2</td>"), "{html}");
    assert_eq!(
        (v["error"].clone(), v["rolled_back"].clone()),
        (Value::Null, json!(false))
    );
    // The last value is `_`, the environment is the context's, the directory
    // is the sandbox's workspace.
    assert_eq!(
        plain(&cell(&app, &sb, ctx, "(_.shape, os.environ['GREETING'], os.getcwd())").await),
        "((2, 1), 'hello', '/workspace')"
    );
    // An exception is a 200 with its error, and nothing is rolled back.
    let v = cell(&app, &sb, ctx, "x = 5\n1 / 0").await;
    assert_eq!(v["result"], Value::Null);
    assert_eq!(v["error"]["name"], "ZeroDivisionError");
    assert_eq!(v["error"]["value"], "division by zero");
    let traceback = v["error"]["traceback"].as_str().unwrap();
    assert!(
        traceback.contains("<cell-") && traceback.ends_with("ZeroDivisionError: division by zero\n"),
        "{traceback}"
    );
    assert!(!traceback.contains("stacyvm"), "the driver's frames show: {traceback}");
    assert_eq!(v["rolled_back"], false);
    assert_eq!(plain(&cell(&app, &sb, ctx, "x").await), "5");
    // A statement alone has no result; sys.exit is an error, not an end.
    assert_eq!(cell(&app, &sb, ctx, "y = 1").await["result"], Value::Null);
    let v = cell(&app, &sb, ctx, "import sys\nsys.exit(3)").await;
    assert_eq!(
        (v["error"]["name"].as_str(), v["error"]["value"].as_str()),
        (Some("SystemExit"), Some("3"))
    );
    assert_eq!(plain(&cell(&app, &sb, ctx, "x + y").await), "6");
    // Standard input is the cell's.
    let (status, v) = run(
        &app,
        &sb,
        ctx,
        json!({"code": "import sys\nsys.stdin.read().upper()", "stdin": "typed in"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(plain(&v), "'TYPED IN'");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_python_contexts_share_only_files_and_draw_different_random_numbers() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let (a, b) = (python_context(&app, &sb).await, python_context(&app, &sb).await);
    cell(&app, &sb, &a, "secret = 1\nopen('shared.txt', 'w').write('from a')").await;
    assert_eq!(plain(&cell(&app, &sb, &b, "'secret' in dir()").await), "False");
    assert_eq!(
        plain(&cell(&app, &sb, &b, "open('shared.txt').read()").await),
        "'from a'"
    );
    let draw = "import random, numpy\n(random.random(), float(numpy.random.random()))";
    let (x, y) = (cell(&app, &sb, &a, draw).await, cell(&app, &sb, &b, draw).await);
    assert_ne!(plain(&x), plain(&y));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_cell_stopped_by_its_timeout_or_fuel_is_rolled_back_with_the_variables_intact() {
    let app = TestApp::spawn_with(|s| s.exec.fuel = 20_000_000_000).await;
    let sb = app.create_wasm().await;
    let ctx = python_context(&app, &sb).await;
    cell(&app, &sb, &ctx, "n = 1\nitems = ['a']").await;
    let (status, v) = run(
        &app,
        &sb,
        &ctx,
        json!({"code": "n = 2\nitems.append('b')\nprint('before the loop', flush=True)\nwhile True: pass", "timeout": "500ms"}),
    )
    .await;
    assert_eq!(status, 408, "{v}");
    assert_eq!(
        (v["code"].as_str(), v["rolled_back"].as_bool()),
        (Some("timeout"), Some(true))
    );
    assert_eq!(v["stdout"], "before the loop\n");
    let v = cell(&app, &sb, &ctx, "(n, items)").await;
    assert_eq!((plain(&v), v["rolled_back"].as_bool()), ("(1, ['a'])", Some(false)));
    let (status, v) = run(
        &app,
        &sb,
        &ctx,
        json!({"code": "n = 3\nwhile True: n += 1", "timeout": "60s"}),
    )
    .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(
        v["message"],
        "the command used up its CPU budget of 20000000000 fuel units and was stopped"
    );
    assert_eq!(v["rolled_back"], true);
    assert_eq!(plain(&cell(&app, &sb, &ctx, "(n, items)").await), "(1, ['a'])");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_cell_over_the_memory_cap_answers_429_and_is_rolled_back() {
    let app = TestApp::spawn().await;
    let sb = app.create_sandbox(json!({"provider": "wasm", "memory_mb": 256})).await;
    let ctx = python_context(&app, &sb).await;
    cell(&app, &sb, &ctx, "note = 'before'\nsmall = bytearray(b'7' * 100_000)").await;
    let (status, v) = run(
        &app,
        &sb,
        &ctx,
        json!({"code": "note = 'changed'\nbig = bytearray(400 << 20)\nlen(big)"}),
    )
    .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(
        v["message"],
        "the command exceeded its memory limit of 256 MiB and was stopped"
    );
    assert_eq!(v["rolled_back"], true);
    assert_eq!(
        plain(&cell(&app, &sb, &ctx, "(note, small[99_999], 'big' in dir())").await),
        "('before', 55, False)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forked_sandbox_copies_the_python_state_and_open_files_and_neither_side_sees_the_other() {
    let app = TestApp::spawn().await;
    let parent = app.create_wasm().await;
    send(
        app.post(&format!("/sandboxes/{parent}/files"))
            .json(&json!({"path": "data.txt", "content": "0123456789"})),
    )
    .await;
    let ctx = python_context(&app, &parent).await;
    let v = cell(
        &app,
        &parent,
        &ctx,
        "import numpy as np\nx = 1\narr = np.arange(5)\nf = open('data.txt')\nf.read(1)",
    )
    .await;
    assert_eq!(plain(&v), "'0'");
    let (status, child) = send(app.post(&format!("/sandboxes/{parent}/fork")).json(&json!({}))).await;
    assert_eq!(status, 201, "{child}");
    let child = child["id"].as_str().unwrap().to_string();
    let (_, info) = send(app.get(&format!("/sandboxes/{child}/contexts/{ctx}"))).await;
    assert_eq!(info["state"], "ready", "{info}");
    // The parent's file changes; the child reads its own copy, from where
    // the parent's read had got to.
    send(
        app.post(&format!("/sandboxes/{parent}/files"))
            .json(&json!({"path": "data.txt", "content": "ABCDEFGHIJ"})),
    )
    .await;
    assert_eq!(
        plain(
            &cell(
                &app,
                &child,
                &ctx,
                "x = 100\narr[2] = 42\n(x, f.read(), int(arr.sum()))"
            )
            .await
        ),
        "(100, '123456789', 50)"
    );
    assert_eq!(
        plain(&cell(&app, &parent, &ctx, "(x, int(arr.sum()))").await),
        "(1, 10)"
    );
    cell(&app, &parent, &ctx, "x = 7\nopen('from-parent.txt', 'w').write('p')").await;
    assert_eq!(plain(&cell(&app, &child, &ctx, "x").await), "100");
    assert_eq!(
        plain(&cell(&app, &child, &ctx, "import os\nos.path.exists('from-parent.txt')").await),
        "False"
    );
    cell(&app, &child, &ctx, "open('from-child.txt', 'w').write('c')").await;
    let (status, _) = send(app.get(&format!("/sandboxes/{parent}/files?path=from-child.txt"))).await;
    assert_eq!(status, 404);
    // A context fork in one sandbox goes its own way too.
    let (status, copy) = send(app.post(&format!("/sandboxes/{parent}/contexts/{ctx}/fork"))).await;
    assert_eq!(status, 201, "{copy}");
    let copy = copy["id"].as_str().unwrap();
    cell(&app, &parent, copy, "x += 5").await;
    assert_eq!(plain(&cell(&app, &parent, &ctx, "x").await), "7");
    assert_eq!(plain(&cell(&app, &parent, copy, "x").await), "12");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_fork_beyond_the_live_context_limit_copies_the_context_through_disk() {
    let app = TestApp::spawn_with(|s| s.contexts.max_live = 1).await;
    let parent = app.create_wasm().await;
    let ctx = python_context(&app, &parent).await;
    cell(&app, &parent, &ctx, "kept = list(range(5))").await;
    let (status, child) = send(app.post(&format!("/sandboxes/{parent}/fork")).json(&json!({}))).await;
    assert_eq!(status, 201, "{child}");
    let child = child["id"].as_str().unwrap().to_string();
    let (_, info) = send(app.get(&format!("/sandboxes/{child}/contexts/{ctx}"))).await;
    assert_eq!(info["state"], "paused", "{info}");
    assert_eq!(plain(&cell(&app, &child, &ctx, "sum(kept)").await), "10");
    assert_eq!(plain(&cell(&app, &parent, &ctx, "len(kept)").await), "5");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_python_context_is_paused_to_disk_and_resumes_with_its_state() {
    let app = TestApp::spawn_with(|s| s.contexts.idle_pause = Duration::from_millis(300)).await;
    let sb = app.create_wasm().await;
    let ctx = python_context(&app, &sb).await;
    cell(
        &app,
        &sb,
        &ctx,
        "import pandas as pd\nbig = 'x' * 5_000_000\ndf = pd.DataFrame({'k': [1, 2, 2], 'v': [1.5, 2.5, 3.5]})",
    )
    .await;
    let mut state = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = send(app.get(&format!("/sandboxes/{sb}/contexts/{ctx}"))).await.1["state"].clone();
        if state == "paused" {
            break;
        }
    }
    assert_eq!(state, "paused");
    let paused_dir = app.data_dir.path().join("contexts").join(&sb).join(&ctx);
    assert!(paused_dir.join("state.json").exists());
    let (_, stats) = send(app.get(&format!("/sandboxes/{sb}/stats"))).await;
    assert!(stats["disk_bytes"].as_u64().unwrap() >= 5_000_000, "{stats}");
    let v = cell(&app, &sb, &ctx, "(len(big), df.groupby('k')['v'].sum().to_dict())").await;
    assert_eq!(plain(&v), "(5000000, {1: 1.5, 2: 6.0})");
    assert!(!paused_dir.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn python_contexts_refuse_another_image_and_a_sandbox_too_small_for_their_heap() {
    let app = TestApp::spawn().await;
    let sb = app.create_wasm().await;
    let create = |sb: String, body: Value| send(app.post(&format!("/sandboxes/{sb}/contexts")).json(&body));
    assert_error(
        &create(sb.clone(), json!({"language": "python", "image": "python:3.14"})).await,
        422,
        "unsupported",
        "python contexts run image python:3.15, not python:3.14 (the other Python images are WASI 0.2 \
         components or start from scratch, and their interpreter's state cannot be copied, which rollback, \
         fork and pause need)",
    );
    for alias in ["python:3.15", "python:data"] {
        let (status, v) = create(sb.clone(), json!({"language": "python", "image": alias})).await;
        assert_eq!((status, v["image"].as_str()), (201, Some("python:3.15")), "{v}");
    }
    let small = app.create_sandbox(json!({"provider": "wasm", "memory_mb": 64})).await;
    let (status, v) = create(small, json!({"language": "python"})).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("bad_request")), "{v}");
    assert_eq!(
        v["message"],
        "python contexts start with 148 MiB of memory (python:3.15's pre-initialized heap), more than this \
         sandbox's memory_mb of 64; create the sandbox with memory_mb of at least 148"
    );
}
