//! Attacks through the utilities image (grep, sed, awk, jq, tar, gzip, find):
//! patterns that compile to huge programs, input that nests without end,
//! programs that recurse or loop for ever, archives that climb out of the
//! sandbox or expand a thousandfold. Each runs inside its wasm guest; each
//! must end as a failure of that exec alone, with the limit held.

use serde_json::{Value, json};

use crate::helpers::{TestApp, send};
use crate::support::{assert_refused_or_failed, assert_up, host_usage};

async fn attack(app: &TestApp, id: &str, command: &str, stdin: &str) -> (u16, Value) {
    app.exec(id, json!({"command": command, "timeout": "10s", "stdin": stdin}))
        .await
}

fn stderr(answer: &(u16, Value)) -> &str {
    answer.1["stderr"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn patterns_that_compile_to_huge_programs_are_refused_by_grep_and_find() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    for command in [
        "grep 'a\\{32767\\}\\{32767\\}'",
        "grep -E '((a{1,1000}){1,1000}){1,1000}'",
        "grep -E 'a{99999}'",
    ] {
        let answer = attack(&app, &id, command, "").await;
        assert_refused_or_failed(&answer);
        assert_eq!(answer.1["exit_code"], 2, "{command}: {}", answer.1);
        assert!(
            [
                "grep: regular expression is too big\n",
                "grep: Regular expression too big\n"
            ]
            .contains(&stderr(&answer)),
            "{command}: {}",
            answer.1
        );
    }
    let answer = attack(
        &app,
        &id,
        "find . -regextype posix-basic -regex '\\(a\\{30000\\}\\)\\{30000\\}'",
        "",
    )
    .await;
    assert_refused_or_failed(&answer);
    assert!(stderr(&answer).contains("Regular expression too big"), "{}", answer.1);
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn input_and_programs_that_nest_or_recurse_without_end_crash_only_their_guest() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let deep_json = format!("{}{}", "[".repeat(500_000), "]".repeat(500_000));
    let cases = [
        ("jq .", deep_json.as_str()),
        ("awk 'function f(n) { return f(n + 1) } BEGIN { f(1) }'", ""),
        ("jq -n 'def f: [f]; f'", ""),
        ("sed -E 's/(((((((((((a)))))))))))/x/'", ""),
    ];
    for (command, stdin) in cases {
        let answer = attack(&app, &id, command, stdin).await;
        if command.starts_with("sed") {
            // Deep but finite: it simply runs.
            assert_eq!(answer.0, 200, "{}", answer.1);
            continue;
        }
        assert_refused_or_failed(&answer);
        assert_ne!(answer.0, 500, "{command}: {}", answer.1);
        assert_up(&app).await;
    }
    // The sandbox serves the next exec as usual.
    let (status, v) = attack(&app, &id, "echo '[1,2]' | jq -c .", "").await;
    assert_eq!((status, v["stdout"].as_str().unwrap()), (200, "[1,2]\n"), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn loops_in_awk_sed_and_jq_meet_the_deadline() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    for command in [
        "awk 'BEGIN { while (1) x++ }'",
        "sed ':a;s/^/x/;ba'",
        "jq -n 'repeat(1) | empty'",
        "yes | grep -v y",
    ] {
        let started = std::time::Instant::now();
        let answer = app
            .exec(&id, json!({"command": command, "timeout": "2s", "stdin": "x\n"}))
            .await;
        assert_refused_or_failed(&answer);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{command} took {:?}",
            started.elapsed()
        );
    }
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn archives_that_climb_out_or_expand_a_thousandfold_stay_inside_the_quota() {
    let app = TestApp::spawn_with(|s| s.sandbox.disk_quota_mb = 4).await;
    let id = app.create_wasm().await;
    let make = "import tarfile, io, gzip\n\
        t = tarfile.open('evil.tgz', 'w:gz')\n\
        for name in ['../../../escape', '/abs/x', 'a/../../up']:\n\
        \x20   i = tarfile.TarInfo(name); i.size = 1; t.addfile(i, io.BytesIO(b'x'))\n\
        l = tarfile.TarInfo('out'); l.type = tarfile.SYMTYPE; l.linkname = '../../..'; t.addfile(l)\n\
        i = tarfile.TarInfo('out/escape'); i.size = 1; t.addfile(i, io.BytesIO(b'x'))\n\
        h = tarfile.TarInfo('hard'); h.type = tarfile.LNKTYPE; h.linkname = '../../../../etc/passwd'; t.addfile(h)\n\
        z = tarfile.TarInfo('zeros'); z.size = 50_000_000; t.addfile(z, io.BytesIO(bytes(50_000_000)))\n\
        t.close()\n\
        open('bomb.gz', 'wb').write(gzip.compress(bytes(50_000_000)))\n";
    let (status, v) = send(
        app.post(&format!("/sandboxes/{id}/files"))
            .json(&json!({"path": "make.py", "content": make})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let answer = attack(&app, &id, "python3 make.py", "").await;
    assert_eq!(answer.1["exit_code"], 0, "{}", answer.1);
    for command in [
        "tar xzf evil.tgz",
        "gunzip -k bomb.gz",
        "zcat bomb.gz > zeros",
        "gzip -dc bomb.gz | gzip -1 | gunzip > again",
    ] {
        let answer = attack(&app, &id, command, "").await;
        assert_refused_or_failed(&answer);
        let (_, bytes) = host_usage(&app.sandbox_dir(&id));
        assert!(bytes <= 4 << 20, "{command}: the sandbox holds {bytes} bytes");
        assert_up(&app).await;
    }
    let answer = attack(
        &app,
        &id,
        "tar xzf evil.tgz 2>&1 | grep -c \"Member name contains '..'\"",
        "",
    )
    .await;
    assert_eq!(answer.1["stdout"], "2\n", "{}", answer.1);
    let data = app.data_dir.path();
    for outside in ["escape", "up", "sandboxes/escape", "sandboxes/up"] {
        assert!(
            !data.join(outside).exists(),
            "{outside} was written outside the sandbox"
        );
    }
    // `/abs/x` is written inside, as `abs/x`.
    assert!(app.sandbox_dir(&id).join("workspace/abs/x").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gzip_bomb_through_a_pipe_ends_within_the_pipe_and_the_deadline() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let answer = attack(
        &app,
        &id,
        "python3 -c \"import gzip; open('b.gz','wb').write(gzip.compress(bytes(100_000_000)))\"",
        "",
    )
    .await;
    assert_eq!(answer.1["exit_code"], 0, "{}", answer.1);
    let answer = app
        .exec(&id, json!({"command": "zcat b.gz | wc -c", "timeout": "20s"}))
        .await;
    // Either it counts all of it, or the pipe's cap or the deadline stops it.
    match answer.0 {
        200 => assert!(
            ["100000000\n", "67108864\n"].contains(&answer.1["stdout"].as_str().unwrap()) || answer.1["exit_code"] != 0,
            "{}",
            answer.1
        ),
        408 => {}
        other => panic!("{other}: {}", answer.1),
    }
    assert_up(&app).await;
}
