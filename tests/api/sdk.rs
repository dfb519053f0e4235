//! The published StacyVM Python SDK, unchanged, drives the real server: the
//! pytest suite in `tests/sdk/` runs in a virtualenv against a live server.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::TestApp;

/// A missing Python toolchain or package index fails the test under CI and
/// skips it, loudly, elsewhere.
fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var("STACYVM_REQUIRE_SDK").is_ok_and(|v| v == "1")
}

/// A virtualenv with `tests/sdk/requirements.txt` installed, made once per
/// checkout (again when the requirements change).
fn sdk_python() -> Result<PathBuf, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let requirements = manifest.join("tests/sdk/requirements.txt");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-venv");
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

fn docker_image_present(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_published_python_sdk_works_unchanged() {
    let python = match tokio::task::spawn_blocking(sdk_python).await.unwrap() {
        Ok(p) => p,
        Err(e) if !required() => {
            eprintln!("SKIPPED the_published_python_sdk_works_unchanged: cannot set up the SDK virtualenv: {e}");
            return;
        }
        Err(e) => panic!("cannot set up the SDK virtualenv: {e}"),
    };
    const DOCKER_IMAGE: &str = "stacyvm-test-busybox:latest";
    let app = TestApp::spawn().await;
    let url = app.base.trim_end_matches("/api/v1").to_string();
    let docker_image = if docker_image_present(DOCKER_IMAGE) {
        DOCKER_IMAGE
    } else {
        ""
    };
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(&suite)
            .env("STACYVM_URL", url)
            .env("STACYVM_SDK_DOCKER_IMAGE", docker_image)
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
    assert!(out.status.success(), "the SDK suite failed:\n{report}");
    if !docker_image.is_empty() {
        assert!(report.contains("passed"), "{report}");
    }
}
