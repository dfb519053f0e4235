//! The official Python MCP SDK (`mcp` from PyPI) drives both MCP transports,
//! stdio (`stacyvm mcp`, against this server or with an embedded one) and
//! streamable HTTP (`/mcp`): the pytest suite in `tests/mcp/`, run in a
//! virtualenv against a live server with two tenants.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{TestApp, python_required, python_venv, send, shared_image_dir};

fn required() -> bool {
    python_required("STACYVM_REQUIRE_SDK")
}

fn mcp_python() -> Result<PathBuf, String> {
    python_venv("mcp").map(|venv| venv.join("bin/python"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_python_mcp_sdk_drives_the_stdio_and_http_transports() {
    const TEST: &str = "the_official_python_mcp_sdk_drives_the_stdio_and_http_transports";
    let python = match tokio::task::spawn_blocking(mcp_python).await.unwrap() {
        Ok(p) => p,
        Err(e) if !required() => {
            eprintln!("SKIPPED {TEST}: cannot set up the MCP SDK virtualenv: {e}");
            return;
        }
        Err(e) => panic!("cannot set up the MCP SDK virtualenv: {e}"),
    };
    let app = TestApp::with_keys(&[("sk_mcp_alpha", "alpha"), ("sk_mcp_beta", "beta")]).await;
    let url = app.base.trim_end_matches("/api/v1").to_string();
    // The embedded servers' data directories, and the suite's working
    // directory (so no stacyvm.toml of the checkout is read).
    let scratch = tempfile::tempdir().unwrap();
    let scratch_path = scratch.path().to_path_buf();
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-m", "pytest", "-v", "-p", "no:cacheprovider"])
            .arg(&suite)
            .current_dir(&scratch_path)
            .env("STACYVM_MCP_URL", url)
            .env("STACYVM_MCP_KEY_ALPHA", "sk_mcp_alpha")
            .env("STACYVM_MCP_KEY_BETA", "sk_mcp_beta")
            .env("STACYVM_BIN", env!("CARGO_BIN_EXE_stacyvm"))
            .env("STACYVM_IMAGE_DIR", shared_image_dir())
            .env("STACYVM_MCP_SCRATCH", &scratch_path)
            .output()
            .expect("pytest runs")
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "the MCP suite failed:\n{report}");
    assert!(report.contains(" 24 passed in "), "{report}");
    assert!(!report.contains("skipped"), "{report}");
    // Every sandbox the suite made is gone: destroyed by a tool or by the
    // end of its session.
    for key in ["sk_mcp_alpha", "sk_mcp_beta"] {
        let (status, list) = send(app.client.get(app.url("/sandboxes")).header("X-API-Key", key)).await;
        assert_eq!((status, list), (200, serde_json::json!([])), "{key}");
    }
}
