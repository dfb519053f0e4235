//! Every limit in pairs: obeyed, then violated, with the exact outcome.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{TestApp, assert_error, assert_error_contains, send};

#[tokio::test(flavor = "multi_thread")]
async fn exec_returns_408_with_partial_output_when_the_guest_loops_forever() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let (status, out) = app
        .exec(&id, json!({"command": "python3 -c 'print(1)'", "timeout": "5s"}))
        .await;
    assert_eq!((status, out["stdout"].clone()), (200, json!("1\n")));

    // While the guest spins, the server keeps answering.
    let looping = {
        let (client, url) = (app.client.clone(), app.url(&format!("/sandboxes/{id}/exec")));
        tokio::spawn(async move {
            let started = Instant::now();
            let body = json!({"command": "python3 -c 'print(\"started\", flush=True)\nwhile True: pass'", "timeout": "1500ms"});
            (send(client.post(url).json(&body)).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let probe = Instant::now();
    assert_eq!(send(app.get("/health")).await.0, 200);
    assert!(
        probe.elapsed() < Duration::from_millis(500),
        "health took {:?}",
        probe.elapsed()
    );
    let other = app.create_wasm().await;
    assert_eq!(app.run(&other, "python3 -c 'print(2)'").await["stdout"], "2\n");

    let (got, elapsed) = looping.await.unwrap();
    assert_error(
        &got,
        408,
        "timeout",
        "the command ran past its timeout of 1.5s and was stopped",
    );
    assert_eq!(got.1["stdout"], "started\n");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_over_the_limit_raises_memory_error_and_under_it_works() {
    let app = TestApp::spawn().await;
    let id = app.create_sandbox(json!({"memory_mb": 128})).await;
    let out = app
        .run(&id, "python3 -c 'b = bytearray(64 * 1024 * 1024); print(len(b))'")
        .await;
    assert_eq!(out["stdout"], "67108864\n");
    let out = app.run(&id, "python3 -c 'b = bytearray(256 * 1024 * 1024)'").await;
    assert_eq!(out["exit_code"], 1);
    assert!(out["stderr"].as_str().unwrap().ends_with("MemoryError\n"), "{out}");
    // 4 GiB cannot even be addressed by a wasm32 guest.
    let out = app.run(&id, "python3 -c 'b = bytearray(4 * 1024**3)'").await;
    assert_eq!(out["exit_code"], 1);
    assert!(out["stderr"].as_str().unwrap().contains("OverflowError"), "{out}");
    // The server is unharmed.
    assert_eq!(app.run(&id, "python3 -c 'print(3)'").await["stdout"], "3\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cpu_budget_stops_a_long_computation_with_429_and_allows_a_short_one() {
    // 2 G fuel: enough to start CPython and print, far too little to loop.
    let app = TestApp::spawn_with(|s| s.exec.fuel = 2_000_000_000).await;
    let id = app.create_wasm().await;
    assert_eq!(app.run(&id, "python3 -c 'print(40+2)'").await["stdout"], "42\n");
    let got = app
        .exec(
            &id,
            json!({"command": "python3 -c 'print(\"go\", flush=True)\nwhile True: pass'"}),
        )
        .await;
    assert_error(
        &got,
        429,
        "resource_limit",
        "the command used up its CPU budget of 2000000000 fuel units and was stopped",
    );
    assert_eq!(got.1["stdout"], "go\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_past_the_cap_is_truncated_and_flagged() {
    let app = TestApp::spawn_with(|s| s.exec.output_limit_bytes = 1000).await;
    let id = app.create_wasm().await;
    let out = app.run(&id, "python3 -c 'print(\"x\" * 998)'").await;
    assert_eq!(out["stdout"].as_str().unwrap().len(), 999);
    assert!(out.get("truncated").is_none(), "{out}");
    let out = app
        .run(&id, "python3 -c 'import sys\nfor i in range(100000): sys.stdout.write(\"y\" * 100)\nprint(\"done\", file=sys.stderr)'")
        .await;
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["stdout"].as_str().unwrap(), "y".repeat(1000));
    assert_eq!(out["stderr"], "done\n");
    assert_eq!(out["truncated"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn printing_a_gigabyte_is_truncated_or_timed_out_without_hurting_the_server() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let got = app
        .exec(&id, json!({"command": "python3 -c 'import sys\nb = \"z\" * (1 << 20)\nfor i in range(1024): sys.stdout.write(b)'", "timeout": "20s"}))
        .await;
    match got.0 {
        200 => {
            assert_eq!(got.1["truncated"], true);
            assert_eq!(got.1["stdout"].as_str().unwrap().len(), 1 << 20);
        }
        408 => assert_eq!(got.1["truncated"], true),
        other => panic!("unexpected {other}: {}", got.1),
    }
    assert_eq!(send(app.get("/health")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_quota_answers_enospc_to_the_guest_and_429_to_the_files_api() {
    let app = TestApp::spawn_with(|s| s.sandbox.disk_quota_mb = 2).await;
    // CPython 3.12 reports the quota as ENOSPC on every write; the 3.14
    // image's own test is in python.rs.
    let id = app
        .create_sandbox(json!({"provider": "wasm", "image": "python:3.12"}))
        .await;
    let out = app
        .run(&id, "python3 -c 'open(\"small.bin\", \"wb\").write(b\"a\" * 1000000)'")
        .await;
    assert_eq!(out["exit_code"], 0, "{out}");
    let out = app
        .run(
            &id,
            "python3 -c 'f = open(\"fill.bin\", \"wb\")\nfor i in range(100): f.write(b\"b\" * 100000); f.flush()'",
        )
        .await;
    assert_eq!(out["exit_code"], 1, "{out}");
    assert!(
        out["stderr"].as_str().unwrap().contains("No space left on device"),
        "{out}"
    );
    let used: u64 = ["small.bin", "fill.bin"]
        .iter()
        .map(|f| {
            std::fs::metadata(app.sandbox_dir(&id).join("workspace").join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    assert!(used <= 2 << 20, "the guest overshot the quota: {used} bytes");
    let got = send(
        app.put(&format!("/sandboxes/{id}/files?path=big.bin"))
            .body(vec![0u8; 3 << 20]),
    )
    .await;
    assert_error_contains(
        &got,
        429,
        "resource_limit",
        "would exceed its disk quota of 2097152 bytes",
    );
    let got = send(
        app.put(&format!("/sandboxes/{id}/files?path=tiny.bin"))
            .body(vec![0u8; 10]),
    )
    .await;
    assert_eq!(got.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_ends_in_a_clean_recursion_error() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let out = app.run(&id, "python3 -c 'def f(n): return f(n + 1)\nf(0)'").await;
    assert_eq!(out["exit_code"], 1);
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .ends_with("RecursionError: maximum recursion depth exceeded\n"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_over_the_file_limit_answer_413() {
    let app = TestApp::spawn_with(|s| s.http.file_limit_bytes = 64 * 1024).await;
    let id = app.create_wasm().await;
    let got = send(
        app.put(&format!("/sandboxes/{id}/files?path=x.bin"))
            .body(vec![1u8; 100 * 1024]),
    )
    .await;
    assert_error(
        &got,
        413,
        "payload_too_large",
        "the request body is over the configured limit",
    );
    let got = send(
        app.put(&format!("/sandboxes/{id}/files?path=x.bin"))
            .body(vec![1u8; 1024]),
    )
    .await;
    assert_eq!(got.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_count_is_capped_per_tenant() {
    let app = TestApp::spawn_with(|s| s.sandbox.max_per_tenant = 2).await;
    app.create_wasm().await;
    app.create_wasm().await;
    assert_error(
        &send(app.post("/sandboxes").json(&json!({}))).await,
        429,
        "resource_limit",
        "this tenant already has the maximum of 2 sandboxes",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_guest_is_stopped_at_its_deadline_and_a_short_sleep_completes() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let out = app
        .run(
            &id,
            "python3 -c 'import time; t = time.time(); time.sleep(0.2); print(round(time.time() - t, 1))'",
        )
        .await;
    assert_eq!(out["stdout"], "0.2\n");
    let started = Instant::now();
    let got = app
        .exec(&id, json!({"command": "python3 -c 'import time; print(\"zz\", flush=True); time.sleep(1000)'", "timeout": "1s"}))
        .await;
    assert_error(
        &got,
        408,
        "timeout",
        "the command ran past its timeout of 1s and was stopped",
    );
    assert_eq!(got.1["stdout"], "zz\n");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}
