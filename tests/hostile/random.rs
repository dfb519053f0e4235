//! Randomized attacks: generated shell command lines and generated API
//! bodies against a live server in a process of its own.
//!
//! - `generated_command_lines_and_bodies_never_get_a_5xx` runs a fixed
//!   number of cases (`STACYVM_HOSTILE_CASES`, default 150), each shrunk to
//!   its smallest failing form by proptest if it fails.
//! - `a_mix_of_attacks_never_stops_correct_execs` runs attackers side by
//!   side for a time budget (`STACYVM_HOSTILE_SECONDS`, default 30) while a
//!   canary checks that correct execs keep succeeding; it prints its
//!   figures. `STACYVM_HOSTILE_SECONDS=3600` is the hour-long run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

use crate::support::{ServerProcess, host_usage};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Settings that make limits easy to reach.
const SERVER_ENV: &[(&str, &str)] = &[
    ("STACYVM_DISK_QUOTA_MB", "64"),
    ("STACYVM_MAX_ENTRIES", "5000"),
    ("STACYVM_OUTPUT_LIMIT", "65536"),
    ("STACYVM_MAX_SANDBOXES", "50"),
];

const DISK_QUOTA: u64 = 64 << 20;

/// Commands an attacker reaches for: utilities, builtins and interpreters.
const COMMANDS: &[&str] = &[
    "echo",
    "printf",
    "cat",
    "ls",
    "head",
    "tail",
    "wc",
    "sort",
    "uniq",
    "cut",
    "tr",
    "seq",
    "yes",
    "test",
    "[",
    "cd",
    "export",
    "unset",
    "env",
    "which",
    "exit",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "touch",
    "truncate",
    "sleep",
    "dd",
    "od",
    "base64",
    "factor",
    "shuf",
    "split",
    "ln",
    "tee",
    "fold",
    "expr",
    "numfmt",
    "pr",
    "fmt",
    "nl",
    "date",
    "python3 -c",
    "python3.12 -c",
    "qjs -e",
    "true",
    "false",
    ":",
    "nope",
];

/// Arguments chosen to reach allocations, loops and recursions.
const SHARP_ARGS: &[&str] = &[
    "%1000000000000d",
    "%.99999999999999999999f",
    "%*d",
    "99999999999999999999",
    "-99999999999",
    "1T",
    "1E",
    "-n",
    "-c",
    "-é",
    "-€1",
    "--",
    "-",
    "/",
    "..",
    "../../..",
    "*",
    "**/*",
    "/*/*/*",
    "~",
    "$A",
    "${A}",
    "\"$A$A\"",
    "'x y'",
    "!",
    "'('",
    "')'",
    "-a",
    "-o",
    "/dev/null",
    "big",
    "d/e/f",
    "'import os; os.lseek(os.open(\"s\", os.O_WRONLY|os.O_CREAT), 2**40, 0)'",
    "'x = \"a\" * 10**9'",
    "'while True: pass'",
    "'import os\nfor i in range(10**6): os.mkdir(f\"m{i}\")'",
    "'print(\"x\" * 10**7)'",
    "'[1]*10**10'",
    "'def f(): f()\nf()'",
];

fn argument() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(SHARP_ARGS).prop_map(String::from),
        2 => "[a-z0-9]{1,8}",
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => "[0-9]{12,30}",
        1 => "\\PC{0,6}".prop_map(|s| format!("'{}'", s.replace('\'', ""))),
        1 => ("[a-z!(]{1,2}", 2u32..6).prop_map(|(s, n)| s.repeat(10usize.pow(n))),
    ]
}

fn simple_command() -> impl Strategy<Value = String> {
    (prop::sample::select(COMMANDS), prop::collection::vec(argument(), 0..5)).prop_map(|(command, args)| {
        let mut line = command.to_string();
        for arg in args {
            line.push(' ');
            line.push_str(&arg);
        }
        line
    })
}

fn redirect() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        1 => Just(" > out".to_string()),
        1 => Just(" >> out".to_string()),
        1 => Just(" < big".to_string()),
        1 => Just(" 2>&1".to_string()),
        1 => Just(" > /dev/null".to_string()),
        1 => Just(" < /etc/passwd".to_string()),
    ]
}

