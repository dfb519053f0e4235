//! Attacks on the HTTP layer and the sandbox service: numbers that
//! overflow, glob bombs, setuid modes, oversized WebSocket messages and a
//! burst of creates against the tenant quota.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{TestApp, send, ws_connect, ws_send};
use crate::support::{assert_refused_or_failed, assert_up};

#[tokio::test(flavor = "multi_thread")]
async fn durations_built_to_overflow_are_refused() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let attacks = [
        "94522879700260684295381835.9h".to_string(),
        "340282366920938463463374607431768211455s".to_string(),
        format!("2562047.{}h", "9".repeat(100_000)),
        "2562047h".repeat(2000),
        format!("{}ns", "9".repeat(5000)),
    ];
    for ttl in &attacks {
        let answer = send(app.post("/sandboxes").json(&json!({"ttl": ttl}))).await;
        assert_refused_or_failed(&answer);
        assert_eq!(answer.0, 400, "{}", answer.1);
        let answer = send(app.post(&format!("/sandboxes/{id}/extend")).json(&json!({"ttl": ttl}))).await;
        assert_eq!(answer.0, 400, "{}", answer.1);
        let answer = app.exec(&id, json!({"command": "echo x", "timeout": ttl})).await;
        assert_eq!(answer.0, 400, "{}", answer.1);
    }
    assert_up(&app).await;
    // The limit held: nothing was created by the refused creates.
    let (_, list) = send(app.get("/sandboxes")).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn glob_bombs_are_refused_or_bounded() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    // A tree 200 directories deep and a wide directory, made on the host.
    let root = app.sandbox_dir(&id).join("workspace");
    let mut deep = root.join("deep");
    for _ in 0..200 {
        deep = deep.join("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let wide = root.join("wide");
    std::fs::create_dir_all(&wide).unwrap();
    for i in 0..3000 {
        std::fs::write(wide.join(format!("{i:05}{}", "a".repeat(200))), "").unwrap();
    }
    let glob = |pattern: String| {
        send(
            app.get(&format!("/sandboxes/{id}/files/glob"))
                .query(&[("pattern", pattern)]),
        )
    };
    for refused in ["**/".repeat(2000), format!("{}x", "*a".repeat(200)), "d/".repeat(40)] {
        let answer = glob(refused).await;
        assert_refused_or_failed(&answer);
        assert_eq!(answer.1["code"], "bad_request");
    }
    // Patterns inside the bounds answer promptly, whatever their shape.
    for pattern in [
        "**/a/**/a/**/a/**/a/**/a/**/b".to_string(),
        format!("**/{}b", "*a".repeat(100)),
        format!("wide/{}b", "*a".repeat(120)),
        "/**/*".to_string(),
    ] {
        let started = Instant::now();
        let answer = glob(pattern.clone()).await;
        assert_eq!(answer.0, 200, "{pattern}: {}", answer.1);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{pattern}: {:?}",
            started.elapsed()
        );
    }
    assert_up(&app).await;
}

