//! The official Python MCP SDK (`mcp` from PyPI) drives both MCP transports,
//! stdio (`stacyvm mcp`, against this server or with an embedded one) and
//! streamable HTTP (`/mcp`): the pytest suite in `tests/mcp/`, run in a
//! virtualenv against a live server with two tenants.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{TestApp, send, shared_image_dir};

/// A missing Python toolchain or package index fails the test under CI and
/// skips it, loudly, elsewhere.
fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var("STACYVM_REQUIRE_SDK").is_ok_and(|v| v == "1")
}

/// A virtualenv with `tests/mcp/requirements.txt` installed, made once per
/// checkout (again when the requirements change).
fn mcp_python() -> Result<PathBuf, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let requirements = manifest.join("tests/mcp/requirements.txt");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mcp-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.installed");
    let wanted = std::fs::read_to_string(&requirements).map_err(|e| e.to_string())?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return Ok(python);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(python)
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