/// A generated command line: a few commands joined by lists and pipes,
/// now and then after a doubling variable or deep nesting.
fn command_line() -> impl Strategy<Value = String> {
    let step = (
        simple_command(),
        redirect(),
        prop::sample::select(&["; ", " && ", " || ", " | "][..]),
    );
    let prefix = prop_oneof![
        6 => Just(String::new()),
        1 => (1usize..40).prop_map(|n| format!("A=0123456789; {}", "A=$A$A; ".repeat(n))),
        1 => (1usize..3000).prop_map(|n| "(".repeat(n)),
        1 => Just("truncate -s 50M big; ".to_string()),
    ];
    (prefix, prop::collection::vec(step, 1..4)).prop_map(|(prefix, steps)| {
        let mut line = prefix;
        let last = steps.len() - 1;
        for (i, (command, redirect, connector)) in steps.into_iter().enumerate() {
            line.push_str(&command);
            line.push_str(&redirect);
            if i != last {
                line.push_str(connector);
            }
        }
        line
    })
}

/// A JSON value of any shape, sized to stay cheap to send.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::from),
        prop::sample::select(SHARP_ARGS).prop_map(Value::from),
        (1usize..20_000).prop_map(|n| Value::from("x".repeat(n))),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field every route of the API knows, with a value of any shape.
fn body() -> impl Strategy<Value = Value> {
    const FIELDS: &[&str] = &[
        "command",
        "args",
        "mode",
        "env",
        "workdir",
        "timeout",
        "stdin",
        "stdin_encoding",
        "ttl",
        "provider",
        "image",
        "memory_mb",
        "vcpus",
        "metadata",
        "owner_id",
        "path",
        "content",
        "encoding",
        "old_path",
        "new_path",
    ];
    prop::collection::btree_map(prop::sample::select(FIELDS), json_value(), 0..6).prop_map(|fields| {
        let mut body: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        // No docker creates (a pull per case) and no long sleeps.
        if body.get("provider").is_some_and(|p| p == "docker") {
            body.insert("provider".into(), json!("wasm"));
        }
        if body
            .get("timeout")
            .is_some_and(|t| t.as_str().is_some_and(|t| t.ends_with('m') || t.ends_with('h')))
        {
            body.insert("timeout".into(), json!("2s"));
        }
        Value::Object(body)
    })
}

/// One generated request.
#[derive(Clone)]
enum Attack {
    Shell(String),
    Api {
        method: &'static str,
        route: &'static str,
        body: Value,
    },
}

/// The attack, cut short enough to read in a failure message.
impl std::fmt::Debug for Attack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Attack::Shell(line) => format!("shell {line:?}"),
            Attack::Api { method, route, body } => format!("{method} {route} {body}"),
        };
        let cut: String = text.chars().take(600).collect();
        write!(f, "{cut}{}", if cut.len() < text.len() { "..." } else { "" })
    }
}

fn attack() -> impl Strategy<Value = Attack> {
    const ROUTES: &[(&str, &str)] = &[
        ("POST", "/sandboxes"),
        ("POST", "/sandboxes/{id}/exec"),
        ("POST", "/sandboxes/{id}/files"),
        ("PUT", "/sandboxes/{id}/files?path=up.bin"),
        ("GET", "/sandboxes/{id}/files?path={q}"),
        ("DELETE", "/sandboxes/{id}/files?path={q}&recursive=true"),
        ("GET", "/sandboxes/{id}/files/list?path={q}"),
        ("GET", "/sandboxes/{id}/files/stat?path={q}"),
        ("GET", "/sandboxes/{id}/files/glob?pattern={q}"),
        ("POST", "/sandboxes/{id}/files/move"),
        ("POST", "/sandboxes/{id}/files/chmod"),
        ("POST", "/sandboxes/{id}/extend"),
        ("GET", "/sandboxes/{id}/logs?lines={q}"),
        ("GET", "/sandboxes?state={q}"),
    ];
    prop_oneof![
        3 => command_line().prop_map(Attack::Shell),
        2 => (prop::sample::select(ROUTES), body())
            .prop_map(|((method, route), body)| Attack::Api { method, route, body }),
    ]
}

