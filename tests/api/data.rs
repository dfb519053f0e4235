//! The `python:3.15` image: CPython 3.15 with numpy, pandas, scipy and
//! scikit-learn, started from a snapshot taken after their imports, on a
//! fresh instance per exec, behind the same `python3` command line as the
//! 3.14 image and under the same limits.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, send};

/// Runs a python3 argv exec (no shell) and asserts 200.
async fn python(app: &TestApp, id: &str, args: &[&str]) -> Value {
    let (status, out) = app
        .exec(id, json!({"command": "python3", "args": args, "mode": "argv"}))
        .await;
    assert_eq!(status, 200, "{out}");
    out
}

async fn data_sandbox(app: &TestApp) -> String {
    app.create_sandbox(json!({"provider": "wasm", "image": "python:3.15"}))
        .await
}

fn outcome(out: &Value) -> (Value, Value, Value) {
    (out["exit_code"].clone(), out["stdout"].clone(), out["stderr"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn numpy_pandas_scipy_and_scikit_learn_give_correct_results() {
    let app = TestApp::spawn().await;
    let id = data_sandbox(&app).await;
    let code = "\
import numpy as np, pandas as pd, scipy, sklearn
from scipy import optimize, stats
from sklearn.linear_model import LinearRegression
print(np.__version__, pd.__version__, sklearn.__version__)
a = np.arange(12).reshape(3, 4)
print(a.sum(), a.mean(axis=0).tolist(), int(np.linalg.det(np.array([[2, 0], [0, 3]])).round()))
df = pd.DataFrame({'k': ['a', 'b', 'a', 'b'], 'v': [1, 2, 3, 4]})
print(df.groupby('k')['v'].sum().to_dict())
print(round(optimize.brentq(lambda x: x * x - 2, 0, 2), 6), round(stats.norm.cdf(1.96), 4))
X = np.arange(10).reshape(-1, 1)
model = LinearRegression().fit(X, 3 * X.ravel() + 1)
print(round(model.coef_[0], 6), round(model.intercept_, 6))
";
    let out = python(&app, &id, &["-c", code]).await;
    assert_eq!(
        outcome(&out),
        (
            json!(0),
            json!("2.5.2 3.0.6 1.9.1\n66 [4.0, 5.0, 6.0, 7.0] 6\n{'a': 4, 'b': 6}\n1.414214 0.975\n3.0 1.0\n"),
            json!("")
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_exec_reseeds_random_and_numpy_random_from_the_host() {
    let app = TestApp::spawn().await;
    let id = data_sandbox(&app).await;
    // The snapshot holds one state of each generator; fresh instances of it
    // would all draw the same numbers if the state were not reseeded.
    let draw = [
        "-c",
        "import random, numpy, tempfile; print(random.getrandbits(64), numpy.random.randint(2**62, dtype=numpy.int64), numpy.random.rand(), tempfile.mktemp())",
    ];
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let out = python(&app, &id, &draw).await;
        assert_eq!(out["exit_code"], 0, "{out}");
        let fields: Vec<String> = out["stdout"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(fields.len(), 4, "{out}");
        for field in fields {
            assert!(seen.insert(field.clone()), "{field} was drawn twice");
        }
    }
    // Seeding still makes a sequence reproducible.
    let seeded = [
        "-c",
        "import numpy, random; numpy.random.seed(1); random.seed(1); print(numpy.random.randint(1000), random.randint(0, 1000))",
    ];
    let first = python(&app, &id, &seeded).await;
    assert_eq!(outcome(&first), (json!(0), json!("37 137\n"), json!("")));
}

/// The same command line on the 3.14 and the 3.15 image: the same exit
/// status and the same output.
#[tokio::test(flavor = "multi_thread")]
async fn python3_on_the_3_15_image_takes_the_command_line_of_the_3_14_image() {
    let app = TestApp::spawn().await;
    let default = app.create_wasm().await;
    let data = data_sandbox(&app).await;
    for id in [&default, &data] {
        let dir = app.sandbox_dir(id).join("workspace");
        std::fs::write(
            dir.join("show.py"),
            "import sys, os\nprint(__name__, sys.argv, os.getcwd())\n",
        )
        .unwrap();
        std::fs::write(dir.join("main.py"), "import helper\nprint(helper.VALUE, __file__)\n").unwrap();
        std::fs::write(dir.join("helper.py"), "VALUE = 41 + 1\n").unwrap();
        std::fs::create_dir_all(dir.join("sub")).unwrap();
    }
    let cases: &[&[&str]] = &[
        &["-c", "import sys; print(sys.argv)", "a", "b"],
        &["-m", "show", "x"],
        &["show.py", "y"],
        &["main.py"],
        &["-c", "import sys; sys.exit(300)"],
        &["-c", "raise SystemExit('bye')"],
        &["-c", "print('out'); import os; os._exit(9)"],
        &["-c", "import atexit; atexit.register(print, 'at exit'); print('main')"],
        &["-c", "def f():\n    1/0\nf()"],
        &["-c", "undefined_name"],
        &["missing.py"],
        &["-Z"],
        &["-c"],
        // `sys.flags` is the snapshot's on 3.15 (see the README), so `-I` is
        // checked by what it does: no script directory first on `sys.path`.
        &["-I", "-c", "import sys; print(sys.path[0] != '')"],
        &["-u", "-c", "import sys; sys.stdout.write('unbuffered\\n')"],
        &["-O", "-c", "assert False; print('asserts off')"],
        &["-W", "error", "-c", "import warnings; warnings.warn('boom')"],
        &["-X", "dev=1", "-c", "import sys; print(sys._xoptions)"],
        &[
            "-c",
            "import os; print(os.environ['HOME'], os.environ['PWD'], os.environ.get('PYTHONUNBUFFERED'))",
        ],
        // The runners' own frames differ in number, so the traceback of a
        // runaway recursion does too: compare what the program sees.
        &[
            "-c",
            "import sys\ndef f(n): return f(n + 1)\ntry:\n    f(0)\nexcept RecursionError as e:\n    print(e); sys.exit(3)",
        ],
    ];
    for args in cases {
        let old = python(&app, &default, args).await;
        let new = python(&app, &data, args).await;
        assert_eq!(outcome(&old), outcome(&new), "python3 {args:?}");
    }
    // Standard input, the working directory, the environment.
    for id in [&default, &data] {
        let (status, out) = app
            .exec(
                id,
                json!({"command": "python3", "args": ["-", "z"], "mode": "argv", "workdir": "/workspace/sub",
                       "env": {"GREETING": "hi"},
                       "stdin": "import sys, os\nprint(sys.argv, os.getcwd(), os.environ['GREETING'], 6*7)\n"}),
            )
            .await;
        assert_eq!(
            (status, outcome(&out)),
            (200, (json!(0), json!("['-', 'z'] /workspace/sub hi 42\n"), json!("")))
        );
    }
    assert_eq!(python(&app, &data, &["-V"]).await["stdout"], "Python 3.15.0\n");
    assert_eq!(
        python(&app, &data, &["-c", "print(1)"]).await["stderr"],
        "",
        "a plain exec writes nothing to stderr"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_3_15_image_answers_to_its_names_and_python3_15_runs_it_anywhere() {
    let app = TestApp::spawn().await;
    let version = "import sys; print(sys.version_info[:2])";
    for image in ["python:3.15", "python:data"] {
        let id = app.create_sandbox(json!({"provider": "wasm", "image": image})).await;
        for command in ["python3", "python", "python3.15", "/usr/bin/python3"] {
            let out = app.run(&id, &format!("{command} -c '{version}'")).await;
            assert_eq!(out["stdout"], "(3, 15)\n", "{command} in {image}");
        }
        let out = app.run(&id, &format!("python3.14 -c '{version}'")).await;
        assert_eq!(out["stdout"], "(3, 14)\n");
    }
    for image in ["python:3.14", "python:3.12", "quickjs"] {
        let id = app.create_sandbox(json!({"provider": "wasm", "image": image})).await;
        let (status, out) = app
            .exec(
                &id,
                json!({"command": "python3.15", "args": ["-c", version], "mode": "argv"}),
            )
            .await;
        assert_eq!((status, out["stdout"].clone()), (200, json!("(3, 15)\n")), "{image}");
    }
    let default = app.create_wasm().await;
    let out = app.run(&default, &format!("python3 -c '{version}'")).await;
    assert_eq!(out["stdout"], "(3, 14)\n", "the default stays 3.14");
    let (status, providers) = send(app.get("/providers/wasm")).await;
    assert_eq!(status, 200);
    let images: Vec<&str> = providers["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert!(
        images.contains(&"python:3.15") && images.contains(&"python:data"),
        "{images:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_stops_a_3_15_loop_and_a_short_exec_finishes() {
    let app = TestApp::spawn().await;
    let id = data_sandbox(&app).await;
    let (status, out) = app
        .exec(
            &id,
            json!({"command": "python3 -c 'import numpy; print(numpy.ones(3).sum())'", "timeout": "10s"}),
        )
        .await;
    assert_eq!((status, out["stdout"].clone()), (200, json!("3.0\n")));
    let started = std::time::Instant::now();
    let got = app
        .exec(
            &id,
            json!({"command": "python3 -c 'print(\"started\", flush=True)\nwhile True: pass'", "timeout": "1s"}),
        )
        .await;
    assert_error(
        &got,
        408,
        "timeout",
        "the command ran past its timeout of 1s and was stopped",
    );
    assert_eq!(got.1["stdout"], "started\n");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fuel_budget_stops_a_3_15_computation_and_allows_a_short_one() {
    // Enough to run a short snippet from the snapshot, far too little for
    // a long loop.
    let app = TestApp::spawn_with(|s| s.exec.fuel = 2_000_000_000).await;
    let id = data_sandbox(&app).await;
    let out = app
        .run(&id, "python3 -c 'import pandas; print(pandas.Series([1, 2]).sum())'")
        .await;
    assert_eq!(outcome(&out), (json!(0), json!("3\n"), json!("")));
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
async fn memory_holds_for_the_3_15_image_and_a_sandbox_too_small_for_it_is_refused() {
    let app = TestApp::spawn().await;
    let id = app
        .create_sandbox(json!({"provider": "wasm", "image": "python:3.15", "memory_mb": 320}))
        .await;
    let out = app
        .run(
            &id,
            "python3 -c 'import numpy; a = numpy.ones(8_000_000); print(a.nbytes)'",
        )
        .await;
    assert_eq!(outcome(&out), (json!(0), json!("64000000\n"), json!("")));
    let out = app
        .run(&id, "python3 -c 'import numpy; a = numpy.ones(64_000_000)'")
        .await;
    assert_eq!(out["exit_code"], 1, "{out}");
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .contains("numpy._core._exceptions._ArrayMemoryError: Unable to allocate 488. MiB"),
        "{out}"
    );
    let out = app.run(&id, "python3 -c 'b = bytearray(400 * 1024 * 1024)'").await;
    assert_eq!(out["exit_code"], 1);
    assert!(out["stderr"].as_str().unwrap().ends_with("MemoryError\n"), "{out}");
    assert_eq!(app.run(&id, "python3 -c 'print(3)'").await["stdout"], "3\n");
    // The snapshot's heap alone is above 100 MiB.
    let got = send(
        app.post("/sandboxes")
            .json(&json!({"provider": "wasm", "image": "python:3.15", "memory_mb": 64})),
    )
    .await;
    assert_eq!(got.0, 400, "{}", got.1);
    assert_eq!(got.1["code"], "bad_request");
    let message = got.1["message"].as_str().unwrap();
    assert!(
        message.starts_with("image python:3.15 needs memory_mb of at least 1")
            && message.ends_with(": its interpreter starts with that much memory"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_quota_holds_for_the_3_15_image_through_the_sandbox_ledger() {
    let app = TestApp::spawn_with(|s| s.sandbox.disk_quota_mb = 1).await;
    let id = data_sandbox(&app).await;
    // wasi-libc (preview1) reports the quota as ENOSPC, errno 51.
    let write = "import os\ntry:\n    with open('big', 'wb') as f:\n        f.write(b'x' * 2_000_000)\nexcept OSError as e:\n    print('OSError', e.errno, e.strerror)\nprint(os.path.getsize('big') <= 1 << 20)";
    let out = python(&app, &id, &["-c", write]).await;
    assert_eq!(out["stdout"], "OSError 51 No space left on device\nTrue\n", "{out}");
    let frame = "import pandas as pd\ntry:\n    pd.DataFrame({'a': range(300_000)}).to_csv('frame.csv')\nexcept OSError as e:\n    print('OSError', e.errno)";
    assert_eq!(python(&app, &id, &["-c", frame]).await["stdout"], "OSError 51\n");
    let size: u64 = ["big", "frame.csv"]
        .iter()
        .map(|f| {
            std::fs::metadata(app.sandbox_dir(&id).join("workspace").join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    assert!(size <= 1 << 20, "the guest overshot the quota: {size} bytes");
    // Freed space can be used again.
    std::fs::remove_file(app.sandbox_dir(&id).join("workspace/big")).unwrap();
    std::fs::remove_file(app.sandbox_dir(&id).join("workspace/frame.csv")).ok();
    let small = "open('small', 'w').write('ok'); print(open('small').read())";
    assert_eq!(python(&app, &id, &["-c", small]).await["stdout"], "ok\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_3_15_image_reaches_no_network_and_cannot_write_its_library() {
    let app = TestApp::spawn().await;
    let id = data_sandbox(&app).await;
    let probe = "\
import socket, os
for target in [('example.com', 80), ('127.0.0.1', 7423)]:
    try:
        socket.create_connection(target, timeout=2)
    except (OSError, AttributeError) as e:  # the build's _socket has no getaddrinfo
        print(type(e).__name__)
for path in ('/usr/local/lib/python315.zip', '/usr/local/lib/evil.py'):
    try:
        open(path, 'a').write('x')
    except OSError as e:
        print(type(e).__name__)
print(sorted(os.listdir('/')))
";
    let out = python(&app, &id, &["-c", probe]).await;
    assert_eq!(out["exit_code"], 0, "{out}");
    let lines: Vec<&str> = out["stdout"].as_str().unwrap().lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[..2].iter().all(|l| l.ends_with("Error")), "{out}");
    assert_eq!(&lines[2..4], ["PermissionError", "PermissionError"], "{out}");
    assert_eq!(lines[4], "['tmp', 'workspace']", "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_past_the_cap_is_truncated_on_the_3_15_image() {
    let app = TestApp::spawn_with(|s| s.exec.output_limit_bytes = 1000).await;
    let id = data_sandbox(&app).await;
    let out = app.run(&id, "python3 -c 'print(\"x\" * 5000)'").await;
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(out["truncated"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn matplotlib_plots_to_a_file_in_the_sandbox() {
    let app = TestApp::spawn().await;
    let id = data_sandbox(&app).await;
    let code = "\
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.plot([1, 2, 3], [2, 4, 1])
fig.savefig('plot.png')
print(plt.get_backend())
";
    let out = python(&app, &id, &["-c", code]).await;
    assert_eq!(outcome(&out), (json!(0), json!("agg\n"), json!("")));
    let png = std::fs::read(app.sandbox_dir(&id).join("workspace/plot.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}
