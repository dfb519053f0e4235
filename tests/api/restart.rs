//! Restart safety with a real process: `kill -9` mid-use, then start again
//! on the same data directory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{send, shared_image_dir};

struct Server {
    child: Child,
    base: String,
}

fn start(data_dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stacyvm"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("STACYVM_DATA_DIR", data_dir)
        .env("STACYVM_IMAGE_DIR", shared_image_dir())
        .env("STACYVM_REAP_INTERVAL", "100ms")
        .env("STACYVM_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(addr) = line.split("addr=").nth(1) {
                tx.send(addr.trim().to_string()).ok();
                sent = true;
            }
        }
    });
    // On a fresh checkout the first server builds the images (minutes).
    let addr = rx
        .recv_timeout(Duration::from_secs(900))
        .expect("the server reports its address");
    Server {
        child,
        base: format!("http://{addr}/api/v1"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_survive_kill_9_and_start_up_cleans_what_is_stale() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut first = start(data.path());
    let create = |ttl: &str| {
        let (client, url) = (client.clone(), format!("{}/sandboxes", first.base));
        let body = json!({"ttl": ttl, "metadata": {"k": "v"}});
        async move {
            send(client.post(url).json(&body)).await.1["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let kept = create("1h").await;
    let expiring = create("2s").await;
    let vanished = create("1h").await;
    let (status, _) = send(
        client
            .post(format!("{}/sandboxes/{kept}/exec", first.base))
            .json(&json!({"command": "python3 -c 'open(\"/workspace/note.txt\",\"w\").write(\"still here\")'"})),
    )
    .await;
    assert_eq!(status, 200);

    first.child.kill().unwrap(); // SIGKILL: no graceful anything.
    first.child.wait().unwrap();
    let sandboxes = data.path().join("sandboxes");
    std::fs::remove_dir_all(sandboxes.join(&vanished)).unwrap();
    let orphan = sandboxes.join("sb_0123456789abcdef0123");
    std::fs::create_dir_all(orphan.join("workspace")).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let mut second = start(data.path());
    let (status, sb) = send(client.get(format!("{}/sandboxes/{kept}", second.base))).await;
    assert_eq!(status, 200);
    assert_eq!(sb["metadata"], json!({"k": "v"}));
    let note = client
        .get(format!("{}/sandboxes/{kept}/files?path=note.txt", second.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(note, "still here");
    for gone in [&expiring, &vanished] {
        let (status, body) = send(client.get(format!("{}/sandboxes/{gone}", second.base))).await;
        assert_eq!(status, 404, "{gone}: {body}");
    }
    assert!(!sandboxes.join(&expiring).exists());
    assert!(!orphan.exists());
    let (_, list) = send(client.get(format!("{}/sandboxes", second.base))).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}
