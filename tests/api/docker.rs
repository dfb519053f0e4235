//! The docker provider against the real daemon: containers, limits, files,
//! recovery, and what happens when the daemon is missing.
//!
//! Every test that needs a daemon starts with [`docker_or_skip`]: on a
//! laptop without Docker it skips loudly; under CI (`CI=true` or
//! `STACYVM_REQUIRE_DOCKER=1`) a missing daemon fails the test. The images
//! come from `.ci/docker-setup.sh`; nothing is pulled.

use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use std::collections::HashMap;

use bollard::query_parameters::{CreateContainerOptions, ListContainersOptions, RemoveContainerOptions};
use serde_json::{Value, json};
use stacyvm::settings::Settings;

use crate::helpers::{TestApp, assert_error, assert_error_contains, send, ws_connect, ws_next, ws_send};

const BUSYBOX: &str = "stacyvm-test-busybox:latest";
const PYTHON: &str = "stacyvm-test-python:latest";

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var("STACYVM_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

/// The daemon, or None (after a loud message) when there is none and none
/// is required.
pub(crate) async fn docker_or_skip() -> Option<Docker> {
    // Server warnings and errors show with a failing test's output.
    tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("stacyvm=warn")
        .try_init()
        .ok();
    let why = match Docker::connect_with_local_defaults() {
        Ok(docker) => match tokio::time::timeout(Duration::from_secs(5), docker.ping()).await {
            Ok(Ok(_)) => {
                let docker = docker
                    .negotiate_version()
                    .await
                    .expect("the daemon reports its API version");
                if docker.inspect_image(BUSYBOX).await.is_ok() {
                    return Some(docker);
                }
                format!("the image {BUSYBOX} is missing; run .ci/docker-setup.sh")
            }
            Ok(Err(e)) => format!("the daemon does not answer: {e}"),
            Err(_) => "the daemon does not answer within 5s".into(),
        },
        Err(e) => format!("cannot connect: {e}"),
    };
    if required() {
        panic!("a Docker daemon is required here (CI=true or STACYVM_REQUIRE_DOCKER=1) but {why}");
    }
    eprintln!("SKIPPED: no Docker daemon for the docker provider tests ({why}); run .ci/docker-setup.sh");
    None
}

async fn has_image(docker: &Docker, image: &str) -> bool {
    if docker.inspect_image(image).await.is_ok() {
        return true;
    }
    if required() {
        panic!("the image {image} is required under CI; .ci/docker-setup.sh builds it");
    }
    eprintln!("SKIPPED (in part): the image {image} is missing; run .ci/docker-setup.sh");
    false
}

/// Removes every container a test server made; test runtimes end before a
/// server's own shutdown could.
pub(crate) async fn remove_containers_of(docker: &Docker, app: &TestApp) {
    remove_containers_in(docker, app.data_dir.path()).await;
}

async fn remove_containers_in(docker: &Docker, data_dir: &Path) {
    let dir = std::fs::canonicalize(data_dir).unwrap();
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("stacyvm.data_dir={}", dir.display())],
        )])),
        ..Default::default()
    };
    for c in docker.list_containers(Some(options)).await.unwrap() {
        let force = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        docker.remove_container(&c.id.unwrap(), Some(force)).await.ok();
    }
}

fn docker_settings(s: &mut Settings) {
    s.docker.default_image = BUSYBOX.into();
    s.docker.recheck_interval = Duration::from_millis(200);
}

pub(crate) async fn spawn_docker() -> TestApp {
    TestApp::spawn_with(docker_settings).await
}

async fn create_docker(app: &TestApp, body: Value) -> String {
    let mut body = body;
    body["provider"] = json!("docker");
    app.create_sandbox(body).await
}

fn container(id: &str) -> String {
    format!("stacyvm-{id}")
}

async fn container_exists(docker: &Docker, id: &str) -> bool {
    docker.inspect_container(&container(id), None).await.is_ok()
}

