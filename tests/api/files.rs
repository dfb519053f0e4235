use serde_json::json;

use crate::helpers::{TestApp, assert_error, assert_error_contains, send};

#[tokio::test(flavor = "multi_thread")]
async fn every_files_route_works_on_a_wasm_sandbox() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let f = |route: &str| format!("/sandboxes/{id}/files{route}");
    let (status, body) = send(
        app.post(&f(""))
            .json(&json!({"path": "dir/a.txt", "content": "hello", "mode": "0600"})),
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "written"})));
    let bytes: Vec<u8> = (0..=255u8).collect();
    let (status, body) = send(app.put(&f("?path=/tmp/bin.dat")).body(bytes.clone())).await;
    assert_eq!((status, body), (200, json!({"status": "written"})));
    let got = app.get(&f("?path=/tmp/bin.dat")).send().await.unwrap();
    assert_eq!(got.headers()["content-type"], "application/octet-stream");
    assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
    let (status, _) = send(
        app.post(&f(""))
            .json(&json!({"path": "b64.bin", "content": "AAH/", "encoding": "base64"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        std::fs::read(app.sandbox_dir(&id).join("workspace/b64.bin")).unwrap(),
        [0, 1, 255]
    );

    let (_, stat) = send(app.get(&f("/stat?path=dir/a.txt"))).await;
    assert_eq!(stat["name"], "a.txt");
    assert_eq!(stat["path"], "/workspace/dir/a.txt");
    assert_eq!(stat["size"], 5);
    assert_eq!(stat["mode"], "0600");
    assert_eq!(stat["is_dir"], false);
    assert!(stat["mod_time"].as_str().unwrap().ends_with('Z'));

    let (_, list) = send(app.get(&f("/list?path=/workspace"))).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b64.bin", "dir"]);
    assert_eq!(list[1]["is_dir"], true);

    let (status, body) = send(
        app.post(&f("/move"))
            .json(&json!({"old_path": "dir/a.txt", "new_path": "/workspace/moved/b.txt"})),
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "moved"})));
    let (status, body) = send(
        app.post(&f("/chmod"))
            .json(&json!({"path": "moved/b.txt", "mode": "0755"})),
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "chmod applied"})));
    assert_eq!(send(app.get(&f("/stat?path=moved/b.txt"))).await.1["mode"], "0755");

    let (_, glob) = send(app.get(&f("/glob?pattern=**/*.txt"))).await;
    assert_eq!(glob, json!(["/workspace/moved/b.txt"]));
    let (_, glob) = send(app.get(&f("/glob?pattern=/tmp/*.dat"))).await;
    assert_eq!(glob, json!(["/tmp/bin.dat"]));

    // The program sees what the API wrote.
    let out = app.run(&id, "python3 -c 'print(open(\"moved/b.txt\").read())'").await;
    assert_eq!(out["stdout"], "hello\n");

    assert_error_contains(
        &send(app.delete(&f("?path=moved"))).await,
        409,
        "conflict",
        "is not empty; pass recursive=true",
    );
    let (status, body) = send(app.delete(&f("?path=moved&recursive=true"))).await;
    assert_eq!((status, body), (200, json!({"status": "deleted"})));
    assert!(!app.sandbox_dir(&id).join("workspace/moved").exists());
    assert_error(
        &send(app.get(&f("?path=moved/b.txt"))).await,
        404,
        "not_found",
        "file /workspace/moved/b.txt not found",
    );
    assert_error(
        &send(app.delete(&f("?path=nothing"))).await,
        404,
        "not_found",
        "file /workspace/nothing not found",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_parameters_and_escaping_paths_answer_400() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let f = |route: &str| format!("/sandboxes/{id}/files{route}");
    assert_error(
        &send(app.get(&f(""))).await,
        400,
        "bad_request",
        "the path parameter is required",
    );
    assert_error(
        &send(app.get(&f("/list"))).await,
        400,
        "bad_request",
        "the path parameter is required",
    );
    assert_error(
        &send(app.get(&f("/glob"))).await,
        400,
        "bad_request",
        "the pattern parameter is required",
    );
    assert_error(
        &send(app.get(&f("?path=../../../etc/passwd"))).await,
        400,
        "bad_request",
        "path \"../../../etc/passwd\" escapes the sandbox",
    );
    assert_error(
        &send(app.post(&f("")).json(&json!({"path": "/../x", "content": ""}))).await,
        400,
        "bad_request",
        "path \"/../x\" escapes the sandbox",
    );
    assert_error(
        &send(app.post(&f("/chmod")).json(&json!({"path": "x", "mode": "rwx"}))).await,
        400,
        "bad_request",
        "mode \"rwx\" is not an octal permission such as \"0644\"",
    );
    assert_error(
        &send(app.get(&f("/glob?pattern=../*"))).await,
        400,
        "bad_request",
        "glob patterns may not contain ..",
    );
    assert_error(
        &send(app.get(&f("?path=/workspace"))).await,
        400,
        "bad_request",
        "/workspace is a directory",
    );
    assert_error(
        &send(app.delete(&f("?path=/&recursive=true"))).await,
        400,
        "bad_request",
        "refusing to delete the sandbox root",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_to_the_host_root_leads_nowhere() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    // Plant the worst link a guest could hope for, from the host side.
    std::os::unix::fs::symlink("/", app.sandbox_dir(&id).join("workspace/root")).unwrap();
    let f = |route: &str| format!("/sandboxes/{id}/files{route}");
    assert_error(
        &send(app.get(&f("?path=root/etc/passwd"))).await,
        400,
        "bad_request",
        "path /workspace/root/etc/passwd escapes the sandbox",
    );
    assert_error_contains(
        &send(
            app.post(&f(""))
                .json(&json!({"path": "root/tmp/pwned", "content": "x"})),
        )
        .await,
        400,
        "bad_request",
        "escapes the sandbox",
    );
    let out = app
        .run(&id, "python3 -c 'print(open(\"root/etc/passwd\").read())'")
        .await;
    assert_eq!(out["exit_code"], 1);
    assert!(out["stderr"].as_str().unwrap().contains("PermissionError"), "{out}");
    let out = app
        .run(
            &id,
            "python3 -c 'import os; os.symlink(\"../../../..\", \"up\"); print(os.listdir(\"up\"))'",
        )
        .await;
    assert_eq!(out["exit_code"], 1, "{out}");
    // Destroying the sandbox removes the link, not what it points at.
    let (status, _) = send(app.delete(&format!("/sandboxes/{id}"))).await;
    assert_eq!(status, 200);
    assert!(std::path::Path::new("/etc/passwd").exists());
    assert!(!app.sandbox_dir(&id).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guest_cannot_see_host_files() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let out = app.run(&id, "python3 -c 'open(\"/etc/passwd\")'").await;
    assert_eq!(out["exit_code"], 1);
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .ends_with("FileNotFoundError: [Errno 44] No such file or directory: '/etc/passwd'\n"),
        "{out}"
    );
    let out = app
        .run(&id, "python3 -c 'import os; print(sorted(os.listdir(\"/\")))'")
        .await;
    assert_eq!(out["stdout"], "['tmp', 'workspace']\n");
}
