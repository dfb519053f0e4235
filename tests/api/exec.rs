use serde_json::json;

use crate::helpers::{
    TestApp, assert_error, assert_error_contains, send, ws_connect, ws_next, ws_send, ws_stdout_line,
};

#[tokio::test(flavor = "multi_thread")]
async fn exec_reports_exit_codes_stdout_and_stderr() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let out = app
        .run(
            &id,
            "python3 -c 'import sys; print(\"out\"); print(\"err\", file=sys.stderr); sys.exit(42)'",
        )
        .await;
    assert_eq!(out["exit_code"], 42);
    assert_eq!(out["stdout"], "out\n");
    assert_eq!(out["stderr"], "err\n");
    let out = app.run(&id, "python3 -c 'raise ValueError(7)'").await;
    assert_eq!(out["exit_code"], 1);
    assert!(out["stderr"].as_str().unwrap().ends_with("ValueError: 7\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn args_env_stdin_and_argv_mode_reach_the_program() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let (_, out) = app
        .exec(
            &id,
            json!({"command": "python3 -c 'import sys; print(sys.argv[1:])'", "args": ["x", "y z", "$HOME"]}),
        )
        .await;
    assert_eq!(out["stdout"], "['x', 'y z', '$HOME']\n");
    let (_, out) = app
        .exec(&id, json!({"command": "GREETING=hi python3 -c 'import os; print(os.environ[\"GREETING\"], os.environ[\"NAME\"], os.environ[\"HOME\"])'", "env": {"NAME": "stacy"}}))
        .await;
    assert_eq!(out["stdout"], "hi stacy /workspace\n");
    let (_, out) = app
        .exec(
            &id,
            json!({"command": "python3 -c 'import sys; print(sys.stdin.read()[::-1])'", "stdin": "olleh"}),
        )
        .await;
    assert_eq!(out["stdout"], "hello\n");
    let (_, out) = app
        .exec(
            &id,
            json!({"command": "python3", "args": ["-c", "import sys; print(sys.argv)", "a b"], "mode": "argv"}),
        )
        .await;
    assert_eq!(out["stdout"], "['-c', 'a b']\n");
    let (_, out) = app
        .exec(&id, json!({"command": "/usr/bin/python3 -c 'print(7)'"}))
        .await;
    assert_eq!(out["stdout"], "7\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn workdir_sets_the_working_directory_for_relative_paths() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let out = app
        .run(
            &id,
            "python3 -c 'import os; print(os.getcwd()); open(\"rel.txt\", \"w\").write(\"r\")'",
        )
        .await;
    assert_eq!(out["stdout"], "/workspace\n");
    assert_eq!(
        std::fs::read_to_string(app.sandbox_dir(&id).join("workspace/rel.txt")).unwrap(),
        "r"
    );
    let (status, _) = send(app.post(&format!("/sandboxes/{id}/files")).json(&json!({
        "path": "/workspace/sub/main.py",
        "content": "import os, sys\nprint(os.getcwd(), sys.argv, __name__, open('data.txt').read())\n"
    })))
    .await;
    assert_eq!(status, 200);
    std::fs::write(app.sandbox_dir(&id).join("workspace/sub/data.txt"), "d").unwrap();
    let (_, out) = app
        .exec(
            &id,
            json!({"command": "python3 main.py arg", "workdir": "/workspace/sub"}),
        )
        .await;
    assert_eq!(out["stdout"], "/workspace/sub ['main.py', 'arg'] __main__ d\n", "{out}");
    let (_, out) = app
        .exec(
            &id,
            json!({"command": "python3 -c 'import os; print(os.getcwd())'", "workdir": "/tmp"}),
        )
        .await;
    assert_eq!(out["stdout"], "/tmp\n");
    let (_, out) = app.exec(&id, json!({"command": "python3 sub/main.py"})).await;
    assert_eq!(out["exit_code"], 1, "{out}");
    assert!(out["stderr"].as_str().unwrap().contains("FileNotFoundError"), "{out}");
    let (_, out) = app
        .exec(
            &id,
            json!({"command": "python3 -c 'open(\"/workspace/sub/x\",\"w\").write(\"1\")'"}),
        )
        .await;
    assert_eq!(out["exit_code"], 0);
    assert_error(
        &app.exec(&id, json!({"command": "python3 -V", "workdir": "/nope"}))
            .await,
        400,
        "bad_request",
        "workdir /nope does not exist in the sandbox",
    );
    assert_error(
        &app.exec(&id, json!({"command": "python3 -V", "workdir": "../../.."}))
            .await,
        400,
        "bad_request",
        "workdir: path \"../../..\" escapes the sandbox",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_error_in_a_relative_file_shows_a_plain_traceback() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    std::fs::write(
        app.sandbox_dir(&id).join("workspace/boom.py"),
        "x = 1\nraise KeyError('k')\n",
    )
    .unwrap();
    let out = app.run(&id, "python3 boom.py").await;
    assert_eq!(out["exit_code"], 1);
    assert_eq!(
        out["stderr"],
        "Traceback (most recent call last):\n  File \"/workspace/boom.py\", line 2, in <module>\n    raise KeyError('k')\nKeyError: 'k'\n"
    );
    std::fs::write(
        app.sandbox_dir(&id).join("workspace/quit.py"),
        "import sys\nprint('bye')\nsys.exit(5)\n",
    )
    .unwrap();
    let out = app.run(&id, "python3 quit.py").await;
    assert_eq!(
        (out["exit_code"].clone(), out["stdout"].clone()),
        (json!(5), json!("bye\n"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn files_written_by_one_exec_are_seen_by_the_next_and_the_files_api() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    app.run(&id, "python3 -c 'open(\"/tmp/state.txt\",\"w\").write(\"kept\")'")
        .await;
    let out = app
        .run(&id, "python3 -c 'print(open(\"/tmp/state.txt\").read())'")
        .await;
    assert_eq!(out["stdout"], "kept\n");
    let resp = app
        .get(&format!("/sandboxes/{id}/files?path=/tmp/state.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_commands_exit_127_like_a_shell() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let out = app.run(&id, "ruby -e 'puts 1'").await;
    assert_eq!(out["exit_code"], 127);
    assert_eq!(out["stdout"], "");
    assert_eq!(out["stderr"], "sh: 1: ruby: not found\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_syntax_beyond_the_subset_exits_2_naming_it_and_bad_requests_answer_400() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let out = app.run(&id, "echo before; a=(1 2)").await;
    assert_eq!(out["exit_code"], 2);
    assert_eq!(out["stdout"], "");
    assert_eq!(
        out["stderr"],
        "sh: 1: syntax not supported by the stacyvm shell: arrays\n"
    );
    let out = app.run(&id, "python3 -c 'print(1)' | wc -c").await;
    assert_eq!(
        (out["exit_code"].clone(), out["stdout"].clone()),
        (json!(0), json!("2\n"))
    );
    assert_error(
        &app.exec(&id, json!({"command": "  "})).await,
        400,
        "bad_request",
        "command is empty",
    );
    assert_error_contains(
        &app.exec(&id, json!({"command": "python3", "mode": "interactive"}))
            .await,
        400,
        "bad_request",
        "unknown variant `interactive`",
    );
    assert_error_contains(
        &app.exec(&id, json!({"args": []})).await,
        400,
        "bad_request",
        "missing field `command`",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_timeouts_are_checked_against_the_maximum() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_error(
        &app.exec(&id, json!({"command": "python3 -V", "timeout": "11m"})).await,
        429,
        "resource_limit",
        "timeout 11m0s is above the maximum of 10m0s",
    );
    assert_error(
        &app.exec(&id, json!({"command": "python3 -V", "timeout": "soon"})).await,
        400,
        "bad_request",
        "invalid duration \"soon\": expected a number followed by a unit such as 30s",
    );
    let (status, _) = app.exec(&id, json!({"command": "python3 -V", "timeout": "1.5s"})).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_mode_frames_the_output_as_ndjson_with_the_exit_code_last() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let resp = app
        .post(&format!("/sandboxes/{id}/exec"))
        .json(&json!({"command": "python3 -c 'import sys; print(1); print(2, file=sys.stderr); sys.exit(4)'", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (last, output) = lines.split_last().unwrap();
    assert_eq!(last["exit_code"], 4, "{text}");
    // Lines are regrouped within 5 ms; on a loaded machine a line may
    // still come in two pieces, so the pieces of one stream are joined.
    let mut runs: Vec<(String, String)> = vec![];
    for v in output {
        let (stream, data) = (v["stream"].as_str().unwrap(), v["data"].as_str().unwrap());
        match runs.last_mut() {
            Some((s, d)) if s == stream => d.push_str(data),
            _ => runs.push((stream.to_string(), data.to_string())),
        }
    }
    assert_eq!(
        runs,
        [
            ("stdout".to_string(), "1\n".to_string()),
            ("stderr".to_string(), "2\n".to_string())
        ],
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_output_arrives_while_the_command_still_runs() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let started = std::time::Instant::now();
    let mut resp = app
        .post(&format!("/sandboxes/{id}/exec"))
        .json(&json!({"command": "python3 -c \"import time;print(1,flush=True);time.sleep(1);print(2)\"", "stream": true}))
        .send()
        .await
        .unwrap();
    // Python writes `1` and its newline separately; the server may send
    // them as one line or two, but both long before the program ends.
    let mut text = String::new();
    let mut first_at = None;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        let stdout: String = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["stream"] == "stdout")
            .map(|v| v["data"].as_str().unwrap().to_string())
            .collect();
        if first_at.is_none() && stdout.starts_with("1\n") {
            first_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (last, output) = lines.split_last().unwrap();
    let stdout: String = output
        .iter()
        .inspect(|v| assert_eq!(v["stream"], "stdout", "{text}"))
        .map(|v| v["data"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "1\n2\n");
    assert_eq!(last["exit_code"], 0);
    assert!(total >= std::time::Duration::from_secs(1), "{total:?}");
    let first_at = first_at.expect("the first line arrived");
    assert!(
        first_at + std::time::Duration::from_millis(800) < total,
        "first line at {first_at:?}, end at {total:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_timeout_ends_with_an_error_line_after_the_partial_output() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let text = app
        .post(&format!("/sandboxes/{id}/exec"))
        .json(&json!({"command": "python3 -c 'print(\"a\", flush=True)\nwhile True: pass'", "stream": true, "timeout": "500ms"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], json!({"stream": "stdout", "data": "a\n"}));
    assert_eq!(
        lines[1],
        json!({"error": {"code": "timeout", "message": "the command ran past its timeout of 500ms and was stopped"}})
    );
    // Errors found before the command starts keep their status code.
    let got = crate::helpers::send(
        app.post(&format!("/sandboxes/{id}/exec"))
            .json(&json!({"command": "python3 -V", "stream": true, "timeout": "1y"})),
    )
    .await;
    assert_eq!(got.0, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_exec_delivers_stdin_sent_after_the_start() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let mut ws = ws_connect(&app, &id).await;
    ws_send(
        &mut ws,
        json!({"type": "start", "command": "python3 -c \"print('ready', flush=True); print(input()[::-1])\""}),
    )
    .await;
    assert_eq!(ws_stdout_line(&mut ws).await, "ready\n");
    ws_send(&mut ws, json!({"type": "stdin", "data": "stacyvm\n"})).await;
    assert_eq!(ws_stdout_line(&mut ws).await, "mvycats\n");
    let exit = ws_next(&mut ws).await.unwrap();
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["exit_code"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_stdin_close_ends_input_and_errors_are_messages() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let mut ws = ws_connect(&app, &id).await;
    ws_send(
        &mut ws,
        json!({"type": "start", "command": "python3 -c 'import sys; print(len(sys.stdin.read()))'"}),
    )
    .await;
    ws_send(&mut ws, json!({"type": "stdin", "data": "abc"})).await;
    ws_send(&mut ws, json!({"type": "stdin", "data": "de"})).await;
    ws_send(&mut ws, json!({"type": "stdin_close"})).await;
    assert_eq!(ws_stdout_line(&mut ws).await, "5\n");
    assert_eq!(ws_next(&mut ws).await.unwrap()["exit_code"], 0);

    let mut ws = ws_connect(&app, &id).await;
    ws_send(
        &mut ws,
        json!({"type": "start", "command": "python3 -V", "timeout": "forever"}),
    )
    .await;
    let err = ws_next(&mut ws).await.unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "bad_request");

    // A program waiting for input forever still ends at its deadline.
    let mut ws = ws_connect(&app, &id).await;
    ws_send(
        &mut ws,
        json!({"type": "start", "command": "python3 -c 'input()\nwhile True: pass'", "timeout": "700ms"}),
    )
    .await;
    let err = ws_next(&mut ws).await.unwrap();
    assert_eq!(
        err,
        json!({"type": "error", "code": "timeout", "message": "the command ran past its timeout of 700ms and was stopped"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_client_that_disconnects_stops_the_program() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let mut ws = ws_connect(&app, &id).await;
    ws_send(
        &mut ws,
        json!({"type": "start", "command": "python3 -c 'import time\nopen(\"beat\", \"a\").write(\"x\")\nprint(\"up\", flush=True)\nwhile True:\n    open(\"beat\", \"a\").write(\"x\"); time.sleep(0.05)'", "timeout": "60s"}),
    )
    .await;
    assert_eq!(ws_stdout_line(&mut ws).await, "up\n");
    drop(ws);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let beat = app.sandbox_dir(&id).join("workspace/beat");
    let size = std::fs::metadata(&beat).unwrap().len();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        std::fs::metadata(&beat).unwrap().len(),
        size,
        "the program kept running after the client left"
    );
    assert_error_contains(
        &app.exec(&id, json!({"command": "python3 -V", "workdir": "nope"})).await,
        400,
        "bad_request",
        "workdir",
    );
}