/// Sends one attack to the sandbox `id`; the status it got.
async fn send_attack(server: &ServerProcess, id: &str, attack: &Attack) -> Result<(u16, String), String> {
    let (method, url, body) = match attack {
        Attack::Shell(line) => (
            "POST",
            server.url(&format!("/sandboxes/{id}/exec")),
            json!({"command": line, "timeout": "2s"}),
        ),
        Attack::Api { method, route, body } => {
            let q = body.get("path").map(|p| p.to_string()).unwrap_or_else(|| "x".into());
            let route = route.replace("{id}", id).replace("{q}", &urlencode(&q));
            (*method, server.url(&route), body.clone())
        }
    };
    let request = match method {
        "GET" => server.client.get(&url),
        "DELETE" => server.client.delete(&url),
        "PUT" => server.client.put(&url).body(body.to_string()),
        _ => server.client.post(&url).json(&body),
    };
    let answer = request
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = answer.status().as_u16();
    Ok((status, answer.text().await.unwrap_or_default()))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_./*".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Destroys what random creates left, so the tenant never fills up.
async fn prune(server: &ServerProcess, keep: &[&str]) {
    let Ok(list) = server.client.get(server.url("/sandboxes")).send().await else {
        return;
    };
    let list: Value = list.json().await.unwrap_or_default();
    for sb in list.as_array().into_iter().flatten() {
        let id = sb["id"].as_str().unwrap_or_default();
        if !keep.contains(&id) {
            server
                .client
                .delete(server.url(&format!("/sandboxes/{id}")))
                .send()
                .await
                .ok();
        }
    }
}

#[test]
fn generated_command_lines_and_bodies_never_get_a_5xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut server = ServerProcess::start(SERVER_ENV);
    let id = runtime.block_on(server.create(json!({})));
    let cases = env_number("STACYVM_HOSTILE_CASES", 150) as u32;
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let server_ref = &server;
    let result = runner.run(&attack(), |attack| {
        let (status, body) = runtime
            .block_on(send_attack(server_ref, &id, &attack))
            .map_err(TestCaseError::fail)?;
        prop_assert!(status < 500, "{attack:?} got {status}: {body}");
        if matches!(
            attack,
            Attack::Api {
                route: "/sandboxes",
                ..
            }
        ) {
            runtime.block_on(prune(server_ref, &[&id]));
        }
        Ok(())
    });
    server.assert_alive();
    if let Err(e) = result {
        panic!("{e}");
    }
    let (_, bytes) = host_usage(&server.sandbox_dir(&id));
    assert!(bytes <= DISK_QUOTA, "the sandbox holds {bytes} bytes over its quota");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mix_of_attacks_never_stops_correct_execs() {
    let seconds = env_number("STACYVM_HOSTILE_SECONDS", 30);
    let mut process = ServerProcess::start(SERVER_ENV);
    // The longest TTL, so that an hour-long run outlives neither.
    let victim = process.create(json!({"ttl": "24h"})).await;
    let canary = process.create(json!({"ttl": "24h"})).await;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let attacks = AtomicU64::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    let canary_runs = AtomicU64::new(0);
    let slowest = std::sync::Mutex::new(Duration::ZERO);
    {
        let server = &process;
        let attacker = |seed: u8| {
            let (attacks, failures, victim, canary) = (&attacks, &failures, &victim, &canary);
            async move {
                let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]);
                let mut runner = TestRunner::new_with_rng(Config::default(), rng);
                let strategy = attack();
                while Instant::now() < deadline {
                    let attack = strategy.new_tree(&mut runner).unwrap().current();
                    match send_attack(server, victim, &attack).await {
                        Ok((status, body)) if status >= 500 => failures
                            .lock()
                            .unwrap()
                            .push(format!("{attack:?} got {status}: {body}")),
                        Ok(_) => {}
                        Err(e) => failures.lock().unwrap().push(format!("{attack:?}: {e}")),
                    }
                    if matches!(
                        attack,
                        Attack::Api {
                            route: "/sandboxes",
                            ..
                        }
                    ) {
                        prune(server, &[victim, canary]).await;
                    }
                    attacks.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let canary_task = async {
            while Instant::now() < deadline {
                let started = Instant::now();
                let (status, body) = server
                    .exec(
                        &canary,
                        json!({"command": "python3 -c 'print(40 + 2)'", "timeout": "30s"}),
                    )
                    .await;
                let took = started.elapsed();
                assert_eq!(
                    (status, body["stdout"].as_str()),
                    (200, Some("42\n")),
                    "the canary failed: {body}"
                );
                assert!(took < Duration::from_secs(10), "the canary took {took:?}");
                canary_runs.fetch_add(1, Ordering::Relaxed);
                {
                    let mut slowest = slowest.lock().unwrap();
                    *slowest = (*slowest).max(took);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::join!(attacker(1), attacker(2), attacker(3), canary_task);
    }
    process.assert_alive();
    let failures = failures.into_inner().unwrap();
    println!(
        "hostile mix: {seconds} s, {} attacks, {} canary execs (slowest {:?}), {} answers of 5xx or none",
        attacks.load(Ordering::Relaxed),
        canary_runs.load(Ordering::Relaxed),
        slowest.into_inner().unwrap(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let (_, bytes) = host_usage(&process.sandbox_dir(&victim));
    assert!(bytes <= DISK_QUOTA, "the sandbox holds {bytes} bytes over its quota");
}
