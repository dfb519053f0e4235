//! The command-line client against a live server: `stacyvm sandbox ...` and
//! `stacyvm template ...`, tables and `--json`, live exec output and exit
//! codes, and binary-safe copies both ways.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::helpers::{TestApp, send};
use crate::ops::{ALPHA, four_keys};

async fn run(app: &TestApp, args: &[&str]) -> Output {
    run_with(app, args, None).await
}

async fn run_with(app: &TestApp, args: &[&str], stdin: Option<Vec<u8>>) -> Output {
    let (base, key) = (app.base.clone(), app.api_key.clone());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let app = Shim { base, api_key: key };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        app.stacyvm(&refs, stdin.as_deref())
    })
    .await
    .unwrap()
}

/// Runs `stacyvm ARGS` against a server, with its key if it has one.
struct Shim {
    base: String,
    api_key: Option<String>,
}

impl Shim {
    fn stacyvm(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stacyvm"));
        cmd.args(args)
            .env("STACYVM_URL", self.base.trim_end_matches("/api/v1"))
            .env_remove("STACYVM_API_KEY")
            .env_remove("STACYVM_USER_ID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(k) = &self.api_key {
            cmd.env("STACYVM_API_KEY", k);
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_are_created_listed_read_extended_logged_and_removed_from_the_command_line() {
    let app = TestApp::spawn_with(four_keys).await;
    let id = ok(&run(
        &app,
        &[
            "sandbox", "create", "--ttl", "10m", "--meta", "team=a", "--owner", "ann",
        ],
    )
    .await)
    .trim()
    .to_string();
    assert!(id.starts_with("sb_"), "{id}");
    let (status, sb) = send(app.get(&format!("/sandboxes/{id}"))).await;
    assert_eq!(status, 200, "the key of the environment was used: {sb}");
    assert_eq!(sb["metadata"], json!({"team": "a"}));
    assert_eq!(sb["owner_id"], "ann");

    let table = ok(&run(&app, &["sandbox", "ls"]).await);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("PROVIDER") && lines[0].contains("EXPIRES"),
        "{table}"
    );
    assert!(
        lines[1].starts_with(&id) && lines[1].contains("wasm") && lines[1].contains("ann"),
        "{table}"
    );
    let listed: Value = serde_json::from_str(&ok(&run(&app, &["sandbox", "ls", "--json"]).await)).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    let got: Value = serde_json::from_str(&ok(&run(&app, &["sandbox", "get", &id, "--json"]).await)).unwrap();
    assert_eq!(got["owner_id"], "ann");
    let fields = ok(&run(&app, &["sandbox", "get", &id]).await);
    assert!(
        fields.lines().any(|l| l.starts_with("state") && l.ends_with("running")),
        "{fields}"
    );

    let extended = ok(&run(&app, &["sandbox", "extend", &id, "1h"]).await);
    assert!(extended.starts_with(&format!("{id} now expires at ")), "{extended}");
    ok(&run(&app, &["sandbox", "exec", &id, "echo logged"]).await);
    let logs = ok(&run(&app, &["sandbox", "logs", &id, "-n", "5"]).await);
    assert!(logs.contains("exec echo logged: exit 0"), "{logs}");

    let removed = ok(&run(&app, &["sandbox", "rm", &id]).await);
    assert_eq!(removed, format!("{id} destroyed\n"));
    let missing = run(&app, &["sandbox", "get", &id]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        stderr(&missing),
        format!("stacyvm: sandbox {id} not found (404 not_found)\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_streams_output_and_exits_with_the_commands_code() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let out = run(&app, &["sandbox", "exec", &id, "echo out; echo err >&2; exit 7"]).await;
    assert_eq!(out.status.code(), Some(7));
    assert_eq!((stdout(&out), stderr(&out)), ("out\n".to_string(), "err\n".to_string()));
    // A program and its arguments, quoted for the shell; env and workdir.
    let out = run(
        &app,
        &[
            "sandbox",
            "exec",
            &id,
            "-e",
            "K=v w",
            "-w",
            "/tmp",
            "--",
            "python3",
            "-c",
            "import os,sys; print(os.getcwd(), os.environ['K'], sys.argv[1:])",
            "a b",
        ],
    )
    .await;
    assert_eq!(ok(&out), "/tmp v w ['a b']\n");
    // Standard input goes to the command, bytes intact.
    let out = run_with(
        &app,
        &["sandbox", "exec", "-i", &id, "--argv", "wc", "-c"],
        Some(vec![0, 1, 2, 255, 10]),
    )
    .await;
    assert_eq!(ok(&out).trim(), "5");
    // Output arrives as it is written, not at the end.
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stacyvm"))
        .args([
            "sandbox",
            "exec",
            &id,
            "--",
            "python3",
            "-u",
            "-c",
            "import time; print('first'); time.sleep(2); print('second')",
        ])
        .env("STACYVM_URL", app.base.trim_end_matches("/api/v1"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        (line, started.elapsed(), reader)
    })
    .await
    .unwrap();
    assert_eq!(first.0, "first\n");
    assert!(
        first.1 < std::time::Duration::from_millis(1900),
        "the first line came after {:?}",
        first.1
    );
    assert!(child.wait().unwrap().success());
    // A timeout: 124 and the reason.
    let out = run(&app, &["sandbox", "exec", &id, "--timeout", "300ms", "sleep 5"]).await;
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "stacyvm: the command ran past its timeout of 300ms and was stopped\n"
    );
    // The JSON framing as the server sends it.
    let out = ok(&run(&app, &["sandbox", "exec", &id, "--json", "echo j"]).await);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], json!({"stream": "stdout", "data": "j\n"}));
    assert_eq!(lines[1]["exit_code"], 0);
    // An unknown sandbox: the server's message, exit 1.
    let out = run(&app, &["sandbox", "exec", "sb_00000000000000000000", "true"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "stacyvm: sandbox sb_00000000000000000000 not found (404 not_found)\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cp_copies_files_and_directories_both_ways_byte_for_byte() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let local = tempfile::tempdir().unwrap();
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    std::fs::write(local.path().join("blob.bin"), &every_byte).unwrap();
    let tree = local.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::write(tree.join("top.txt"), "top").unwrap();
    std::fs::write(tree.join("sub/deeper/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(tree.join("sub/deeper/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let blob = local.path().join("blob.bin");
    let remote_blob = format!("{id}:/workspace/in/blob.bin");
    ok(&run(&app, &["sandbox", "cp", blob.to_str().unwrap(), &remote_blob]).await);
    let got = app
        .get(&format!("/sandboxes/{id}/files?path=in/blob.bin"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), every_byte.as_slice());
    // Into an existing directory: under the source's name.
    ok(&run(
        &app,
        &["sandbox", "cp", tree.to_str().unwrap(), &format!("{id}:/workspace/in")],
    )
    .await);
    let (_, stat) = send(app.get(&format!("/sandboxes/{id}/files/stat?path=in/tree/sub/deeper/run.sh"))).await;
    assert_eq!(stat["mode"], "0755");
    let (_, empty) = send(app.get(&format!("/sandboxes/{id}/files/stat?path=in/tree/empty"))).await;
    assert_eq!(empty["is_dir"], true, "{empty}");

    // And back: a directory into a local directory, and a file to stdout.
    let back = tempfile::tempdir().unwrap();
    ok(&run(
        &app,
        &[
            "sandbox",
            "cp",
            &format!("{id}:/workspace/in"),
            back.path().to_str().unwrap(),
        ],
    )
    .await);
    assert_eq!(std::fs::read(back.path().join("in/blob.bin")).unwrap(), every_byte);
    assert_eq!(
        std::fs::read_to_string(back.path().join("in/tree/top.txt")).unwrap(),
        "top"
    );
    assert!(back.path().join("in/tree/empty").is_dir());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(back.path().join("in/tree/sub/deeper/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
    let to_stdout = run(&app, &["sandbox", "cp", &remote_blob, "-"]).await;
    assert!(to_stdout.status.success(), "{}", stderr(&to_stdout));
    assert_eq!(to_stdout.stdout, every_byte);
    // From stdin.
    let from_stdin = run_with(
        &app,
        &["sandbox", "cp", "-", &format!("{id}:/workspace/stdin.bin")],
        Some(vec![0, 0, 7]),
    )
    .await;
    ok(&from_stdin);
    let got = app
        .get(&format!("/sandboxes/{id}/files?path=stdin.bin"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), [0, 0, 7]);

    // Mistakes are named.
    let both_local = run(&app, &["sandbox", "cp", "a", "b"]).await;
    assert_eq!(both_local.status.code(), Some(1));
    assert_eq!(
        stderr(&both_local),
        "stacyvm: one side of cp must be SANDBOX:PATH (for example sb_0123456789abcdef0123:/workspace/file)\n"
    );
    let missing = run(
        &app,
        &[
            "sandbox",
            "cp",
            &format!("{id}:/workspace/nope"),
            back.path().to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        stderr(&missing),
        format!("stacyvm: /workspace/nope does not exist in sandbox {id}\n")
    );
    let escape = run(
        &app,
        &["sandbox", "cp", blob.to_str().unwrap(), &format!("{id}:../../etc/x")],
    )
    .await;
    assert_eq!(escape.status.code(), Some(1));
    assert!(
        stderr(&escape).contains("escapes the sandbox (400 bad_request)"),
        "{}",
        stderr(&escape)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_are_saved_listed_read_spawned_and_removed_from_the_command_line() {
    let app = TestApp::spawn().await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        json!({"name": "cli-py", "image": "python:3.14", "setup": ["echo ready > ready.txt"]}).to_string(),
    )
    .unwrap();
    let path = file.path().to_str().unwrap();
    assert_eq!(
        ok(&run(&app, &["template", "save", path]).await),
        "template cli-py created\n"
    );
    assert_eq!(
        ok(&run(&app, &["template", "save", path]).await),
        "template cli-py replaced\n"
    );
    let table = ok(&run(&app, &["template", "ls"]).await);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].ends_with("SETUP"), "{table}");
    assert!(lines[1].starts_with("cli-py") && lines[1].ends_with('1'), "{table}");
    let got: Value = serde_json::from_str(&ok(&run(&app, &["template", "get", "cli-py", "--json"]).await)).unwrap();
    assert_eq!(got["setup"], json!(["echo ready > ready.txt"]));
    let id = ok(&run(&app, &["template", "spawn", "cli-py", "--ttl", "5m"]).await)
        .trim()
        .to_string();
    let ready = app
        .get(&format!("/sandboxes/{id}/files?path=ready.txt"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ready, "ready\n");
    assert_eq!(
        ok(&run(&app, &["template", "rm", "cli-py"]).await),
        "template cli-py deleted\n"
    );
    let gone = run(&app, &["template", "get", "cli-py"]).await;
    assert_eq!(stderr(&gone), "stacyvm: template cli-py not found (404 not_found)\n");
    let not_json = run_with(&app, &["template", "save", "-"], Some(b"{oops".to_vec())).await;
    assert_eq!(not_json.status.code(), Some(1));
    assert!(
        stderr(&not_json).starts_with("stacyvm: - is not JSON"),
        "{}",
        stderr(&not_json)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_names_a_missing_key_and_an_unreachable_server() {
    let app = TestApp::spawn_with(four_keys).await;
    let anonymous = Shim {
        base: app.base.clone(),
        api_key: None,
    };
    let out = tokio::task::spawn_blocking(move || anonymous.stacyvm(&["sandbox", "ls"], None))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "stacyvm: a valid X-API-Key header is required (401 unauthorized)\n"
    );
    let with_flag = Shim {
        base: app.base.clone(),
        api_key: None,
    };
    let out = tokio::task::spawn_blocking(move || with_flag.stacyvm(&["sandbox", "ls", "--api-key", ALPHA], None))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let nowhere = Shim {
        base: "http://127.0.0.1:9/api/v1".into(),
        api_key: None,
    };
    let out = tokio::task::spawn_blocking(move || nowhere.stacyvm(&["sandbox", "ls"], None))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("stacyvm: cannot reach the server at http://127.0.0.1:9/api/v1"),
        "{}",
        stderr(&out)
    );
}
