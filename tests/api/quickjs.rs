//! The second interpreter, JavaScript on QuickJS-NG: added as a runtime file
//! and an image manifest only, and tested like python, limits included.

use serde_json::json;

use crate::helpers::{TestApp, assert_error, send};

#[tokio::test(flavor = "multi_thread")]
async fn javascript_runs_with_std_and_os_in_the_working_directory() {
    let app = TestApp::spawn().await;
    let (status, sb) = send(app.post("/sandboxes").json(&json!({"image": "javascript"}))).await;
    assert_eq!(status, 201);
    assert_eq!(sb["image"], "javascript");
    let id = sb["id"].as_str().unwrap();
    let out = app.run(id, "qjs -e 'console.log(40 + 2, os.getcwd()[0])'").await;
    assert_eq!(
        (out["exit_code"].clone(), out["stdout"].clone()),
        (json!(0), json!("42 /workspace\n"))
    );
    let (status, _) = send(app.post(&format!("/sandboxes/{id}/files")).json(&json!({
        "path": "app/main.js",
        "content": "console.log(scriptArgs.join(' '), os.getcwd()[0]); std.open('out.txt', 'w').puts('from js'); std.exit(3);"
    })))
    .await;
    assert_eq!(status, 200);
    let (_, out) = app
        .exec(id, json!({"command": "js main.js a 'b c'", "workdir": "app"}))
        .await;
    assert_eq!(out["stdout"], "main.js a b c /workspace/app\n");
    assert_eq!(out["exit_code"], 3);
    assert_eq!(
        std::fs::read_to_string(app.sandbox_dir(id).join("workspace/app/out.txt")).unwrap(),
        "from js"
    );
    // Every wasm sandbox has every runtime's commands.
    let out = app.run(id, "python3 -c 'print(open(\"app/out.txt\").read())'").await;
    assert_eq!(out["stdout"], "from js\n");
    let out = app.run(id, "qjs -e 'throw new Error(\"boom\")'").await;
    assert_eq!(out["exit_code"], 1);
    assert!(out["stderr"].as_str().unwrap().starts_with("Error: boom\n"), "{out}");
    let out = app.run(id, "node -e '1'").await;
    assert_eq!(out["exit_code"], 127);
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_limits_hold_like_pythons() {
    let app = TestApp::spawn().await;
    let id = app.create_sandbox(json!({"image": "quickjs", "memory_mb": 64})).await;
    let got = app
        .exec(
            &id,
            json!({"command": "qjs -e 'console.log(\"spin\"); while (true) {}'", "timeout": "700ms"}),
        )
        .await;
    assert_error(
        &got,
        408,
        "timeout",
        "the command ran past its timeout of 700ms and was stopped",
    );
    assert_eq!(got.1["stdout"], "spin\n");
    let out = app
        .run(
            &id,
            "qjs -e 'const a = new Uint8Array(16 * 1024 * 1024); console.log(a.length)'",
        )
        .await;
    assert_eq!(out["stdout"], "16777216\n");
    let out = app
        .run(
            &id,
            "qjs -e 'const a = []; while (true) a.push(new Uint8Array(1 << 20))'",
        )
        .await;
    assert_eq!(out["exit_code"], 1, "{out}");
    assert!(out["stderr"].as_str().unwrap().contains("out of memory"), "{out}");
    // Deep recursion traps inside QuickJS instead of raising RangeError; it
    // is reported as a crash of the program with its kind, not an internal error.
    let out = app
        .run(&id, "qjs -e 'function f(n) { return f(n + 1) + 1 } f(0)'")
        .await;
    assert_eq!(out["exit_code"], 134, "{out}");
    assert_eq!(out["trap"], "memory_out_of_bounds");
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .ends_with("stacyvm: the program crashed: wasm trap: out of bounds memory access\n"),
        "{out}"
    );
    assert_eq!(app.run(&id, "qjs -e 'console.log(1)'").await["stdout"], "1\n");
}
