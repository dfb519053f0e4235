//! Schemathesis fuzzes the live server from its own `GET /openapi.json`:
//! no answer may be a 5xx, and every answer must match the document's
//! status codes, content types and schemas.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{TestApp, python_required, python_venv};

fn required() -> bool {
    python_required("STACYVM_REQUIRE_SCHEMATHESIS")
}

fn schemathesis() -> Result<PathBuf, String> {
    python_venv("schemathesis").map(|venv| venv.join("bin/schemathesis"))
}

/// Examples per operation: enough to reach every documented answer of the
/// 24 operations; the run takes about 30 s on two cores.
const MAX_EXAMPLES: &str = "100";

#[tokio::test(flavor = "multi_thread")]
async fn the_server_answers_schemathesis_without_5xx_and_as_its_openapi_document_says() {
    let tool = match tokio::task::spawn_blocking(schemathesis).await.unwrap() {
        Ok(t) => t,
        Err(e) if !required() => {
            eprintln!("SKIPPED the_server_answers_schemathesis...: cannot set up the schemathesis virtualenv: {e}");
            return;
        }
        Err(e) => panic!("cannot set up the schemathesis virtualenv: {e}"),
    };
    // A docker daemon nothing listens on: docker creates answer a
    // documented 503 at once instead of pulling whatever image the fuzzer
    // names. Short exec timeouts keep fuzzed commands quick.
    let app = TestApp::spawn_with(|s| {
        s.docker.host = Some("unix:///nonexistent-stacyvm-schemathesis/docker.sock".into());
        s.exec.max_timeout = std::time::Duration::from_secs(5);
        s.exec.default_timeout = std::time::Duration::from_secs(5);
        // Fuzzed `packages` reach no real index: an unreachable one answers
        // the documented 503 at once.
        s.wasm.package_index = Some("http://127.0.0.1:9/simple".into());
    })
    .await;
    let schema = app.url("/openapi.json");
    let report = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis-report");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/schemathesis.toml");
    let out = tokio::task::spawn_blocking(move || {
        // Schemathesis keeps a cache in its working directory: keep it out
        // of the checkout.
        Command::new(tool)
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .arg("--config-file")
            .arg(config)
            .args(["run", &schema])
            .args([
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
                "--max-examples",
                MAX_EXAMPLES,
                "--seed",
                "7423",
                "--workers",
                "2",
                "--request-timeout",
                "20",
                "--generation-database",
                "none",
                "--no-color",
                // A WebSocket upgrade and an endless event stream are not
                // request-and-answer operations; their own tests cover them.
                "--exclude-path",
                "/sandboxes/{id}/exec/ws",
                "--exclude-path",
                "/events",
                "--report-dir",
            ])
            .arg(report)
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert_eq!(send_health(&app).await, 200);
}

async fn send_health(app: &TestApp) -> u16 {
    crate::helpers::send(app.get("/health")).await.0
}
