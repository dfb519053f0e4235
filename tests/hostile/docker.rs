//! Attacks on the docker provider, run against a live server and the real
//! daemon: processes that escape a timed-out exec, clients that hang up,
//! globs and listings sized by the container, tools in the container that
//! lie, and images outside the allow-list.
//!
//! Like `tests/api/docker.rs`, every test starts with [`docker_or_skip`]:
//! without a daemon it skips loudly, and under `CI=true` or
//! `STACYVM_REQUIRE_DOCKER=1` a missing daemon fails it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use serde_json::json;
use stacyvm::settings::Settings;

use crate::helpers::{TestApp, assert_error, send};
use crate::support::{assert_refused_or_failed, assert_up};

const BUSYBOX: &str = "stacyvm-test-busybox:latest";
/// Debian with coreutils: its `stat` is a file that can be replaced (the
/// busybox shell runs its own applet whatever the file system holds).
const PYTHON: &str = "stacyvm-test-python:latest";

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var("STACYVM_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

/// The daemon, or None (after a loud message) when there is none and none
/// is required.
async fn docker_or_skip() -> Option<Docker> {
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
    eprintln!("SKIPPED: no Docker daemon for the docker hostile tests ({why}); run .ci/docker-setup.sh");
    None
}

fn docker_settings(s: &mut Settings) {
    s.docker.default_image = BUSYBOX.into();
    s.docker.recheck_interval = Duration::from_millis(200);
}

async fn spawn_docker() -> TestApp {
    TestApp::spawn_with(docker_settings).await
}

async fn create_docker(app: &TestApp) -> String {
    app.create_sandbox(json!({"provider": "docker"})).await
}

/// Removes every container a test server made; test runtimes end before a
/// server's own shutdown could.
async fn remove_containers_of(docker: &Docker, app: &TestApp) {
    let dir = std::fs::canonicalize(app.data_dir.path()).unwrap();
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

/// Command lines of every process in the container, seen from the host
/// (`docker top`), so nothing in the container can hide one.
async fn processes(docker: &Docker, id: &str) -> Vec<String> {
    let top = docker.top_processes(&format!("stacyvm-{id}"), None).await.unwrap();
    let titles = top.titles.unwrap_or_default();
    let cmd = titles.iter().position(|t| t == "CMD" || t == "COMMAND").unwrap();
    top.processes
        .unwrap_or_default()
        .into_iter()
        .map(|p| p[cmd].clone())
        .collect()
}

/// Whether only init and the keep-alive (with its `sleep 3600`) are left.
fn only_init_and_keepalive(left: &[String]) -> bool {
    left.iter()
        .all(|p| p.starts_with("/sbin/docker-init") || p.contains("trap 'exit 0' TERM") || p == "sleep 3600")
}

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

/// Starts escapees three ways (a new session, a double fork re-parented to
/// init, and a new session inside a double fork), then loops past the
/// timeout.
const ESCAPE: &str = "setsid sh -c 'sleep 600' & \
     (sleep 601 &) ; \
     (setsid sh -c 'sleep 602 & wait' &) ; \
     sleep 0.3; while :; do :; done";

#[tokio::test(flavor = "multi_thread")]
async fn processes_that_escaped_a_timed_out_exec_with_setsid_or_a_double_fork_are_killed_too() {
    let Some(docker) = docker_or_skip().await else { return };
    for user in ["65534:65534", "0:0"] {
        let app = TestApp::spawn_with(|s| {
            docker_settings(s);
            s.docker.user = user.into();
        })
        .await;
        let id = create_docker(&app).await;
        let answer = app.exec(&id, json!({"command": ESCAPE, "timeout": "2s"})).await;
        assert_eq!(answer.0, 408, "as {user}: {}", answer.1);
        assert_eq!(
            answer.1["message"], "the command ran past its timeout of 2s and was stopped",
            "as {user}"
        );
        assert_refused_or_failed(&answer);
        assert_up(&app).await;
        // Right after the answer, from the host: nothing of the exec is left.
        let left = processes(&docker, &id).await;
        assert!(only_init_and_keepalive(&left), "as {user}, still running: {left:?}");
        // And the sandbox works on.
        assert_eq!(app.run(&id, "echo alive").await["stdout"], "alive\n", "as {user}");
        remove_containers_of(&docker, &app).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_whose_client_hangs_up_is_killed_with_everything_it_started() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app).await;
    // A client that gives up after one second on a command of ten minutes.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(app.url(&format!("/sandboxes/{id}/exec")))
        .json(&json!({"command": "setsid sleep 603 & sleep 600", "timeout": "10m"}))
        .send()
        .await
        .unwrap_err();
    assert!(gave_up.is_timeout(), "{gave_up}");
    let all_gone = eventually(Duration::from_secs(5), || async {
        !processes(&docker, &id).await.iter().any(|p| p.starts_with("sleep 60"))
    })
    .await;
    assert!(all_gone, "still running: {:?}", processes(&docker, &id).await);
    assert_up(&app).await;
    assert_eq!(app.run(&id, "echo alive").await["stdout"], "alive\n");
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_glob_over_a_huge_or_deep_tree_or_with_a_pathological_pattern_stays_bounded() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = spawn_docker().await;
    let id = create_docker(&app).await;
    // 120 000 files: more than a glob examines; and a 300-level chain.
    let out = app
        .exec(
            &id,
            json!({"command": "mkdir many && cd many && seq 1 120000 | xargs touch && cd .. && \
                   d=deep; i=0; while [ $i -lt 300 ]; do d=$d/a; i=$((i+1)); done; mkdir -p $d && touch $d/end.txt && echo ok",
                   "timeout": "5m"}),
        )
        .await;
    assert_eq!((out.0, out.1["stdout"].clone()), (200, json!("ok\n")), "{}", out.1);
    let glob = |pattern: &str| {
        let url = format!("/sandboxes/{id}/files/glob?pattern={}", urlencode(pattern));
        send(app.get(&url))
    };
    let started = Instant::now();
    let (status, found) = glob("many/*").await;
    assert_eq!(status, 200);
    let n = found.as_array().unwrap().len();
    assert!(
        (1..=100_000).contains(&n),
        "a glob examines at most 100 000 entries, found {n}"
    );
    // Many `**` against a deep chain: no backtracking blow-up.
    let pathological = vec!["**/*a*"; 15].join("/") + "/end.txt";
    let (status, found) = glob(&pathological).await;
    assert_eq!(status, 200, "{found}");
    let (status, found) = glob("deep/**/end.txt").await;
    assert_eq!(status, 200);
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the globs took {:?}",
        started.elapsed()
    );
    // A pattern too deep to be of any use is refused.
    let too_deep = vec!["*"; 33].join("/");
    assert_error(
        &glob(&too_deep).await,
        400,
        "bad_request",
        "the pattern has more than 32 components",
    );
    assert_up(&app).await;
    remove_containers_of(&docker, &app).await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_whose_stat_lies_gets_a_4xx_or_a_clamped_answer_never_a_crash() {
    let Some(docker) = docker_or_skip().await else { return };
    // Root inside the container, so the image's own stat can be replaced.
    let app = TestApp::spawn_with(|s| {
        docker_settings(s);
        s.docker.user = "0:0".into();
    })
    .await;
    if docker.inspect_image(PYTHON).await.is_err() {
        assert!(
            !required(),
            "the image {PYTHON} is required under CI; .ci/docker-setup.sh builds it"
        );
        eprintln!("SKIPPED: the image {PYTHON} is missing; run .ci/docker-setup.sh");
        return;
    }
    let id = app.create_sandbox(json!({"provider": "docker", "image": PYTHON})).await;
    app.run(&id, "echo x > a.txt").await;
    let liar = |line: &str| {
        format!(
            "stat=$(command -v stat) && rm -f $stat && printf '#!/bin/sh\\necho \"{line}\"\\n' > $stat && chmod 755 $stat"
        )
    };
    let stat = || send(app.get(&format!("/sandboxes/{id}/files/stat?path=a.txt")));

    // A modification time past the year 9999 is reported as its end.
    app.run(&id, &liar("81a4 5 99999999999999")).await;
    let (status, entry) = stat().await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["mod_time"], "9999-12-31T23:59:59Z");
    assert_eq!(entry["size"], 5);

    // A size no u64 holds, or no line at all, is a 400 naming the cause.
    for line in ["81a4 99999999999999999999999 0", "garbage"] {
        app.run(&id, &liar(line)).await;
        let answer = stat().await;
        assert_error(
            &answer,
            400,
            "bad_request",
            "the container answered the stat with output stacyvm cannot read; the image needs a POSIX sh, stat and find",
        );
        assert_refused_or_failed(&answer);
    }
    assert_up(&app).await;
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_larger_than_the_download_limit_is_refused_before_it_is_read() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = TestApp::spawn_with(|s| {
        docker_settings(s);
        s.http.file_limit_bytes = 1 << 20;
        s.http.body_limit_bytes = 1 << 20;
    })
    .await;
    let id = create_docker(&app).await;
    // Just under the limit (obeyed), then a sparse file of 1 TiB (violated).
    app.run(
        &id,
        "head -c 1048576 /dev/zero > fits.bin; dd if=/dev/zero of=huge.bin bs=1 count=0 seek=1099511627776 2>/dev/null",
    )
    .await;
    let fits = app
        .get(&format!("/sandboxes/{id}/files?path=fits.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 200);
    assert_eq!(fits.bytes().await.unwrap().len(), 1 << 20);
    let answer = send(app.get(&format!("/sandboxes/{id}/files?path=huge.bin"))).await;
    assert_error(
        &answer,
        429,
        "resource_limit",
        "/workspace/huge.bin is 1099511627776 bytes, above the download limit of 1048576 bytes",
    );
    assert_up(&app).await;
    remove_containers_of(&docker, &app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_outside_the_allow_list_is_refused_before_any_pull() {
    let Some(docker) = docker_or_skip().await else { return };
    let app = TestApp::spawn_with(|s| {
        docker_settings(s);
        s.docker.allowed_images = vec!["stacyvm-test-*".into()];
    })
    .await;
    let started = Instant::now();
    for image in [
        "alpine:latest",
        "localhost:1/stacyvm-test-busybox:latest",
        "registry.example/stacyvm-test-busybox:latest",
    ] {
        let answer = send(
            app.post("/sandboxes")
                .json(&json!({"provider": "docker", "image": image})),
        )
        .await;
        assert_error(
            &answer,
            400,
            "bad_request",
            &format!("docker image {image:?} is not allowed on this server; allowed images match stacyvm-test-*"),
        );
        assert!(docker.inspect_image(image).await.is_err(), "{image} was pulled");
    }
    // Refused at once: no pull was tried (one to localhost:1 fails only after a connection attempt).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // An absurdly long reference is no reference.
    let long = format!("stacyvm-test-{}", "a".repeat(100_000));
    let answer = send(
        app.post("/sandboxes")
            .json(&json!({"provider": "docker", "image": long})),
    )
    .await;
    assert_eq!(answer.0, 400, "{}", answer.1);
    assert_eq!(answer.1["code"], "bad_request");
    assert_up(&app).await;
    remove_containers_of(&docker, &app).await;
}
