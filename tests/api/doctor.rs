//! `stacyvm doctor`: one line per check, ✓ or ✗ with the fix, and a
//! non-zero exit when anything is wrong.

use std::process::{Command, Output};

use crate::helpers::shared_image_dir;
use crate::ops::docker_or_skip;

fn doctor(config: &str, extra_env: &[(&str, &str)]) -> (Output, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stacyvm.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stacyvm"));
    cmd.args(["doctor", "--config"]).arg(&path).current_dir(dir.path());
    for var in [
        "STACYVM_BIND",
        "STACYVM_DATA_DIR",
        "STACYVM_IMAGE_DIR",
        "STACYVM_DOCKER_HOST",
        "STACYVM_DOCKER_DEFAULT_IMAGE",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text, dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn good_config(data_dir: &std::path::Path, port: u16) -> String {
    format!(
        "bind = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[wasm]\nimage_dir = \"{}\"\n[docker]\ndefault_image = \"stacyvm-test-busybox:latest\"\n",
        data_dir.display(),
        shared_image_dir().display()
    )
}

#[tokio::test]
async fn on_a_healthy_host_every_check_passes_and_doctor_exits_0() {
    let Some(_docker) = docker_or_skip("on_a_healthy_host_every_check_passes_and_doctor_exits_0").await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let (out, text, _dir) = doctor(&good_config(data.path(), port), &[]);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[..lines.len() - 1] {
        assert!(line.starts_with("✓ "), "{line}\n{text}");
    }
    for expected in [
        "✓ the configuration is valid",
        &format!("✓ the data directory {} is writable", data.path().display()),
        "GiB free on the data directory's file system",
        "✓ the pooling allocator reserved its address space",
        "✓ wasm image python-3.14 is built and verified",
        "✓ wasm image utilities-1 is built and verified",
        "✓ wasm image python-3.12.0 is present and verified",
        "✓ wasm image quickjs-ng-0.11.0 is present and verified",
        "with venv and pip",
        "✓ the Docker daemon at ",
        "✓ the test image stacyvm-test-busybox:latest is present",
        &format!("✓ 127.0.0.1:{port} is free to listen on"),
    ] {
        assert!(text.contains(expected), "no {expected:?} in\n{text}");
    }
    assert!(
        lines.last().unwrap().starts_with("all ") && lines.last().unwrap().ends_with(" checks passed"),
        "{text}"
    );
}

#[tokio::test]
async fn each_problem_is_a_cross_with_its_fix_and_doctor_exits_1() {
    let data = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let empty_images = tempfile::tempdir().unwrap();
    let config = format!(
        "bind = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[wasm]\nimage_dir = \"{}\"\n[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n",
        data.path().display(),
        empty_images.path().display()
    );
    let (out, text, _dir) = doctor(&config, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for expected in [
        &format!("✗ 127.0.0.1:{port} cannot be listened on: "),
        "— fix: stop what listens there, or choose another address with --bind or STACYVM_BIND",
        "✗ wasm image python-3.12.0 is not usable: ",
        "— fix: run `stacyvm images pull` where PyPI (or STACYVM_PACKAGE_INDEX) is reachable",
        "✗ wasm image python-3.14 is not built: ",
        "✗ the Docker daemon at unix:///nonexistent/docker.sock does not answer",
        "— fix: start the daemon (sudo systemctl start docker, or sudo bash .ci/docker-setup.sh), or set docker.host; without it only wasm sandboxes work",
    ] {
        assert!(text.contains(expected), "no {expected:?} in\n{text}");
    }
    let last = text.lines().last().unwrap();
    assert!(last.ends_with(" checks failed"), "{text}");
    drop(taken);

    // An invalid configuration, and a data directory that cannot be one.
    let (out, text, _dir) = doctor(
        "bind = \"127.0.0.1:0\"\ndata_dir = \"/dev/null/stacyvm\"\n[sandbox]\nmax_ttl = \"forever\"\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("✗ the configuration is invalid: "),
        "{text}"
    );
    assert!(text.contains("invalid duration \"forever\""), "{text}");
    assert!(text.contains("— fix: correct the setting named above in "), "{text}");
    let (out, text, _dir) = doctor(
        &format!(
            "bind = \"127.0.0.1:{}\"\ndata_dir = \"/dev/null/stacyvm\"\n",
            free_port()
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✗ the data directory /dev/null/stacyvm cannot be created: "),
        "{text}"
    );
    assert!(
        text.contains("— fix: make it writable by this user, or choose another with --data-dir or STACYVM_DATA_DIR"),
        "{text}"
    );
}
