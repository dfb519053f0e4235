//! Pure-Python packages on demand: `pip install`, `pip list`, `pip freeze`
//! and `pip uninstall` in shell mode, and `packages` on create, against the
//! real package index through the real pip.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, send};

/// Whether the package index can be used: a missing index fails the test
/// under CI (or with STACYVM_REQUIRE_PYPI=1) and skips it, loudly,
/// elsewhere.
async fn index_reachable(test: &str) -> bool {
    let required =
        std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var("STACYVM_REQUIRE_PYPI").is_ok_and(|v| v == "1");
    let index = stacyvm::runtime::fetch::index_base();
    let probe = reqwest::Client::new()
        .get(format!("{}/humanize/", index.trim_end_matches('/')))
        .timeout(std::time::Duration::from_secs(15))
        .send()
        .await;
    match probe {
        Ok(r) if r.status().is_success() => true,
        other if !required => {
            eprintln!("SKIPPED {test}: the package index {index} cannot be used: {other:?}");
            false
        }
        other => panic!("the package index {index} cannot be used: {other:?}"),
    }
}

fn outcome(out: &Value) -> (Value, Value, Value) {
    (out["exit_code"].clone(), out["stdout"].clone(), out["stderr"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn pip_install_humanize_then_python3_imports_it_on_the_3_14_image() {
    if !index_reachable("pip_install_humanize_then_python3_imports_it_on_the_3_14_image").await {
        return;
    }
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let out = app
        .run(
            &id,
            "pip install humanize==4.12.3 && python3 -c \"import humanize; print(humanize.intcomma(1234567))\"",
        )
        .await;
    assert_eq!(
        outcome(&out),
        (
            json!(0),
            json!("Successfully installed humanize-4.12.3\n1,234,567\n"),
            json!("")
        )
    );
    // Where it went: the user site of HOME=/workspace, for 3.14 only.
    let site = app
        .sandbox_dir(&id)
        .join("workspace/.local/lib/python3.14/site-packages");
    assert!(site.join("humanize/__init__.py").is_file());
    assert!(site.join("humanize-4.12.3.dist-info/METADATA").is_file());
    let out = app
        .run(&id, "python3 -c 'import humanize, sys; print(humanize.__file__)'")
        .await;
    assert_eq!(
        out["stdout"],
        "/workspace/.local/lib/python3.14/site-packages/humanize/__init__.py\n"
    );
    // -s and -I leave the user site out, as in CPython.
    let out = app.run(&id, "python3 -s -c 'import humanize'").await;
    assert_eq!(out["exit_code"], 1);
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .ends_with("ModuleNotFoundError: No module named 'humanize'\n"),
        "{out}"
    );
    // 3.15 and 3.12 have site-packages of their own.
    for python in ["python3.15", "python3.12"] {
        let out = app.run(&id, &format!("{python} -c 'import humanize'")).await;
        assert_eq!(out["exit_code"], 1, "{python}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pip_list_freeze_and_uninstall_show_and_remove_what_was_installed() {
    if !index_reachable("pip_list_freeze_and_uninstall_show_and_remove_what_was_installed").await {
        return;
    }
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let out = app.run(&id, "pip list").await;
    assert_eq!(
        outcome(&out),
        (json!(0), json!("Package Version\n------- -------\n"), json!(""))
    );
    std::fs::write(
        app.sandbox_dir(&id).join("workspace/requirements.txt"),
        "# what this project needs\nhumanize==4.12.3  # pinned\n\n",
    )
    .unwrap();
    let out = app.run(&id, "pip install -r requirements.txt").await;
    assert_eq!(
        outcome(&out),
        (json!(0), json!("Successfully installed humanize-4.12.3\n"), json!(""))
    );
    let out = app.run(&id, "pip list && pip freeze && pip3 freeze").await;
    assert_eq!(
        out["stdout"],
        "Package  Version\n-------- -------\nhumanize 4.12.3\nhumanize==4.12.3\nhumanize==4.12.3\n"
    );
    let out = app.run(&id, "pip uninstall -y humanize").await;
    assert_eq!(
        outcome(&out),
        (json!(0), json!("Successfully uninstalled humanize-4.12.3\n"), json!(""))
    );
    let out = app.run(&id, "pip uninstall -y humanize").await;
    assert_eq!(
        outcome(&out),
        (
            json!(0),
            json!(""),
            json!("WARNING: Skipping humanize as it is not installed.\n")
        )
    );
    let out = app.run(&id, "python3 -c 'import humanize'").await;
    assert_eq!(out["exit_code"], 1);
    // Nothing of it is left in site-packages.
    let site = app
        .sandbox_dir(&id)
        .join("workspace/.local/lib/python3.14/site-packages");
    assert_eq!(std::fs::read_dir(&site).unwrap().count(), 0);
    // A second install is served from the server's cache, without pip.
    let out = app.run(&id, "pip install humanize==4.12.3").await;
    assert_eq!(
        outcome(&out),
        (json!(0), json!("Successfully installed humanize-4.12.3\n"), json!(""))
    );
    assert!(
        out["duration_ms"].as_f64().unwrap() < 2000.0,
        "a cached install ran pip again: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn packages_that_cannot_be_installed_fail_with_one_clear_line() {
    if !index_reachable("packages_that_cannot_be_installed_fail_with_one_clear_line").await {
        return;
    }
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let cases = [
        (
            "pip install lxml",
            1,
            "ERROR: lxml has no pure-Python wheel (only wheels built for particular platforms, or sources), so it cannot be installed in a wasm sandbox\n",
        ),
        (
            "pip install stacyvm-no-such-package-4c1d",
            1,
            "ERROR: no package named stacyvm-no-such-package-4c1d on the package index\n",
        ),
        (
            "pip install humanize==0.0.0.1",
            1,
            "ERROR: no version of humanize==0.0.0.1 has a pure-Python wheel for Python 3.14\n",
        ),
        (
            "pip install 'humanize @ https://example.com/h.whl'",
            1,
            "ERROR: invalid requirement: \"humanize @ https://example.com/h.whl\" (stacyvm accepts NAME, NAME[extras] and version specifiers such as NAME==1.2 or NAME>=1,<2)\n",
        ),
        (
            "pip install --index-url http://example.com/simple humanize",
            2,
            "ERROR: no such option: --index-url (stacyvm's pip accepts -r, --no-deps, -U and -q)\n",
        ),
        (
            "pip install -r missing.txt",
            1,
            "ERROR: Could not open requirements file: [Errno 2] missing.txt: No such file or directory (os error 2)\n",
        ),
    ];
    for (command, status, stderr) in cases {
        let out = app.run(&id, command).await;
        let wanted_stderr = if status == 2 {
            format!("{stderr}{}", stacyvm::provider::wasm::packages::PIP_USAGE)
        } else {
            stderr.to_string()
        };
        assert_eq!(
            outcome(&out),
            (json!(status), json!(""), json!(wanted_stderr)),
            "{command}"
        );
    }
    // A failed install in the middle of a list installs none of it.
    let out = app
        .run(&id, "pip install humanize==4.12.3 stacyvm-no-such-package-4c1d")
        .await;
    assert_eq!(out["exit_code"], 1);
    let out = app.run(&id, "pip freeze").await;
    assert_eq!(out["stdout"], "");
    assert_eq!(send(app.get("/health")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_index_fails_clearly_and_the_server_stays_healthy() {
    // Port 9 (discard) on loopback: nothing listens, the connection is refused.
    let app = TestApp::spawn_with(|s| s.wasm.package_index = Some("http://127.0.0.1:9/simple".into())).await;
    let id = app.create_wasm().await;
    let out = app.run(&id, "pip install humanize").await;
    assert_eq!(
        outcome(&out),
        (
            json!(1),
            json!(""),
            json!("ERROR: the package index http://127.0.0.1:9/simple cannot be reached\n")
        )
    );
    let got = send(
        app.post("/sandboxes")
            .json(&json!({"provider": "wasm", "packages": ["humanize"]})),
    )
    .await;
    assert_error(
        &got,
        503,
        "unavailable",
        "packages: the package index http://127.0.0.1:9/simple cannot be reached",
    );
    assert_eq!(send(app.get("/health")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn packages_on_create_are_installed_before_the_create_answers() {
    if !index_reachable("packages_on_create_are_installed_before_the_create_answers").await {
        return;
    }
    let app = TestApp::spawn().await;
    for (image, version) in [
        ("python:3.15", "3.15"),
        ("python:3.14", "3.14"),
        ("python:3.12", "3.12"),
    ] {
        let id = app
            .create_sandbox(json!({"provider": "wasm", "image": image, "packages": ["humanize==4.12.3"]}))
            .await;
        let out = app
            .run(
                &id,
                "python3 -c 'import humanize, sys; print(humanize.intcomma(1234567), sys.version_info[:2])'",
            )
            .await;
        let minor = version.split('.').nth(1).unwrap();
        assert_eq!(
            outcome(&out),
            (json!(0), json!(format!("1,234,567 (3, {minor})\n")), json!("")),
            "{image}"
        );
        let site = app
            .sandbox_dir(&id)
            .join(format!("workspace/.local/lib/python{version}/site-packages"));
        assert!(site.join("humanize").is_dir(), "{image}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_packages_on_create_are_refused_and_leave_no_sandbox() {
    if !index_reachable("bad_packages_on_create_are_refused_and_leave_no_sandbox").await {
        return;
    }
    let app = TestApp::spawn().await;
    let cases = [
        (
            json!({"provider": "wasm", "packages": ["humanize; rm -rf /"]}),
            400,
            "bad_request",
            "packages: invalid requirement: \"humanize; rm -rf /\" (stacyvm accepts NAME, NAME[extras] and version specifiers such as NAME==1.2 or NAME>=1,<2)",
        ),
        (
            json!({"provider": "wasm", "packages": ["lxml"]}),
            400,
            "bad_request",
            "packages: lxml has no pure-Python wheel (only wheels built for particular platforms, or sources), so it cannot be installed in a wasm sandbox",
        ),
        (
            json!({"provider": "wasm", "packages": ["stacyvm-no-such-package-4c1d"]}),
            400,
            "bad_request",
            "packages: no package named stacyvm-no-such-package-4c1d on the package index",
        ),
        (
            json!({"provider": "wasm", "packages": vec!["humanize"; 65]}),
            400,
            "bad_request",
            "packages may list at most 64 requirements",
        ),
        (
            json!({"provider": "wasm", "packages": "humanize"}),
            400,
            "bad_request",
            "",
        ),
        (
            json!({"provider": "docker", "packages": ["humanize"]}),
            422,
            "unsupported",
            "the docker provider cannot install packages at create; install them with a command",
        ),
    ];
    for (body, status, code, message) in cases {
        let got = send(app.post("/sandboxes").json(&body)).await;
        if message.is_empty() {
            assert_eq!((got.0, got.1["code"].clone()), (status, json!(code)), "{body}");
        } else if got.0 == 503 && body["provider"] == "docker" {
            // No Docker daemon: the provider is unavailable before anything else.
        } else {
            assert_error(&got, status, code, message);
        }
    }
    let (status, list) = send(app.get("/sandboxes")).await;
    assert_eq!((status, list), (200, json!([])));
    let dir = app.data_dir.path().join("sandboxes");
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_install_over_the_disk_quota_leaves_nothing_installed_and_nothing_charged() {
    if !index_reachable("an_install_over_the_disk_quota_leaves_nothing_installed_and_nothing_charged").await {
        return;
    }
    // tzdata unpacks to about 600 files: over 1 MiB of blocks.
    let app = TestApp::spawn_with(|s| s.sandbox.disk_quota_mb = 1).await;
    let id = app.create_wasm().await;
    let out = app.run(&id, "pip install tzdata==2025.2").await;
    assert_eq!(
        outcome(&out),
        (
            json!(1),
            json!(""),
            json!("ERROR: the packages do not fit: the sandbox's files would exceed its disk quota of 1048576 bytes\n")
        )
    );
    let site = app
        .sandbox_dir(&id)
        .join("workspace/.local/lib/python3.14/site-packages");
    assert_eq!(
        std::fs::read_dir(&site).unwrap().count(),
        0,
        "a staging directory was left"
    );
    // What the failed install charged was given back: the quota is free.
    let out = app
        .run(
            &id,
            "pip freeze; python3 -c 'open(\"f\", \"wb\").write(b\"x\" * 500_000); print(\"ok\")'",
        )
        .await;
    assert_eq!(outcome(&out), (json!(0), json!("ok\n"), json!("")));
}