/// Waits up to `limit` for `check` to hold.
async fn eventually<F: std::future::Future<Output = bool>>(limit: Duration, mut check: impl FnMut() -> F) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Command lines of every process in the container, seen from the host.
async fn processes(docker: &Docker, id: &str) -> Vec<String> {
    let top = docker.top_processes(&container(id), None).await.unwrap();
    let titles = top.titles.unwrap_or_default();
    let cmd = titles.iter().position(|t| t == "CMD" || t == "COMMAND").unwrap();
    top.processes
        .unwrap_or_default()
        .into_iter()
        .map(|p| p[cmd].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_sandbox_runs_commands_with_exit_codes_stderr_env_workdir_and_stdin() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let (status, created) = send(
        app.post("/sandboxes")
            .json(&json!({"provider": "docker", "memory_mb": 256})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["provider"], "docker");
    assert_eq!(created["image"], BUSYBOX);
    assert_eq!(created["state"], "running");
    let id = created["id"].as_str().unwrap();

    let out = app.run(id, "echo hello").await;
    assert_eq!(
        (out["exit_code"].clone(), out["stdout"].clone(), out["stderr"].clone()),
        (json!(0), json!("hello\n"), json!(""))
    );
    let out = app.run(id, "exit 42").await;
    assert_eq!(out["exit_code"], 42);
    let out = app.run(id, "echo oops >&2; echo out").await;
    assert_eq!(
        (out["stdout"].clone(), out["stderr"].clone()),
        (json!("out\n"), json!("oops\n"))
    );

    let (_, out) = app
        .exec(
            id,
            json!({"command": "echo $GREETING", "env": {"GREETING": "hi there"}}),
        )
        .await;
    assert_eq!(out["stdout"], "hi there\n");
    let (_, out) = app.exec(id, json!({"command": "pwd"})).await;
    assert_eq!(out["stdout"], "/workspace\n");
    let (_, out) = app.exec(id, json!({"command": "pwd", "workdir": "/tmp"})).await;
    assert_eq!(out["stdout"], "/tmp\n");
    let (_, out) = app
        .exec(id, json!({"command": "cat; echo", "stdin": "from stdin"}))
        .await;
    assert_eq!(out["stdout"], "from stdin\n");
    // Shell mode quotes args; argv mode passes them untouched.
    let (_, out) = app
        .exec(id, json!({"command": "printf '%s|'", "args": ["a b", "$HOME", "it's"]}))
        .await;
    assert_eq!(out["stdout"], "a b|$HOME|it's|");
    let (_, out) = app
        .exec(
            id,
            json!({"command": "printf", "mode": "argv", "args": ["%s|", "a b", "c;d"]}),
        )
        .await;
    assert_eq!(out["stdout"], "a b|c;d|");
    let (_, out) = app.exec(id, json!({"command": "no-such-program"})).await;
    assert_eq!(out["exit_code"], 127);

    // Files persist between execs.
    app.run(id, "echo kept > note.txt").await;
    assert_eq!(app.run(id, "cat /workspace/note.txt").await["stdout"], "kept\n");

    assert_error(
        &app.exec(id, json!({"command": "pwd", "workdir": "/nope"})).await,
        400,
        "bad_request",
        "workdir /nope does not exist in the sandbox",
    );
    assert_error(
        &app.exec(id, json!({"command": "pwd", "workdir": "/workspace/note.txt"}))
            .await,
        400,
        "bad_request",
        "workdir /workspace/note.txt is not a directory",
    );
    // The container is hardened.
    let out = app.run(id, "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status").await;
    assert_eq!(out["stdout"], "CapEff:\t0000000000000000\nNoNewPrivs:\t1\n");
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_files_route_works_on_a_docker_sandbox() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app, json!({})).await;
    let f = |route: &str| format!("/sandboxes/{id}/files{route}");
    let (status, body) = send(
        app.post(&f(""))
            .json(&json!({"path": "dir/a.txt", "content": "hello", "mode": "0600"})),
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "written"})));
    let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let (status, body) = send(app.put(&f("?path=/tmp/bin.dat")).body(bytes.clone())).await;
    assert_eq!((status, body), (200, json!({"status": "written"})));
    let got = app.get(&f("?path=/tmp/bin.dat")).send().await.unwrap();
    assert_eq!(got.headers()["content-type"], "application/octet-stream");
    assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
    let out = app.run(&id, "md5sum /tmp/bin.dat | cut -c1-32").await;
    let digest = app.run(&id, "head -c 300000 /tmp/bin.dat | md5sum | cut -c1-32").await;
    assert_eq!(out["stdout"], digest["stdout"]);
    let (status, _) = send(
        app.post(&f(""))
            .json(&json!({"path": "b64.bin", "content": "AAH/", "encoding": "base64"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(app.run(&id, "od -An -tu1 b64.bin").await["stdout"], "   0   1 255\n");

    let (_, stat) = send(app.get(&f("/stat?path=dir/a.txt"))).await;
    assert_eq!(stat["name"], "a.txt");
    assert_eq!(stat["path"], "/workspace/dir/a.txt");
    assert_eq!(stat["size"], 5);
    assert_eq!(stat["mode"], "0600");
    assert_eq!(stat["is_dir"], false);
    assert!(stat["mod_time"].as_str().unwrap().ends_with('Z'), "{stat}");

    // A name with a newline and a leading dash is listed intact.
    app.run(&id, "printf x > \"$(printf 'odd\\nname')\"; touch ./-dash")
        .await;
    let (_, list) = send(app.get(&f("/list?path=/workspace"))).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["-dash", "b64.bin", "dir", "odd\nname"]);
    assert_eq!(list[2]["is_dir"], true);
    assert_eq!(list[2]["path"], "/workspace/dir");
    let (_, list) = send(app.get(&f("/list?path=dir/a.txt"))).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "a.txt");

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
    assert_eq!(app.run(&id, "cat moved/b.txt").await["stdout"], "hello");

    assert_error(
        &send(app.delete(&f("?path=moved"))).await,
        409,
        "conflict",
        "directory /workspace/moved is not empty; pass recursive=true to delete it",
    );
    let (status, body) = send(app.delete(&f("?path=moved&recursive=true"))).await;
    assert_eq!((status, body), (200, json!({"status": "deleted"})));
    assert_error(
        &send(app.get(&f("/stat?path=moved"))).await,
        404,
        "not_found",
        "file /workspace/moved not found",
    );
    assert_error(
        &send(app.get(&f("?path=nothing.txt"))).await,
        404,
        "not_found",
        "file /workspace/nothing.txt not found",
    );
    assert_error(
        &send(app.delete(&f("?path=nothing.txt"))).await,
        404,
        "not_found",
        "file /workspace/nothing.txt not found",
    );
    assert_error(
        &send(app.get(&f("?path=/tmp"))).await,
        400,
        "bad_request",
        "/tmp is a directory",
    );
    assert_error(
        &send(app.post(&f("")).json(&json!({"path": "/tmp", "content": "x"}))).await,
        400,
        "bad_request",
        "/tmp is a directory",
    );
    // A symlink inside the container is followed inside the container.
    app.run(&id, "echo target > t.txt; ln -s t.txt link.txt; ln -s /etc/passwd pw")
        .await;
    let got = app.get(&f("?path=link.txt")).send().await.unwrap();
    assert_eq!(got.text().await.unwrap(), "target\n");
    let got = app.get(&f("?path=pw")).send().await.unwrap();
    assert!(got.text().await.unwrap().starts_with("root:x:0:0:"));
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_sleep_or_busy_loop_answers_408_and_no_longer_exists() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app, json!({})).await;

    let started = Instant::now();
    let (status, body) = app
        .exec(&id, json!({"command": "echo started; sleep 1000", "timeout": "1s"}))
        .await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["code"], "timeout");
    assert_eq!(
        body["message"],
        "the command ran past its timeout of 1s and was stopped"
    );
    assert_eq!(body["stdout"], "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    let (status, body) = app
        .exec(&id, json!({"command": "until false; do :; done", "timeout": "1s"}))
        .await;
    assert_eq!(status, 408, "{body}");
    // argv mode, and a child that left the wrapper's process group.
    let (status, _) = app
        .exec(
            &id,
            json!({"command": "setsid", "mode": "argv", "args": ["sleep", "1001"], "timeout": "500ms"}),
        )
        .await;
    assert_eq!(status, 408);

    let left = processes(&docker, &id).await;
    for gone in ["sleep 1000", "until false", "sleep 1001"] {
        assert!(!left.iter().any(|p| p.contains(gone)), "{gone:?} still runs: {left:?}");
    }
    // Seen from inside too: only the keep-alive remains.
    let out = app
        .run(
            &id,
            "ps -o args | grep -c -e 'sleep 100[01]' -e 'until fals[e]' || true",
        )
        .await;
    assert_eq!(out["stdout"], "0\n");
    // The sandbox still works after the kills.
    assert_eq!(app.run(&id, "echo fine").await["stdout"], "fine\n");
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allocation_over_memory_mb_is_oom_killed_and_the_answer_says_so() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app, json!({"memory_mb": 32})).await;
    // awk doubles a string until it holds about 16 MiB (obeyed), then
    // without end (violated).
    let grow =
        |limit: u64| format!("awk 'BEGIN {{ s = \"x\"; while (length(s) < {limit}) s = s s; print length(s) }}'");
    let out = app.run(&id, &grow(8 << 20)).await;
    assert_eq!(out["stdout"], format!("{}\n", 8 << 20));
    let (status, body) = app
        .exec(&id, json!({"command": format!("echo before; {}", grow(1 << 40))}))
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "resource_limit");
    assert_eq!(
        body["message"],
        "the command exceeded its memory limit of 32 MiB and was stopped"
    );
    assert_eq!(body["stdout"], "before\n");
    // A plain SIGKILL is an exit code, reported by sh as usual, not a
    // memory limit.
    let out = app.run(&id, "kill -9 $$").await;
    assert_eq!(
        (out["exit_code"].clone(), out["stderr"].clone()),
        (json!(137), json!("Killed\n"))
    );

    if has_image(&docker, PYTHON).await {
        let id = create_docker(&app, json!({"image": PYTHON, "memory_mb": 64})).await;
        let alloc = |mb: u32| format!("python3 -c \"b = b'a' * ({mb} << 20); print(len(b) >> 20)\"");
        assert_eq!(app.run(&id, &alloc(16)).await["stdout"], "16\n");
        let (status, body) = app.exec(&id, json!({"command": alloc(200)})).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(
            body["message"],
            "the command exceeded its memory limit of 64 MiB and was stopped"
        );
    }
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_is_contained_by_the_pids_limit() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = TestApp::spawn_with(|s| {
        docker_settings(s);
        s.docker.pids_limit = 64;
    })
    .await;
    let id = create_docker(&app, json!({})).await;
    let (status, body) = app
        .exec(
            &id,
            json!({"command": "bomb() { bomb | bomb & }; bomb; sleep 30", "timeout": "3s"}),
        )
        .await;
    assert_eq!(status, 408, "{body}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            processes(&docker, &id).await.len() <= 3
        })
        .await,
        "the bomb is still there: {:?}",
        processes(&docker, &id).await
    );
    assert_eq!(app.run(&id, "echo still here").await["stdout"], "still here\n");
    let (status, _) = send(app.get("/health")).await;
    assert_eq!(status, 200);
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_connections_fail_on_the_internal_and_none_networks_yet_preview_reaches_the_container() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app, json!({})).await;
    let out = app.run(&id, "nc -w 2 1.1.1.1 80 </dev/null; echo exit=$?").await;
    assert_ne!(out["stdout"], "exit=0\n", "{out}");
    // The host still reaches the container: preview works.
    app.run(
        &id,
        "mkdir -p www && echo served > www/index.html && httpd -p 8080 -h /workspace/www",
    )
    .await;
    let got = app
        .get(&format!("/sandboxes/{id}/preview/8080/index.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.text().await.unwrap(), "served\n");

    let none = TestApp::spawn_with(|s| {
        docker_settings(s);
        s.docker.network = "none".into();
    })
    .await;
    let id = create_docker(&none, json!({})).await;
    let out = none.run(&id, "nc -w 2 1.1.1.1 80 </dev/null; echo exit=$?").await;
    assert_eq!(out["stdout"], "exit=1\n", "{out}");
    assert_error_contains(
        &send(none.get(&format!("/sandboxes/{id}/preview/8080/index.html"))).await,
        422,
        "unsupported",
        "docker.network is \"none\"",
    );
    remove_containers_of(&docker, &app).await;
    remove_containers_of(&docker, &none).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_and_ttl_expiry_remove_the_container_and_leave_no_volume() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app, json!({})).await;
    let inspect = docker.inspect_container(&container(&id), None).await.unwrap();
    // /workspace is part of the writable layer: no volume to leave behind.
    assert_eq!(inspect.mounts, Some(vec![]));
    let labels = inspect.config.unwrap().labels.unwrap();
    assert_eq!(labels["stacyvm.sandbox"], id);
    assert_eq!(labels["stacyvm.tenant"], "default");
    let (status, body) = send(app.delete(&format!("/sandboxes/{id}"))).await;
    assert_eq!((status, body), (200, json!({"status": "destroyed"})));
    assert!(!container_exists(&docker, &id).await);
    let (status, _) = send(app.delete(&format!("/sandboxes/{id}"))).await;
    assert_eq!(status, 200);

    let id = create_docker(&app, json!({"ttl": "1s"})).await;
    assert!(container_exists(&docker, &id).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            !container_exists(&docker, &id).await
        })
        .await
    );
    assert_eq!(send(app.get(&format!("/sandboxes/{id}"))).await.0, 404);
}