/// Nests directories through directory descriptors, as deep as the entry
/// quota lets it (no path could name the bottom), and prints the depth.
const NEST_DEEP: &str = r#"
import os
fd = os.open("/workspace", os.O_RDONLY)
os.mkdir("deep", dir_fd=fd)
n = 0
try:
    while n < 200_000:
        nxt = os.open("deep" if n == 0 else "a", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
        os.mkdir("a", dir_fd=fd)
        n += 1
except OSError:
    pass
print(n)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_tree_the_guest_nests_a_hundred_thousand_deep_is_deleted_and_a_fork_of_it_refused() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let neighbour = app.create_wasm().await;
    let answer = app
        .exec(
            &id,
            json!({"command": "python3", "mode": "argv", "args": ["-c", NEST_DEEP], "timeout": "120s"}),
        )
        .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let depth: u64 = answer.1["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(depth > 90_000, "only {depth} levels: {}", answer.1);
    // A fork does not copy what it cannot measure, and says why.
    let fork = send(app.post(&format!("/sandboxes/{id}/fork")).json(&json!({}))).await;
    crate::helpers::assert_error(
        &fork,
        409,
        "conflict",
        "the sandbox's files nest deeper than 256 directories, which a fork does not copy",
    );
    let (_, list) = send(app.get("/sandboxes")).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "the failed fork left a sandbox: {list}"
    );
    // A recursive delete walks it with bounded stack and descriptors.
    let f = |p: &str| format!("/sandboxes/{id}/files{p}");
    let deleted = send(
        app.delete(&f(""))
            .query(&[("path", "/workspace/deep"), ("recursive", "true")]),
    )
    .await;
    assert_eq!(deleted.0, 200, "{}", deleted.1);
    assert_eq!(deleted.1["status"], "deleted");
    let gone = send(app.get(&f("/stat")).query(&[("path", "/workspace/deep")])).await;
    assert_eq!(gone.0, 404, "{}", gone.1);
    assert!(!app.sandbox_dir(&id).join("workspace/deep").exists());
    // The quota is whole again: the sandbox can write.
    let after = app.run(&id, "echo fine > /workspace/f && cat /workspace/f").await;
    assert_eq!(after["stdout"], "fine\n");
    assert_eq!(app.run(&neighbour, "echo ok").await["stdout"], "ok\n");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn setuid_modes_never_reach_the_host() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let f = |p: &str| format!("/sandboxes/{id}/files{p}");
    let answer = send(
        app.post(&f(""))
            .json(&json!({"path": "suid", "content": "x", "mode": "4777"})),
    )
    .await;
    assert_refused_or_failed(&answer);
    let ok = send(app.post(&f("")).json(&json!({"path": "suid", "content": "x"}))).await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    for mode in ["4755", "2777", "1777", "7777", "0o6755"] {
        let answer = send(app.post(&f("/chmod")).json(&json!({"path": "suid", "mode": mode}))).await;
        assert_refused_or_failed(&answer);
    }
    let mode = std::fs::metadata(app.sandbox_dir(&id).join("workspace/suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7000, 0, "special bits on the host: {mode:o}");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_websocket_message_ends_only_its_own_session() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = TestApp::spawn_with(|s| s.http.body_limit_bytes = 64 * 1024).await;
    let id = app.create_wasm().await;
    let mut ws = ws_connect(&app, &id).await;
    ws_send(&mut ws, json!({"type": "start", "command": "cat", "timeout": "10s"})).await;
    // 8 MiB in one message: far over the limit.
    let huge = json!({"type": "stdin", "data": "z".repeat(8 << 20)}).to_string();
    ws.send(Message::Text(huge.into())).await.ok();
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the session ends");
    // The server closed with 1009, or dropped the connection mid-message.
    assert!(matches!(code, Some(1009) | None), "{code:?}");
    assert_up(&app).await;
    let other = app.run(&id, "echo still here").await;
    assert_eq!(other["stdout"], "still here\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_creates_cannot_pass_the_tenant_quota() {
    let app = TestApp::spawn_with(|s| s.sandbox.max_per_tenant = 3).await;
    let answers = futures_util::future::join_all((0..40).map(|_| send(app.post("/sandboxes").json(&json!({}))))).await;
    let created = answers.iter().filter(|a| a.0 == 201).count();
    assert_eq!(created, 3);
    for refused in answers.iter().filter(|a| a.0 != 201) {
        assert_refused_or_failed(refused);
        assert_eq!(refused.1["code"], "resource_limit");
    }
    // Checked on the host: three sandbox directories, no more.
    let dirs = std::fs::read_dir(app.data_dir.path().join("sandboxes"))
        .unwrap()
        .count();
    assert_eq!(dirs, 3);
    assert_up(&app).await;
}
