//! Attacks through wasm execs: numbers that reach an allocation, input that
//! reaches a recursion, files whose length is a lie, trees that grow without
//! end, variables that double, and clients that hang up. Each once took the
//! whole server down or held its resources; each must now end in a clean
//! failure of that exec alone.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, send};
use crate::support::{ServerProcess, assert_refused_or_failed, assert_up, host_usage};

/// Runs a shell command line with a short timeout.
async fn attack(app: &TestApp, id: &str, command: &str) -> (u16, Value) {
    app.exec(id, json!({"command": command, "timeout": "20s"})).await
}

fn stderr(answer: &(u16, Value)) -> &str {
    answer.1["stderr"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn printf_with_a_width_of_a_trillion_or_twenty_digits_fails_that_exec_only() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    for command in [
        "printf '%1000000000000d' 1",
        "printf '%99999999999999999999d' 1",
        "printf '%.99999999999999999999f' 1",
    ] {
        let answer = attack(&app, &id, command).await;
        assert_refused_or_failed(&answer);
        assert_eq!(answer.0, 200, "{command}: {}", answer.1);
        assert!(answer.1["stdout"].as_str().unwrap().len() < 1 << 20, "{command}");
    }
    // A width from an argument: printf prints within the output cap.
    let answer = attack(&app, &id, "printf '%*d' 99999999999 1").await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert!(answer.1["stdout"].as_str().unwrap().len() <= 1 << 20);
    let answer = attack(&app, &id, "printf '%1000000000000d' 1").await;
    assert_eq!(stderr(&answer), "printf: write error: formatting width too large\n");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn test_with_two_hundred_thousand_bangs_or_deep_parentheses_fails_cleanly() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    // More words than one command may have: refused before `[` runs.
    let bangs = format!("[ {} x ]", "! ".repeat(200_000));
    let answer = attack(&app, &id, &bangs).await;
    assert_refused_or_failed(&answer);
    assert_eq!(
        stderr(&answer),
        "sh: 1: the arguments are longer than 4194304 bytes or more than 65536 words\n"
    );
    // Within the word limit, runs of `!` are counted, not recursed on.
    let answer = attack(&app, &id, &format!("[ {} x ]; echo $?", "! ".repeat(60_001))).await;
    assert_eq!(answer.1["stdout"], "1\n", "{}", answer.1);
    let answer = attack(&app, &id, &format!("[ {} x ]; echo $?", "! ".repeat(60_000))).await;
    assert_eq!(answer.1["stdout"], "0\n", "{}", answer.1);
    let parens = format!("[ {} x {} ]", "'(' ".repeat(5000), "')' ".repeat(5000));
    let answer = attack(&app, &id, &parens).await;
    assert_refused_or_failed(&answer);
    assert_eq!(stderr(&answer), "sh: 1: [: parentheses nest deeper than 64 levels\n");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn command_lines_that_nest_deep_or_run_long_are_refused_before_parsing() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    for (command, message) in [
        (
            "(".repeat(200_000),
            "sh: 1: the command line nests deeper than 100 levels\n".to_string(),
        ),
        (
            format!("{}true{}", "{ ".repeat(5000), "; }".repeat(5000)),
            "sh: 1: the command line nests deeper than 100 levels\n".to_string(),
        ),
        (
            "if true; then ".repeat(3000),
            "sh: 1: the command line nests deeper than 100 levels\n".to_string(),
        ),
        (
            format!("echo {}", "${A:-".repeat(20_000)),
            "sh: 1: the command line nests deeper than 100 levels\n".to_string(),
        ),
        (
            format!("echo {}", "x".repeat(2 << 20)),
            format!(
                "sh: 1: the command line is {} bytes, above the limit of 1048576; put long scripts and data in files\n",
                (2 << 20) + 5
            ),
        ),
    ] {
        let answer = attack(&app, &id, &command).await;
        assert_refused_or_failed(&answer);
        assert_eq!(answer.1["exit_code"], 2, "{}", answer.1);
        assert_eq!(stderr(&answer), message);
    }
    // Parentheses cost the parser twice as much per level: they have their own bound.
    let answer = attack(&app, &id, &format!("{}true{}", "( ".repeat(90), " )".repeat(90))).await;
    assert_refused_or_failed(&answer);
    assert_eq!(
        stderr(&answer),
        "sh: 1: parentheses nest deeper than 16 levels in the command line\n"
    );
    let answer = attack(&app, &id, &"(( ".repeat(40)).await;
    assert_eq!(
        stderr(&answer),
        "sh: 1: parentheses nest deeper than 16 levels in the command line\n"
    );
    // Nesting within the bounds parses and runs.
    let answer = attack(&app, &id, &format!("{}echo deep{}", "( ".repeat(16), " )".repeat(16))).await;
    assert_eq!(answer.1["exit_code"], 0, "{}", answer.1);
    assert_eq!(answer.1["stdout"], "deep\n");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_at_offset_two_to_the_forty_is_refused_and_every_reader_of_the_file_survives() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let sparse = |python: &str, file: &str| {
        format!(
            "{python} -c \"import os; fd = os.open('{file}', os.O_WRONLY | os.O_CREAT); os.lseek(fd, 2**40, 0); os.write(fd, b'x')\""
        )
    };
    let answer = attack(&app, &id, &sparse("python3.12", "big")).await;
    assert_refused_or_failed(&answer);
    assert!(
        stderr(&answer).contains("OSError: [Errno 51] No space left on device"),
        "{}",
        answer.1
    );
    let answer = attack(&app, &id, &sparse("python3", "big314")).await;
    assert_refused_or_failed(&answer);
    assert!(stderr(&answer).contains("OSError"), "{}", answer.1);
    for command in [
        "truncate -s 1T big",
        "python3 -c \"open('big', 'r+b').truncate(2**40)\"",
        "python3.12 -c \"import os; os.pwrite(os.open('big', os.O_WRONLY), b'x', 2**40)\"",
    ] {
        let answer = attack(&app, &id, command).await;
        assert_refused_or_failed(&answer);
    }
    // Whatever the guest holds, every reader reads only what is there.
    let answer = attack(
        &app,
        &id,
        "wc -c big; cat big; head -c 10 big; cp big copy; cat < big; wc -c < copy",
    )
    .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["stdout"], "0 big\n0\n");
    let (_, bytes) = host_usage(&app.sandbox_dir(&id));
    assert!(bytes < 1 << 20, "the sandbox holds {bytes} bytes on the host");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_file_within_the_quota_streams_through_a_redirection() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let answer = attack(
        &app,
        &id,
        "truncate -s 200M big && wc -c < big && head -c 3 < big | wc -c",
    )
    .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["stdout"], "209715200\n3\n");
    // The whole file streams through a pipe that holds 64 KiB at a time.
    let answer = attack(&app, &id, "cat big | wc -c").await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["stdout"], "209715200\n");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn head_given_a_multibyte_flag_fails_that_exec_only() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    for command in [
        "echo x > f; head -é f",
        "head -c 1€ f",
        "tail -n ☃ f",
        "wc -ü f",
        "cut -d 'ß' -f 1 f",
    ] {
        // Whatever the utility makes of the flag is its own business: the
        // exec answers 200 and the guest did not crash.
        let answer = attack(&app, &id, command).await;
        assert_eq!(answer.0, 200, "{command}: {}", answer.1);
        assert!(answer.1.get("trap").is_none(), "{command}: {}", answer.1);
    }
    let answer = attack(&app, &id, "head -c 1€ f").await;
    assert_refused_or_failed(&answer);
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_doubling_variable_stops_at_its_cap_long_before_the_deadline() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let doubling = format!("A=0123456789abcdef; {}echo done", "A=$A$A; ".repeat(40));
    let started = Instant::now();
    let answer = app.exec(&id, json!({"command": doubling, "timeout": "5s"})).await;
    assert_refused_or_failed(&answer);
    assert_eq!(answer.1["exit_code"], 2, "{}", answer.1);
    assert_eq!(
        stderr(&answer),
        "sh: 1: an expanded word is longer than 1048576 bytes\n"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // Many variables of the largest size meet the total bound.
    let mut many = String::from("B=0123456789abcdef; ");
    many.push_str(&"B=$B$B; ".repeat(15));
    for i in 0..20 {
        many.push_str(&format!("V{i}=$B$B; "));
    }
    let answer = app.exec(&id, json!({"command": many, "timeout": "5s"})).await;
    assert_eq!(answer.1["exit_code"], 2, "{}", answer.1);
    assert!(
        stderr(&answer)
            .ends_with("the shell's variables would hold more than 16777216 bytes, or this one more than 1048576\n"),
        "{}",
        answer.1
    );
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn four_hundred_thousand_empty_directories_stop_at_the_entry_limit() {
    let app = TestApp::spawn_with(|s| s.sandbox.max_entries = 1000).await;
    let id = app.create_wasm().await;
    let mkdirs = "python3 -c \"import os\nfor i in range(400000): os.mkdir(f'd{i}')\"";
    let answer = attack(&app, &id, mkdirs).await;
    assert_refused_or_failed(&answer);
    assert!(stderr(&answer).contains("No space left on device"), "{}", answer.1);
    let (entries, _) = host_usage(&app.sandbox_dir(&id));
    assert!(entries <= 1000, "the sandbox holds {entries} entries");
    // The shell's utilities, redirections and the files API meet it too.
    let answer = attack(&app, &id, "mkdir more").await;
    assert_refused_or_failed(&answer);
    let answer = attack(&app, &id, "echo x > one-more").await;
    assert_refused_or_failed(&answer);
    let answer = send(
        app.post(&format!("/sandboxes/{id}/files"))
            .json(&json!({"path": "f.txt", "content": "x"})),
    )
    .await;
    assert_refused_or_failed(&answer);
    assert_eq!(answer.0, 429, "{}", answer.1);
    assert_eq!(
        answer.1["message"],
        "writing 1 bytes to /workspace/f.txt: the sandbox would hold more than its limit of 1000 files and directories"
    );
    let (entries, _) = host_usage(&app.sandbox_dir(&id));
    assert!(entries <= 1000, "the sandbox holds {entries} entries");
    // Removing entries gives the room back.
    let answer = attack(&app, &id, "rm -r d1 d2 d3 && mkdir again && mkdir too && echo ok").await;
    assert_eq!(answer.1["stdout"], "ok\n", "{}", answer.1);
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_execs_of_one_sandbox_share_its_disk_quota() {
    let app = TestApp::spawn_with(|s| s.sandbox.disk_quota_mb = 8).await;
    let id = app.create_wasm().await;
    let commands: Vec<String> = (0..6)
        .map(|i| format!("python3 -c \"open('f{i}', 'wb').write(b'x' * (3 << 20))\""))
        .collect();
    let answers = futures_util::future::join_all(commands.iter().map(|c| attack(&app, &id, c))).await;
    let ok = answers.iter().filter(|a| a.1["exit_code"] == 0).count();
    assert!(ok <= 2, "{ok} writes of 3 MiB fit an 8 MiB quota: {answers:?}");
    let (_, bytes) = host_usage(&app.sandbox_dir(&id));
    assert!(bytes <= 8 << 20, "the sandbox holds {bytes} bytes");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn output_redirected_to_a_file_stops_at_the_quota() {
    let app = TestApp::spawn_with(|s| s.sandbox.disk_quota_mb = 2).await;
    let id = app.create_wasm().await;
    let answer = attack(&app, &id, "yes > y; echo $?; python3 -c 'print(\"x\" * 10**8)' >> y").await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["stdout"], "1\n");
    assert!(
        stderr(&answer).starts_with("yes: standard output: No space left on device\n"),
        "{}",
        answer.1
    );
    assert_ne!(answer.1["exit_code"], 0);
    let (_, bytes) = host_usage(&app.sandbox_dir(&id));
    assert!(bytes <= 2 << 20, "the sandbox holds {bytes} bytes");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn globs_and_env_chains_built_to_recurse_stay_bounded() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    // A pattern of many components is left as it is.
    let answer = attack(&app, &id, &format!("echo {}x | wc -c", "*/".repeat(5000))).await;
    assert_eq!(answer.1["stdout"], "10002\n", "{}", answer.1);
    let answer = attack(&app, &id, &format!("echo {}", "**/".repeat(20_000))).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let answer = attack(&app, &id, &format!("{}true; echo $?", "env ".repeat(60_000))).await;
    assert_eq!(answer.1["stdout"], "0\n", "{}", answer.1);
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_lead_nowhere_outside_the_sandbox() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    // WASI makes no symlink to an absolute path...
    let answer = attack(&app, &id, "ln -s / root").await;
    assert_refused_or_failed(&answer);
    // ...and one planted on the host leads the guest and the files API
    // nowhere.
    let workspace = app.sandbox_dir(&id).join("workspace");
    std::os::unix::fs::symlink("/", workspace.join("root")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", workspace.join("pw")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/passwd", workspace.join("up")).unwrap();
    for command in ["cat pw", "cat up", "ls root/etc", "wc -c < pw"] {
        let answer = attack(&app, &id, command).await;
        assert_refused_or_failed(&answer);
        assert!(
            !answer.1["stdout"].as_str().unwrap().contains("root:"),
            "{command}: {}",
            answer.1
        );
    }
    for path in ["pw", "up", "root/etc/passwd"] {
        let answer = send(app.get(&format!("/sandboxes/{id}/files")).query(&[("path", path)])).await;
        assert_refused_or_failed(&answer);
        assert_eq!(answer.0, 400, "{}", answer.1);
    }
    assert_up(&app).await;
}

/// Threads of the server process.
fn threads(server: &ServerProcess) -> usize {
    server.threads_named("")
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_send_sleep_600_and_hang_up_leave_no_thread_behind() {
    const SLOTS: usize = 16;
    let mut server = ServerProcess::start(&[("STACYVM_MAX_CONCURRENT_EXECS", "16")]);
    let id = server.create(json!({})).await;
    server.exec(&id, json!({"command": "true"})).await;
    let before = threads(&server);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let url = server.url(&format!("/sandboxes/{id}/exec"));
    let hang_ups = (0..200).map(|_| {
        impatient
            .post(&url)
            .json(&json!({"command": "sleep 600", "timeout": "10m"}))
            .send()
    });
    let sampler = async {
        let mut peak = 0;
        for _ in 0..15 {
            peak = peak.max(server.threads_named("stacyvm-guest"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    };
    let (answers, peak) = tokio::join!(futures_util::future::join_all(hang_ups), sampler);
    assert!(answers.iter().all(|a| a.as_ref().is_err_and(|e| e.is_timeout())));
    assert!(peak <= SLOTS, "{peak} guest threads ran at once with {SLOTS} slots");
    // Within seconds every slot is free again: as many execs as there are
    // slots all run at once, and the thread count is back to normal.
    let started = Instant::now();
    loop {
        let quick = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let runs = (0..SLOTS).map(|_| async {
            let answer = quick
                .post(&url)
                .json(&json!({"command": "python3 -c 'print(40 + 2)'"}))
                .send()
                .await
                .ok()?;
            Some(answer.text().await.ok()?.contains("\"stdout\":\"42\\n\""))
        });
        let answers = futures_util::future::join_all(runs).await;
        if answers.iter().all(|a| *a == Some(true)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slots are still held 10 s after the clients left"
        );
    }
    let after = threads(&server);
    assert!(
        after <= before + SLOTS,
        "{after} threads after the storm, {before} before it (and {SLOTS} guest threads at most)"
    );
    server.assert_alive();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_stops_its_exec_before_it_writes_anything_more() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gone = impatient
        .post(app.url(&format!("/sandboxes/{id}/exec")))
        .json(&json!({"command": "sleep 2; echo late > after", "timeout": "1m"}))
        .send()
        .await;
    assert!(gone.is_err_and(|e| e.is_timeout()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !app.sandbox_dir(&id).join("workspace/after").exists(),
        "the exec ran on after its client left"
    );
    let (_, logs) = send(app.get(&format!("/sandboxes/{id}/logs"))).await;
    assert!(
        logs[0]
            .as_str()
            .unwrap()
            .ends_with("failed: the client disconnected and the command was stopped"),
        "{logs}"
    );
    assert_up(&app).await;
}