/// Starts a server on `data_dir`, which outlives it.
async fn spawn_on(data_dir: &Path, on_shutdown: &str) -> TestApp {
    let (dir, policy) = (data_dir.to_path_buf(), on_shutdown.to_string());
    TestApp::spawn_with(move |s| {
        docker_settings(s);
        s.data_dir = dir;
        s.docker.on_shutdown = policy;
    })
    .await
}

/// A bare container with the given labels, as a crashed server leaves one.
async fn plant(docker: &Docker, name: &str, labels: std::collections::HashMap<String, String>) {
    let body = ContainerCreateBody {
        image: Some(BUSYBOX.into()),
        cmd: Some(vec!["sleep".into(), "600".into()]),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(name.into()),
        ..Default::default()
    };
    docker.create_container(Some(options), body).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_readopts_registered_containers_and_removes_unregistered_ones() {
    let Some(docker) = docker_or_skip().await else { return };
    let data = tempfile::tempdir().unwrap();
    let first = spawn_on(data.path(), "keep").await;
    let kept = create_docker(&first, json!({})).await;
    let lost = create_docker(&first, json!({})).await;
    first.run(&kept, "echo survived > state.txt").await;
    let labels = docker
        .inspect_container(&container(&kept), None)
        .await
        .unwrap()
        .config
        .unwrap()
        .labels
        .unwrap();
    drop(first);
    // The server stops in the background; its containers stay.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(container_exists(&docker, &kept).await);

    // While it is down: a container of this server that no registry entry
    // knows, one of another server, and a registered container gone.
    let mut orphan = labels.clone();
    orphan.insert("stacyvm.sandbox".into(), "sb_00000000000000000000".into());
    let orphan_name = format!("stacyvm-test-orphan-{kept}");
    plant(&docker, &orphan_name, orphan).await;
    let mut foreign = labels.clone();
    foreign.insert("stacyvm.instance".into(), "someoneelse".into());
    let foreign_name = format!("stacyvm-test-foreign-{kept}");
    plant(&docker, &foreign_name, foreign).await;
    let force = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    docker
        .remove_container(&container(&lost), Some(force.clone()))
        .await
        .unwrap();

    let second = spawn_on(data.path(), "remove").await;
    assert!(
        docker.inspect_container(&orphan_name, None).await.is_err(),
        "the orphan is left"
    );
    assert!(
        docker.inspect_container(&foreign_name, None).await.is_ok(),
        "another server's container was removed"
    );
    docker.remove_container(&foreign_name, Some(force)).await.unwrap();
    assert_eq!(send(second.get(&format!("/sandboxes/{lost}"))).await.0, 404);
    let (status, body) = send(second.get(&format!("/sandboxes/{kept}"))).await;
    assert_eq!((status, body["provider"].clone()), (200, json!("docker")));
    assert_eq!(second.run(&kept, "cat state.txt").await["stdout"], "survived\n");

    // With on_shutdown = remove, stopping the server removes its containers.
    drop(second);
    assert!(
        eventually(Duration::from_secs(10), || async {
            !container_exists(&docker, &kept).await
        })
        .await
    );
    remove_containers_in(&docker, data.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_that_is_neither_local_nor_pullable_is_a_400_naming_it() {
    let Some(_docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let started = Instant::now();
    let got = send(
        app.post("/sandboxes")
            .json(&json!({"provider": "docker", "image": "localhost:1/stacyvm-no-such-image:1"})),
    )
    .await;
    assert_error_contains(
        &got,
        400,
        "bad_request",
        "docker image \"localhost:1/stacyvm-no-such-image:1\" is not present locally and could not be pulled",
    );
    assert!(started.elapsed() < Duration::from_secs(65));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_daemon_makes_docker_unavailable_while_wasm_keeps_serving() {
    let app = TestApp::spawn_with(|s| {
        docker_settings(s);
        s.docker.host = Some("unix:///nonexistent.sock".into());
    })
    .await;
    let (status, docker) = send(app.get("/providers/docker")).await;
    assert_eq!(status, 200);
    assert_eq!(docker["available"], false);
    assert_eq!(
        docker["reason"],
        "cannot reach the Docker daemon at unix:///nonexistent.sock: Socket not found: /nonexistent.sock"
    );
    let got = send(app.post("/sandboxes").json(&json!({"provider": "docker"}))).await;
    assert_error(
        &got,
        503,
        "unavailable",
        "the docker provider is unavailable: cannot reach the Docker daemon at unix:///nonexistent.sock: Socket not found: /nonexistent.sock",
    );
    let id = app.create_wasm().await;
    let out = app.run(&id, "python3 -c 'print(6 * 7)'").await;
    assert_eq!(out["stdout"], "42\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_that_appears_later_is_picked_up_and_one_that_goes_away_is_noticed() {
    let Some(_docker) = docker_or_skip().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let host = format!("unix://{}", socket.display());
    let app = TestApp::spawn_with(|s| {
        docker_settings(s);
        s.docker.host = Some(host.clone());
    })
    .await;
    let available = || async { send(app.get("/providers/docker")).await.1["available"] == true };
    assert!(!available().await);
    // The daemon "starts": its socket appears.
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).unwrap();
    assert!(
        eventually(Duration::from_secs(5), available).await,
        "the daemon was not picked up"
    );
    let id = create_docker(&app, json!({})).await;
    assert_eq!(app.run(&id, "echo up").await["stdout"], "up\n");
    // The daemon "stops": the next call or recheck notices.
    std::fs::remove_file(&socket).unwrap();
    assert!(eventually(Duration::from_secs(5), || async { !available().await }).await);
    let got = app.exec(&id, json!({"command": "echo down"})).await;
    assert_eq!(got.0, 503, "{}", got.1);
    assert_eq!(got.1["code"], "unavailable");
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).unwrap();
    assert!(eventually(Duration::from_secs(5), available).await);
    send(app.delete(&format!("/sandboxes/{id}"))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_docker_output_arrives_while_the_command_still_runs() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app, json!({})).await;
    let started = Instant::now();
    let mut resp = app
        .post(&format!("/sandboxes/{id}/exec"))
        .json(&json!({"command": "echo 1; sleep 1; echo oops >&2; echo 2", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let first = resp.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(
        serde_json::from_slice::<Value>(&first).unwrap(),
        json!({"stream": "stdout", "data": "1\n"})
    );
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let total = started.elapsed();
    let rest = String::from_utf8(rest).unwrap();
    let lines: Vec<Value> = rest.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{rest}");
    // The daemon copies stdout and stderr apart, so their relative order
    // is not kept.
    let mut output = lines[..2].to_vec();
    output.sort_by_key(|l| l["stream"].to_string());
    assert_eq!(
        output,
        [
            json!({"stream": "stderr", "data": "oops\n"}),
            json!({"stream": "stdout", "data": "2\n"})
        ]
    );
    assert_eq!(lines[2]["exit_code"], 0);
    eprintln!("docker streaming: first chunk after {first_at:?}, end after {total:?}");
    assert!(
        first_at + Duration::from_millis(800) < total,
        "first chunk at {first_at:?}, end at {total:?}"
    );

    // Output past the cap is neither sent nor kept; a streamed timeout
    // ends with its error line after the partial output.
    let text = app
        .post(&format!("/sandboxes/{id}/exec"))
        .json(&json!({"command": "echo a; sleep 1000", "stream": true, "timeout": "700ms"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], json!({"stream": "stdout", "data": "a\n"}));
    assert_eq!(
        lines[1],
        json!({"error": {"code": "timeout", "message": "the command ran past its timeout of 700ms and was stopped"}})
    );
    assert!(!processes(&docker, &id).await.iter().any(|p| p.contains("sleep 1000")));
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_docker_output_stops_at_the_cap() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = TestApp::spawn_with(|s| {
        docker_settings(s);
        s.exec.output_limit_bytes = 1000;
    })
    .await;
    let id = create_docker(&app, json!({})).await;
    let text = app
        .post(&format!("/sandboxes/{id}/exec"))
        .json(&json!({"command": "yes | head -c 5000; echo done >&2", "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let streamed = |kind: &str| -> String {
        lines
            .iter()
            .filter(|l| l["stream"] == kind)
            .map(|l| l["data"].as_str().unwrap())
            .collect()
    };
    assert_eq!(streamed("stdout"), "y\n".repeat(500));
    assert_eq!(streamed("stderr"), "done\n");
    assert_eq!(lines.last().unwrap()["exit_code"], 0, "{text}");
    // The same bytes as the whole result.
    let out = app.run(&id, "yes | head -c 5000").await;
    assert_eq!(out["stdout"], "y\n".repeat(500));
    assert_eq!(out["truncated"], true);
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_websocket_exec_feeds_stdin_while_the_command_runs() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app, json!({})).await;
    let mut ws = ws_connect(&app, &id).await;
    ws_send(
        &mut ws,
        json!({"type": "start", "command": "echo ready; read line; echo \"$line\" | rev"}),
    )
    .await;
    // The command runs before any input: its first line comes first.
    assert_eq!(
        ws_next(&mut ws).await.unwrap(),
        json!({"type": "stdout", "data": "ready\n"})
    );
    ws_send(&mut ws, json!({"type": "stdin", "data": "stacyvm\n"})).await;
    assert_eq!(
        ws_next(&mut ws).await.unwrap(),
        json!({"type": "stdout", "data": "mvycats\n"})
    );
    let exit = ws_next(&mut ws).await.unwrap();
    assert_eq!(exit["type"], "exit", "{exit}");
    assert_eq!(exit["exit_code"], 0);

    // stdin_close is an EOF for the command.
    let mut ws = ws_connect(&app, &id).await;
    ws_send(&mut ws, json!({"type": "start", "command": "wc -c"})).await;
    ws_send(&mut ws, json!({"type": "stdin", "data": "abc"})).await;
    ws_send(&mut ws, json!({"type": "stdin", "data": "de"})).await;
    ws_send(&mut ws, json!({"type": "stdin_close"})).await;
    let out = ws_next(&mut ws).await.unwrap();
    assert_eq!(out["type"], "stdout");
    assert_eq!(out["data"].as_str().unwrap().trim(), "5");
    assert_eq!(ws_next(&mut ws).await.unwrap()["exit_code"], 0);

    // A command waiting for input forever still ends at its deadline.
    let mut ws = ws_connect(&app, &id).await;
    ws_send(
        &mut ws,
        json!({"type": "start", "command": "read line; sleep 1000", "timeout": "700ms"}),
    )
    .await;
    assert_eq!(
        ws_next(&mut ws).await.unwrap(),
        json!({"type": "error", "code": "timeout", "message": "the command ran past its timeout of 700ms and was stopped"})
    );
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_websocket_client_that_disconnects_stops_the_program() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app, json!({})).await;
    let mut ws = ws_connect(&app, &id).await;
    ws_send(
        &mut ws,
        json!({"type": "start", "command": "echo up; while :; do date >> /workspace/beat; sleep 0.1; done", "timeout": "60s"}),
    )
    .await;
    assert_eq!(
        ws_next(&mut ws).await.unwrap(),
        json!({"type": "stdout", "data": "up\n"})
    );
    drop(ws);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let lines = |out: Value| out["stdout"].as_str().unwrap().trim().parse::<u64>().unwrap();
    let before = lines(app.run(&id, "wc -l < /workspace/beat").await);
    assert!(before > 0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        lines(app.run(&id, "wc -l < /workspace/beat").await),
        before,
        "the program kept running after the client left"
    );
    let left = processes(&docker, &id).await;
    assert!(
        !left.iter().any(|p| p.contains("/workspace/beat")),
        "still runs: {left:?}"
    );

    // The same for a streamed exec whose reader goes away: the provider
    // sees its output receiver closed and kills the command.
    let mut resp = app
        .post(&format!("/sandboxes/{id}/exec"))
        .json(&json!({"command": "while :; do date >> /workspace/beat2; echo x; sleep 0.1; done", "stream": true, "timeout": "60s"}))
        .send()
        .await
        .unwrap();
    resp.chunk().await.unwrap().unwrap();
    drop(resp);
    let stopped = eventually(Duration::from_secs(5), || async {
        !processes(&docker, &id)
            .await
            .iter()
            .any(|p| p.contains("/workspace/beat2"))
    })
    .await;
    assert!(stopped, "the streamed command kept running after its reader left");
    let before = lines(app.run(&id, "wc -l < /workspace/beat2").await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(lines(app.run(&id, "wc -l < /workspace/beat2").await), before);
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_and_file_operations_run_as_nobody_unless_docker_user_asks_for_root() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app, json!({})).await;
    let out = app
        .run(
            &id,
            "id -u; id -g; stat -c '%u:%g %a' /workspace; touch mine.txt && echo wrote",
        )
        .await;
    assert_eq!(out["stdout"], "65534\n65534\n65534:65534 755\nwrote\n");
    // The image's own files are out of reach.
    let out = app.run(&id, "echo x >> /etc/passwd").await;
    assert_ne!(out["exit_code"], 0);
    assert!(out["stderr"].as_str().unwrap().contains("Permission denied"), "{out}");

    // What the API writes, and the parents it makes, belong to the user.
    let f = |route: &str| format!("/sandboxes/{id}/files{route}");
    let (status, _) = send(
        app.post(&f(""))
            .json(&json!({"path": "new/sub/a.txt", "content": "hi"})),
    )
    .await;
    assert_eq!(status, 200);
    let out = app
        .run(
            &id,
            "stat -c '%u:%g %a %n' new new/sub new/sub/a.txt; echo more >> new/sub/a.txt && touch new/sub/b.txt && echo ok",
        )
        .await;
    assert_eq!(
        out["stdout"],
        "65534:65534 755 new\n65534:65534 755 new/sub\n65534:65534 644 new/sub/a.txt\nok\n"
    );
    // An existing directory keeps its owner and mode.
    let (status, _) = send(app.post(&f("")).json(&json!({"path": "/tmp/t.txt", "content": "t"}))).await;
    assert_eq!(status, 200);
    let out = app.run(&id, "stat -c '%u:%g %a' /tmp /tmp/t.txt").await;
    assert_eq!(out["stdout"], "0:0 1777\n65534:65534 644\n");
    // Move, chmod and delete act as the user: on its files they work...
    let (status, _) = send(
        app.post(&f("/move"))
            .json(&json!({"old_path": "new/sub/a.txt", "new_path": "new/c.txt"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        app.post(&f("/chmod"))
            .json(&json!({"path": "new/c.txt", "mode": "0600"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(app.run(&id, "cat new/c.txt").await["stdout"], "himore\n");
    let (status, _) = send(app.delete(&f("?path=new&recursive=true"))).await;
    assert_eq!(status, 200);
    // ...and on root's they are refused like any command of the user.
    assert_error_contains(
        &send(app.delete(&f("?path=/etc/passwd"))).await,
        400,
        "bad_request",
        "Permission denied",
    );

    let root = TestApp::spawn_with(|s| {
        docker_settings(s);
        s.docker.user = "0:0".into();
    })
    .await;
    let rid = create_docker(&root, json!({})).await;
    let out = root.run(&rid, "id -u; grep CapEff /proc/self/status").await;
    assert_eq!(out["stdout"], "0\nCapEff:\t0000000000000000\n");
    remove_containers_of(&docker, &app).await;
    remove_containers_of(&docker, &root).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_spares_what_ran_before_the_command_and_commands_running_beside_it() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app, json!({})).await;
    // A server left in the background by an earlier exec.
    app.run(&id, "setsid sh -c 'exec sleep 700' </dev/null >/dev/null 2>&1 &")
        .await;
    // A command still running beside the one that will time out.
    let beside = {
        let (client, url) = (app.client.clone(), app.url(&format!("/sandboxes/{id}/exec")));
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"command": "sleep 701; echo done", "timeout": "60s"}))
                .send()
                .await
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            processes(&docker, &id).await.iter().any(|p| p == "sleep 701")
        })
        .await
    );
    let (status, body) = app
        .exec(
            &id,
            json!({"command": "setsid sleep 702 & while :; do :; done", "timeout": "1s"}),
        )
        .await;
    assert_eq!(status, 408, "{body}");
    let left = processes(&docker, &id).await;
    assert!(!left.iter().any(|p| p == "sleep 702"), "{left:?}");
    for kept in ["sleep 700", "sleep 701"] {
        assert!(left.iter().any(|p| p == kept), "{kept:?} was killed: {left:?}");
    }
    beside.abort();
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_writable_layer_is_limited_to_the_disk_quota_where_the_storage_driver_can() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = TestApp::spawn_with(|s| {
        docker_settings(s);
        s.sandbox.disk_quota_mb = 64;
    })
    .await;
    let id = create_docker(&app, json!({})).await;
    let size = docker
        .inspect_container(&container(&id), None)
        .await
        .unwrap()
        .host_config
        .and_then(|h| h.storage_opt)
        .and_then(|o| o.get("size").cloned());
    let (_, stats) = send(app.get(&format!("/sandboxes/{id}/stats"))).await;
    match size {
        Some(size) => {
            assert_eq!(size, "64m");
            assert_eq!(stats["disk_limit_bytes"], 64 << 20, "{stats}");
            // Under the quota (obeyed), then over it (violated), in /workspace.
            let out = app.run(&id, "head -c 16777216 /dev/zero > fits.bin && echo ok").await;
            assert_eq!(out["stdout"], "ok\n");
            // The driver's error varies (ENOSPC, EDQUOT, EIO on btrfs); the
            // write stops short of the quota either way.
            let out = app
                .run(
                    &id,
                    "head -c 134217728 /dev/zero > big.bin; echo rc=$?; wc -c < big.bin",
                )
                .await;
            let text = out["stdout"].as_str().unwrap();
            let written: u64 = text.lines().nth(1).unwrap().trim().parse().unwrap();
            assert!(text.starts_with("rc=1\n") && written < 64 << 20, "{out}");
            let got = send(
                app.put(&format!("/sandboxes/{id}/files?path=upload.bin"))
                    .body(vec![0u8; 60 << 20]),
            )
            .await;
            assert_error(
                &got,
                429,
                "resource_limit",
                "writing /workspace/upload.bin would exceed the sandbox's disk quota of 64 MiB",
            );
        }
        None => {
            // The daemon here really cannot: it refuses a size outright.
            let body = ContainerCreateBody {
                image: Some(BUSYBOX.into()),
                host_config: Some(HostConfig {
                    storage_opt: Some(HashMap::from([("size".to_string(), "64m".to_string())])),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let refused = docker.create_container(None::<CreateContainerOptions>, body).await;
            let message = refused.expect_err("the daemon accepted a size limit").to_string();
            assert!(message.contains("storage-opt"), "{message}");
            assert!(stats.get("disk_limit_bytes").is_none(), "{stats}");
            eprintln!("NOTE: this daemon's storage driver cannot limit a container's size; only the fallback ran");
        }
    }
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_allowed_images_admits_matching_images_and_refuses_the_rest() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = TestApp::spawn_with(|s| {
        docker_settings(s);
        s.docker.allowed_images = vec!["stacyvm-test-busybox:*".into(), "python:3.*".into()];
    })
    .await;
    let id = create_docker(&app, json!({"image": BUSYBOX})).await;
    assert_eq!(app.run(&id, "echo in").await["stdout"], "in\n");
    // Untagged means :latest, as Docker reads it.
    create_docker(&app, json!({"image": "stacyvm-test-busybox"})).await;
    for image in [
        "stacyvm-test-python:latest",
        "python:3.12:5000/other:1",
        "python:3.12/x",
    ] {
        assert_error(
            &send(
                app.post("/sandboxes")
                    .json(&json!({"provider": "docker", "image": image})),
            )
            .await,
            400,
            "bad_request",
            &format!(
                "docker image {image:?} is not allowed on this server; allowed images match stacyvm-test-busybox:*, python:3.*"
            ),
        );
    }
    remove_containers_of(&docker, &app).await;
}

/// A sandbox for driving the provider directly, below the HTTP layer.
fn bare_sandbox(image: &str) -> stacyvm::sandbox::Sandbox {
    use stacyvm::sandbox::id::{SandboxId, TenantId};
    let now = std::time::SystemTime::now();
    stacyvm::sandbox::Sandbox {
        id: SandboxId::generate(),
        tenant: TenantId::new("default"),
        state: stacyvm::sandbox::SandboxState::Running,
        provider: "docker".into(),
        image: image.into(),
        memory_mb: 128,
        vcpus: 1,
        created_at: now,
        expires_at: now + Duration::from_secs(600),
        metadata: Default::default(),
        owner_id: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_exec_io_stops_the_command_and_everything_it_started() {
    use stacyvm::provider::{ExecIo, ExecMode, ExecSpec, ProviderError};
    let Some(docker) = docker_or_skip().await else { return };
    let data = tempfile::tempdir().unwrap();
    let mut settings = crate::helpers::test_settings(data.path());
    docker_settings(&mut settings);
    let provider = stacyvm::provider::docker::start(&settings).await;
    let sandbox = bare_sandbox(BUSYBOX);
    provider.create(&sandbox).await.unwrap();
    let spec = |command: &str| ExecSpec {
        mode: ExecMode::Shell,
        command: command.into(),
        args: vec![],
        env: Default::default(),
        workdir: stacyvm::sandbox::path::SandboxPath::workspace(),
        timeout: Duration::from_secs(600),
        stdin: None,
    };
    // Not cancelled (obeyed): the command runs to its end.
    let out = provider
        .exec_io(&sandbox, spec("echo done"), ExecIo::default())
        .await
        .unwrap();
    assert_eq!(out.stdout, b"done\n");
    // Cancelled after a second (violated): stopped, with its escapee.
    let io = ExecIo::default();
    let cancel = io.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
    });
    let started = Instant::now();
    let got = provider
        .exec_io(&sandbox, spec("setsid sleep 605 & sleep 606"), io)
        .await;
    assert!(matches!(got, Err(ProviderError::Cancelled)), "{got:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let left = processes(&docker, sandbox.id.as_str()).await;
    assert!(!left.iter().any(|p| p.starts_with("sleep 60")), "{left:?}");
    provider.destroy(&sandbox).await.unwrap();
}
