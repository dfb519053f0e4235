//! The default python: CPython 3.14 started from a pre-initialized snapshot,
//! behaving like the `python3` command, never sharing state between execs;
//! CPython 3.12 beside it, and as the fallback.

use serde_json::json;

use crate::helpers::{TestApp, send, shared_image_dir};

/// Runs a python3 argv exec (no shell) and asserts 200.
async fn python(app: &TestApp, id: &str, args: &[&str]) -> serde_json::Value {
    let (status, out) = app
        .exec(id, json!({"command": "python3", "args": args, "mode": "argv"}))
        .await;
    assert_eq!(status, 200, "{out}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn python3_is_cpython_3_14_and_python_3_12_stays_available() {
    let app = TestApp::spawn().await;
    let version = "import sys; print(sys.version_info[:2])";
    let default = app.create_wasm().await;
    assert_eq!(python(&app, &default, &["-c", version]).await["stdout"], "(3, 14)\n");
    assert_eq!(python(&app, &default, &["-V"]).await["stdout"], "Python 3.14.0\n");
    for image in ["python", "python:3", "python:3.14", "python3"] {
        let id = app.create_sandbox(json!({"provider": "wasm", "image": image})).await;
        assert_eq!(
            python(&app, &id, &["-c", version]).await["stdout"],
            "(3, 14)\n",
            "{image}"
        );
    }
    // In a python:3.12 sandbox, python3 is 3.12; elsewhere python3.12 is.
    let old = app
        .create_sandbox(json!({"provider": "wasm", "image": "python:3.12"}))
        .await;
    assert_eq!(python(&app, &old, &["-c", version]).await["stdout"], "(3, 12)\n");
    assert_eq!(
        app.run(&default, &format!("python3.12 -c '{version}'")).await["stdout"],
        "(3, 12)\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_python_state_carries_over_from_one_exec_to_the_next() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let poison = "import json, builtins, sys, os\n\
                  json.leak = 1; builtins.leak = 2; sys.modules['leak'] = json\n\
                  sys.path.append('/leak'); os.environ['LEAK'] = '1'; sys.setrecursionlimit(50)\n\
                  print('poisoned')";
    assert_eq!(python(&app, &id, &["-c", poison]).await["stdout"], "poisoned\n");
    let check = "import json, builtins, sys, os\n\
                 print(hasattr(json, 'leak'), hasattr(builtins, 'leak'), 'leak' in sys.modules,\n\
                 '/leak' in sys.path, 'LEAK' in os.environ, sys.getrecursionlimit() > 50)";
    assert_eq!(
        python(&app, &id, &["-c", check]).await["stdout"],
        "False False False False False True\n"
    );
    // The snapshot's random state is reseeded for every exec.
    let draw = ["-c", "import random, uuid; print(random.getrandbits(64), uuid.uuid4())"];
    let first = python(&app, &id, &draw).await["stdout"].clone();
    let second = python(&app, &id, &draw).await["stdout"].clone();
    assert_ne!(first, second);
}

#[tokio::test(flavor = "multi_thread")]
async fn python3_takes_c_m_a_script_and_stdin_like_the_real_command() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let show = "import sys, os\nprint(__name__, sys.argv, os.getcwd())\n";
    std::fs::write(app.sandbox_dir(&id).join("workspace/show.py"), show).unwrap();
    std::fs::write(
        app.sandbox_dir(&id).join("workspace/main.py"),
        "import helper\nprint(helper.VALUE, __file__)\n",
    )
    .unwrap();
    std::fs::write(app.sandbox_dir(&id).join("workspace/helper.py"), "VALUE = 41 + 1\n").unwrap();

    let out = python(&app, &id, &["-c", "import sys; print(sys.argv)", "a", "b"]).await;
    assert_eq!(out["stdout"], "['-c', 'a', 'b']\n");
    let out = python(&app, &id, &["-m", "show", "x"]).await;
    assert_eq!(out["stdout"], "__main__ ['/workspace/show.py', 'x'] /workspace\n");
    let out = python(&app, &id, &["show.py", "y"]).await;
    assert_eq!(out["stdout"], "__main__ ['show.py', 'y'] /workspace\n");
    // A script imports the modules beside it, written after the snapshot.
    let out = python(&app, &id, &["main.py"]).await;
    assert_eq!(out["stdout"], "42 /workspace/main.py\n");
    let (status, out) = app
        .exec(
            &id,
            json!({"command": "python3", "args": ["-", "z"], "mode": "argv", "stdin": "import sys\nprint(sys.argv, 6*7)\n"}),
        )
        .await;
    assert_eq!((status, out["stdout"].clone()), (200, json!("['-', 'z'] 42\n")));
    let (status, out) = app
        .exec(
            &id,
            json!({"command": "python3", "mode": "argv", "stdin": "print('from stdin')"}),
        )
        .await;
    assert_eq!((status, out["stdout"].clone()), (200, json!("from stdin\n")));
}

#[tokio::test(flavor = "multi_thread")]
async fn python3_exit_statuses_and_errors_match_the_real_command() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let status = |out: &serde_json::Value| (out["exit_code"].clone(), out["stdout"].clone(), out["stderr"].clone());

    let out = python(&app, &id, &["-c", "import sys; sys.exit(300)"]).await;
    assert_eq!(status(&out), (json!(44), json!(""), json!("")));
    let out = python(&app, &id, &["-c", "raise SystemExit('bye')"]).await;
    assert_eq!(status(&out), (json!(1), json!(""), json!("bye\n")));
    let out = python(&app, &id, &["-c", "print('out'); import os; os._exit(9)"]).await;
    assert_eq!(out["exit_code"], 9);
    let out = python(
        &app,
        &id,
        &["-c", "import atexit; atexit.register(print, 'at exit'); print('main')"],
    )
    .await;
    assert_eq!(status(&out), (json!(0), json!("main\nat exit\n"), json!("")));
    let out = python(&app, &id, &["-c", "def f():\n    1/0\nf()"]).await;
    assert_eq!(out["exit_code"], 1);
    assert_eq!(
        out["stderr"],
        "Traceback (most recent call last):\n  File \"<string>\", line 3, in <module>\n    f()\n    ~^^\n  \
         File \"<string>\", line 2, in f\n    1/0\n    ~^~\nZeroDivisionError: division by zero\n"
    );
    let out = python(&app, &id, &["-c", "x = ("]).await;
    assert_eq!(out["exit_code"], 1);
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .ends_with("SyntaxError: '(' was never closed\n"),
        "{out}"
    );
    let out = python(&app, &id, &["missing.py"]).await;
    assert_eq!(
        status(&out),
        (
            json!(2),
            json!(""),
            json!("python3: can't open file '/workspace/missing.py': [Errno 44] No such file or directory\n")
        )
    );
    let out = python(&app, &id, &["-Z"]).await;
    assert_eq!(out["exit_code"], 2);
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .starts_with("Unknown option: -Z\nusage: python3"),
        "{out}"
    );
    // Deep recursion is a RecursionError, not a crash.
    let out = python(&app, &id, &["-c", "def f(n): return f(n + 1)\nf(0)"]).await;
    assert_eq!(out["exit_code"], 1);
    assert!(out["stderr"].as_str().unwrap().contains("RecursionError"), "{out}");
    let out = python(
        &app,
        &id,
        &["-c", "def f(n): return n if n == 900 else f(n + 1)\nprint(f(0))"],
    )
    .await;
    assert_eq!(status(&out), (json!(0), json!("900\n"), json!("")));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_quota_holds_for_the_3_14_image_without_overshoot() {
    // wasi-libc reports a failed file stream as EIO (29), whatever the
    // host's reason; pwrite and truncate carry ENOSPC (51).
    let app = TestApp::spawn_with(|s| s.sandbox.disk_quota_mb = 1).await;
    let id = app.create_wasm().await;
    let write = "import os\ntry:\n    with open('big', 'wb') as f:\n        f.write(b'x' * 2_000_000)\nexcept OSError as e:\n    print('OSError', e.errno)\nprint(os.path.getsize('big') <= 1 << 20)";
    let out = python(&app, &id, &["-c", write]).await;
    assert_eq!(out["stdout"], "OSError 29\nTrue\n", "{out}");
    let pwrite = "import os\nfd = os.open('p', os.O_WRONLY | os.O_CREAT)\ntry:\n    os.pwrite(fd, b'y' * 2_000_000, 0)\nexcept OSError as e:\n    print('OSError', e.errno)";
    assert_eq!(python(&app, &id, &["-c", pwrite]).await["stdout"], "OSError 51\n");
    let grow = "import os\ntry:\n    os.truncate('t', 5_000_000)\nexcept OSError as e:\n    print('OSError', e.errno)";
    std::fs::write(app.sandbox_dir(&id).join("workspace/t"), b"").unwrap();
    assert_eq!(python(&app, &id, &["-c", grow]).await["stdout"], "OSError 51\n");
    let small = "open('small', 'w').write('ok'); print(open('small').read())";
    assert_eq!(python(&app, &id, &["-c", small]).await["stdout"], "ok\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_cannot_build_the_3_14_image_runs_python_on_3_12() {
    // The fetched images and compile cache come from the shared directory;
    // the 3.14 image is missing and its build cannot run.
    let images = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(shared_image_dir()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with('.') && name != "python-3.14" {
            std::os::unix::fs::symlink(entry.path(), images.path().join(&name)).unwrap();
        }
    }
    let dir = images.path().to_path_buf();
    let app = TestApp::spawn_with(move |s| {
        s.wasm.image_dir = Some(dir);
        s.wasm.build_python = Some("/nonexistent/python3".into());
    })
    .await;
    let id = app.create_wasm().await;
    let out = python(&app, &id, &["-c", "import sys; print(sys.version_info[:2])"]).await;
    assert_eq!(out["stdout"], "(3, 12)\n");
    let (status, body) = send(app.get("/providers")).await;
    assert_eq!(status, 200, "{body}");

    // Asked to prepare the images, the same settings fail instead.
    let mut settings = stacyvm::settings::Settings::default();
    settings.wasm.image_dir = Some(images.path().to_path_buf());
    settings.wasm.build_python = Some("/nonexistent/python3".into());
    let catalog = stacyvm::runtime::Catalog::built_in().unwrap();
    let err = stacyvm::provider::wasm::prepare_images(&settings, &catalog)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("cannot run /nonexistent/python3 to build image python-3.14"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_3_14_image_reaches_no_network_not_even_the_server_itself() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let port = app
        .base
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let probe = format!(
        "import socket\n\
         try:\n    socket.create_connection(('example.com', 80), timeout=2)\nexcept OSError as e:\n    print(type(e).__name__)\n\
         try:\n    socket.socket().connect(('127.0.0.1', {port}))\nexcept OSError as e:\n    print(type(e).__name__)\n"
    );
    let out = python(&app, &id, &["-c", &probe]).await;
    assert_eq!(out["stdout"], "gaierror\nPermissionError\n", "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standard_library_is_readable_but_not_writable() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let probe = [
        "import os, json",
        "print(os.path.exists(json.__file__), json.__file__)",
        "for path in ('/python/json/__init__.py', '/python/evil.py'):",
        "    try:",
        "        open(path, 'a').write('x')",
        "    except OSError as e:",
        "        print(type(e).__name__)",
        "try:",
        "    os.remove('/python/os.py')",
        "except OSError as e:",
        "    print(type(e).__name__)",
    ]
    .join("\n");
    let out = python(&app, &id, &["-c", &probe]).await;
    assert_eq!(
        out["stdout"], "True /python/json/__init__.py\nPermissionError\nPermissionError\nPermissionError\n",
        "{out}"
    );
}
