//! Attacks on the `python:3.15` image: a command line of megabytes (it
//! becomes the source of a turn), a storm of C++ exceptions (each a wasm
//! exception on a GC heap), the reactor's door to host functions, deep
//! recursion, and many concurrent instances of its 100 MiB snapshot.

use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::support::{assert_refused_or_failed, assert_up};

async fn data_sandbox(app: &TestApp, memory_mb: u64) -> String {
    app.create_sandbox(json!({"provider": "wasm", "image": "python:3.15", "memory_mb": memory_mb}))
        .await
}

async fn python(app: &TestApp, id: &str, args: &[&str]) -> (u16, Value) {
    app.exec(
        id,
        json!({"command": "python3", "args": args, "mode": "argv", "timeout": "60s"}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_line_of_megabytes_reaches_the_guest_intact() {
    let app = TestApp::spawn().await;
    let id = data_sandbox(&app, 512).await;
    // Quotes, backslashes, newlines and non-ASCII survive the turn's source.
    let unit = "\"'\\\n\u{e9}\u{1f600}";
    let arg = unit.repeat((8 << 20) / unit.len());
    let code = "import sys, hashlib; a = sys.argv[1]; print(len(a), hashlib.sha256(a.encode()).hexdigest())";
    let (status, out) = python(&app, &id, &["-c", code, &arg]).await;
    assert_eq!(status, 200, "{out}");
    let expected = format!(
        "{} {}\n",
        arg.chars().count(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(arg.as_bytes()))
    );
    assert_eq!(out["stdout"], expected);
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_cpp_exceptions_stays_within_the_sandbox_memory() {
    let app = TestApp::spawn().await;
    let id = data_sandbox(&app, 256).await;
    // kiwisolver is C++: every unsatisfiable constraint is a C++ exception,
    // thrown and caught as a wasm exception, then raised to Python.
    let storm = "\
import kiwisolver
s = kiwisolver.Solver()
x = kiwisolver.Variable('x')
s.addConstraint(x == 1)
n = 0
for i in range(200_000):
    try:
        s.addConstraint(x == 2)
    except kiwisolver.UnsatisfiableConstraint:
        n += 1
print(n)
";
    let (status, out) = python(&app, &id, &["-c", storm]).await;
    assert_eq!((status, out["stdout"].clone()), (200, json!("200000\n")), "{out}");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reactors_door_to_host_functions_answers_that_there_is_none() {
    let app = TestApp::spawn().await;
    let id = data_sandbox(&app, 512).await;
    let probe = "\
import host
try:
    print(host.call(b'{\"op\": \"read\", \"path\": \"/etc/passwd\"}'))
except Exception as e:
    print(type(e).__name__)
";
    let (status, out) = python(&app, &id, &["-c", probe]).await;
    assert_eq!(status, 200, "{out}");
    assert_refused_or_failed(&(
        status,
        json!({"exit_code": if out["stdout"].as_str().unwrap().contains("root:") { 0 } else { 1 }}),
    ));
    assert!(!out["stdout"].as_str().unwrap().contains("root:"), "{out}");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_and_a_runaway_stack_end_that_exec_only() {
    let app = TestApp::spawn().await;
    let id = data_sandbox(&app, 512).await;
    let (status, out) = python(&app, &id, &["-c", "def f(n): return f(n + 1)\nf(0)"]).await;
    assert_eq!(status, 200);
    assert_eq!(out["exit_code"], 1);
    assert!(out["stderr"].as_str().unwrap().contains("RecursionError"), "{out}");
    // Past Python's own limit, the wasm stack's bound holds: a crash of
    // this exec (134), or Python's error, never the server.
    let (status, out) = python(
        &app,
        &id,
        &[
            "-c",
            "import sys\nsys.setrecursionlimit(10**7)\ndef f(n): return f(n + 1)\nf(0)",
        ],
    )
    .await;
    assert_refused_or_failed(&(status, out.clone()));
    assert!(matches!(out["exit_code"].as_i64(), Some(1) | Some(134)), "{out}");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_instances_of_the_snapshot_all_finish() {
    let app = TestApp::spawn_with(|s| s.exec.max_concurrent = 8).await;
    let id = data_sandbox(&app, 512).await;
    let code = "import numpy, pandas; a = numpy.ones(4_000_000); print(int(pandas.Series(a).sum()))";
    let mut runs = vec![];
    for _ in 0..24 {
        let (client, url) = (app.client.clone(), app.url(&format!("/sandboxes/{id}/exec")));
        runs.push(tokio::spawn(async move {
            let body = json!({"command": "python3", "args": ["-c", code], "mode": "argv", "timeout": "120s"});
            crate::helpers::send(client.post(url).json(&body)).await
        }));
    }
    for run in runs {
        let (status, out) = run.await.unwrap();
        assert_eq!((status, out["stdout"].clone()), (200, json!("4000000\n")), "{out}");
    }
    assert_up(&app).await;
}
