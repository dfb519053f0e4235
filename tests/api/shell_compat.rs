//! The shell compatibility suite. Every command line in
//! `tests/shell_compat/cases.sh` runs on the wasm provider, and its output
//! is compared with what `/bin/sh` (dash) and GNU coreutils printed for it
//! on Debian, through the docker provider: those references are checked in
//! as `tests/shell_compat/expected.json`, and re-made with
//! `STACYVM_COMPAT_WRITE=1 cargo test --release --test api shell_compat`.
//!
//! A case matches when its exit code and stdout are identical, and stderr
//! is empty on both sides or on neither (messages are worded differently).
//! The bash extensions the shell also runs and dash refuses (`${v/p/r}`,
//! `set -o pipefail`, `**`) are tested in `shell.rs` instead.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::docker::{docker_or_skip, remove_containers_of, spawn_docker};
use crate::helpers::TestApp;

const CASES: &str = include_str!("../shell_compat/cases.sh");
const EXPECTED: &str = include_str!("../shell_compat/expected.json");
const PYTHON_IMAGE: &str = "stacyvm-test-python:latest";

/// The files every case starts with, in a directory of its own.
const FIXTURE: &str = r#"mkdir -p fx/sub fx/src && cd fx && printf 'hello\nworld\n' > a.txt && printf 'b1\nb2\nb3\n' > b.txt && printf '5\n3\n10\n1\n3\n' > nums.txt && printf 'name,age\nann,31\nbob,25\ncid,40\n' > data.csv && printf 'print(1)\n' > sub/x.py && printf 'import sys\nprint(sys.argv[1:])\n' > sub/y.py && printf 'fn main() {}\n// TODO one\n// TODO two\n' > src/m.rs && printf 'TODO three\n' > src/n.rs && printf '{"a": 1, "b": [1, 2]}\n' > data.json && printf 'the quick brown fox\njumps over the lazy dog\nthe end\n' > words.txt"#;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Outcome {
    case: String,
    exit_code: i64,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn matches(&self, reference: &Outcome) -> bool {
        self.exit_code == reference.exit_code
            && self.stdout == reference.stdout
            && self.stderr.is_empty() == reference.stderr.is_empty()
    }
}

fn cases() -> Vec<&'static str> {
    CASES.trim_end_matches('\n').split("\n#----\n").collect()
}

/// Runs every case in sandbox `id`, each in a fresh copy of the fixture.
async fn run_suite(app: &TestApp, id: &str) -> Vec<Outcome> {
    let cases = cases();
    let setup = format!(
        "({FIXTURE}) && i=0; while [ $i -lt {} ]; do cp -r fx c$i; i=$((i+1)); done",
        cases.len()
    );
    let (status, body) = app.exec(id, json!({"command": setup, "timeout": "300s"})).await;
    assert_eq!((status, &body["exit_code"]), (200, &json!(0)), "the fixture: {body}");
    let mut outcomes = vec![];
    for (i, case) in cases.iter().enumerate() {
        let (status, body) = app
            .exec(
                id,
                json!({"command": case, "workdir": format!("/workspace/c{i}"), "timeout": "20s"}),
            )
            .await;
        let text = |k: &str| body[k].as_str().unwrap_or_default().to_string();
        outcomes.push(Outcome {
            case: case.to_string(),
            // A timeout or a refused exec is a result too: it never matches.
            exit_code: if status == 200 {
                body["exit_code"].as_i64().unwrap()
            } else {
                -(status as i64)
            },
            stdout: text("stdout"),
            stderr: text("stderr"),
        });
    }
    outcomes
}

fn compare(got: &[Outcome], reference: &[Outcome]) -> (usize, Vec<String>) {
    let mut differences = vec![];
    for (g, r) in got.iter().zip(reference) {
        assert_eq!(g.case, r.case, "the references are for other cases: re-make them");
        if !g.matches(r) {
            differences.push(format!(
                "{:?}\n    sh:   exit {} stdout {:?} stderr {:?}\n    here: exit {} stdout {:?} stderr {:?}",
                g.case, r.exit_code, r.stdout, r.stderr, g.exit_code, g.stdout, g.stderr
            ));
        }
    }
    (got.len() - differences.len(), differences)
}

fn reference() -> Vec<Outcome> {
    let reference: Vec<Outcome> = serde_json::from_str(EXPECTED).expect("expected.json parses");
    assert_eq!(reference.len(), cases().len(), "expected.json is stale: re-make it");
    reference
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wasm_shell_matches_dash_and_gnu_coreutils_on_at_least_95_percent_of_the_suite() {
    let cases = cases();
    assert!(cases.len() >= 200, "the suite has {} cases", cases.len());
    let app = TestApp::spawn().await;
    let id = app.create_sandbox(json!({"provider": "wasm", "ttl": "1h"})).await;
    let got = run_suite(&app, &id).await;
    let (matched, differences) = compare(&got, &reference());
    let rate = 100.0 * matched as f64 / got.len() as f64;
    println!(
        "shell compat: {matched}/{} cases ({rate:.1}%) match dash and GNU coreutils\n{}",
        got.len(),
        differences.join("\n")
    );
    assert!(rate >= 95.0, "the compat rate is {rate:.1}%, under 95%");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_checked_in_references_are_what_docker_sh_prints() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let app = spawn_docker().await;
    let id = app
        .create_sandbox(json!({"provider": "docker", "image": PYTHON_IMAGE, "ttl": "1h"}))
        .await;
    let got = run_suite(&app, &id).await;
    remove_containers_of(&docker, &app).await;
    if std::env::var("STACYVM_COMPAT_WRITE").is_ok_and(|v| v == "1") {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/shell_compat/expected.json");
        std::fs::write(path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        println!("wrote {} references to {path}", got.len());
        return;
    }
    let (matched, differences) = compare(&got, &reference());
    println!(
        "docker against the references: {matched}/{}\n{}",
        got.len(),
        differences.join("\n")
    );
    // Only a case whose output depends on the moment may differ.
    assert!(differences.len() <= 2, "{} cases differ", differences.len());
}
