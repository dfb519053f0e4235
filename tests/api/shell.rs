//! The stacyvm shell on the wasm provider: shell-mode command lines with
//! lists, pipes, redirections, variables, globbing and builtins.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};

/// Runs `command` and returns (exit code, stdout, stderr).
async fn sh(app: &TestApp, id: &str, command: &str) -> (i64, String, String) {
    let out: Value = app.run(id, command).await;
    (
        out["exit_code"].as_i64().unwrap(),
        out["stdout"].as_str().unwrap().to_string(),
        out["stderr"].as_str().unwrap().to_string(),
    )
}

fn ok(stdout: &str) -> (i64, String, String) {
    (0, stdout.to_string(), String::new())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_acceptance_examples_run_as_in_sh() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_eq!(sh(&app, &id, "exit 42").await, (42, "".into(), "".into()));
    assert_eq!(sh(&app, &id, "echo oops >&2").await, (0, "".into(), "oops\n".into()));
    assert_eq!(sh(&app, &id, "echo hi > a.txt && cat a.txt | wc -c").await, ok("3\n"));
    assert_eq!(
        sh(&app, &id, r#"python3 -c 'import sys; print(sys.argv)' x "y z""#).await,
        ok("['-c', 'x', 'y z']\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "mkdir -p sub && echo 'print(7)' > sub/main.py && cd sub && python3 main.py > out.txt; cat out.txt"
        )
        .await,
        ok("7\n")
    );
    assert_eq!(
        std::fs::read_to_string(app.sandbox_dir(&id).join("workspace/sub/out.txt")).unwrap(),
        "7\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_expand_and_split_only_when_unquoted() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_eq!(
        sh(&app, &id, "A='x  y'; echo $A; echo \"$A\" ${A}!").await,
        ok("x y\nx  y x y!\n")
    );
    assert_eq!(
        sh(&app, &id, "echo \"[$UNSET]\" '$HOME' $HOME ~").await,
        ok("[] $HOME /workspace /workspace\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "A=1; B=2 python3 -c 'import os; print(os.environ.get(\"A\"), os.environ[\"B\"])'; echo \"[$B]\""
        )
        .await,
        ok("None 2\n[]\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "export A=1; python3 -c 'import os; print(os.environ[\"A\"])'"
        )
        .await,
        ok("1\n")
    );
    let (_, out) = app
        .exec(
            &id,
            json!({"command": "echo $GREETING; env | grep -c GREETING", "env": {"GREETING": "hi there"}}),
        )
        .await;
    assert_eq!(out["stdout"], "hi there\n1\n");
    assert_eq!(out["stderr"], "");
    assert_eq!(
        sh(
            &app,
            &id,
            "A=1 env | grep ^A=; PYTHONPATH=/x python3 -c 'import os; print(os.environ[\"PYTHONPATH\"])'"
        )
        .await
        .1,
        "A=1\n/x\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_lists_and_negation_follow_sh() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_eq!(sh(&app, &id, "false; echo $?; true; echo $?").await, ok("1\n0\n"));
    assert_eq!(
        sh(&app, &id, "false || echo rescued && echo chained").await,
        ok("rescued\nchained\n")
    );
    assert_eq!(sh(&app, &id, "true || echo skipped; echo next").await, ok("next\n"));
    assert_eq!(sh(&app, &id, "false && echo skipped").await, (1, "".into(), "".into()));
    assert_eq!(sh(&app, &id, "! false && echo inverted").await, ok("inverted\n"));
    assert_eq!(
        sh(&app, &id, "python3 -c 'import sys; sys.exit(3)'; echo $?").await,
        ok("3\n")
    );
    assert_eq!(sh(&app, &id, "echo a # a comment\necho b").await, ok("a\nb\n"));
    assert_eq!(
        sh(&app, &id, "nope; echo $?").await,
        (0, "127\n".into(), "sh: 1: nope: not found\n".into())
    );
    assert_eq!(sh(&app, &id, "exit 3; echo never").await, (3, "".into(), "".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn pipes_feed_each_stage_the_previous_output_and_keep_the_last_status() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_eq!(
        sh(
            &app,
            &id,
            "printf 'b\\na\\nc\\n' | python3 -c 'import sys; print(\"\".join(sorted(sys.stdin)), end=\"\")' | head -n 2"
        )
        .await,
        ok("a\nb\n")
    );
    assert_eq!(sh(&app, &id, "python3 -c 'print(1)' | wc -c").await, ok("2\n"));
    assert_eq!(sh(&app, &id, "echo x | false").await, (1, "".into(), "".into()));
    assert_eq!(sh(&app, &id, "false | echo y").await, ok("y\n"));
    assert_eq!(sh(&app, &id, "cd /tmp | true; pwd").await, ok("/workspace\n"));
    let (_, out) = app
        .exec(&id, json!({"command": "cat | wc -l", "stdin": "1\n2\n3\n"}))
        .await;
    assert_eq!(out["stdout"], "3\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_redirection_form_goes_where_sh_sends_it() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_eq!(sh(&app, &id, "echo a > f; echo b >> f; cat < f").await, ok("a\nb\n"));
    assert_eq!(sh(&app, &id, "echo c 1> f; cat f").await, ok("c\n"));
    assert_eq!(
        sh(&app, &id, "cat missing 2> err; echo $?; cat err").await,
        ok("1\ncat: missing: No such file or directory\n")
    );
    assert_eq!(sh(&app, &id, "cat missing 2>> err; wc -l < err").await, ok("2\n"));
    assert_eq!(
        sh(&app, &id, "cat f missing > both 2>&1; cat both").await,
        ok("c\ncat: missing: No such file or directory\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "python3 -c 'import sys; print(\"o\"); print(\"e\", file=sys.stderr)' 2>&1 | wc -l"
        )
        .await,
        ok("2\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "python3 -c 'import sys; print(\"e\", file=sys.stderr)' 2>/tmp/e.txt; cat /tmp/e.txt"
        )
        .await,
        ok("e\n")
    );
    assert_eq!(
        sh(&app, &id, "echo x > nodir/f").await.2,
        "sh: 1: cannot create nodir/f: No such file or directory\n"
    );
    assert_eq!(
        sh(&app, &id, "echo x > ../../../etc/passwd; echo $?").await,
        (
            0,
            "2\n".into(),
            "sh: 1: cannot open ../../../etc/passwd: Permission denied (outside the sandbox)\n".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unquoted_wildcards_glob_the_sandbox_and_stay_literal_without_a_match() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_eq!(
        sh(&app, &id, "touch b.py a.py c.txt .hidden.py; mkdir d; touch d/x.py; echo *.py; echo '*.py' \"*\"; echo d/*; echo ?.txt [ab].py").await,
        ok("a.py b.py\n*.py *\nd/x.py\nc.txt a.py b.py\n")
    );
    assert_eq!(
        sh(&app, &id, "echo *.none; ls /work*").await,
        ok("*.none\na.py\nb.py\nc.txt\nd\n")
    );
    assert_eq!(sh(&app, &id, "cd d && echo ../*.txt").await, ok("../c.txt\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn file_utilities_work_on_the_sandbox() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_eq!(
        sh(
            &app,
            &id,
            "mkdir -p x/y && touch x/y/f && ls x && ls -a x/y && ls -1 x/y"
        )
        .await,
        ok("y\n.\n..\nf\nf\n")
    );
    assert_eq!(
        sh(&app, &id, "mkdir x").await,
        (1, "".into(), "mkdir: x: File exists\n".into())
    );
    // WASI shows no owners or permission bits: ls prints placeholders.
    let long = sh(&app, &id, "echo 12 > x/n; ls -l x/n").await.1;
    let fields: Vec<&str> = long.split_whitespace().collect();
    assert_eq!((fields[4], fields[8]), ("3", "x/n"), "{long}");
    assert_eq!(
        sh(&app, &id, "cp x/n x/m && mv x/m x/k && cat x/k && ls x").await,
        ok("12\nk\nn\ny\n")
    );
    assert_eq!(
        sh(&app, &id, "cp x z").await,
        (1, "".into(), "cp: -r not specified; omitting directory 'x'\n".into())
    );
    assert_eq!(
        sh(&app, &id, "cp -r x z && ls z z/y").await,
        ok("z:\nk\nn\ny\n\nz/y:\nf\n")
    );
    assert_eq!(
        sh(&app, &id, "rm z").await,
        (1, "".into(), "rm: cannot remove 'z': Is a directory\n".into())
    );
    assert_eq!(sh(&app, &id, "rm -rf z nothing && ls").await, ok("x\n"));
    assert_eq!(
        sh(&app, &id, "rm nothing").await,
        (
            1,
            "".into(),
            "rm: cannot remove 'nothing': No such file or directory\n".into()
        )
    );
    assert_eq!(
        sh(&app, &id, "rm -rf /; ls /").await,
        (
            0,
            "tmp\nworkspace\n".into(),
            "rm: it is dangerous to operate recursively on '/'\nrm: use --no-preserve-root to override this failsafe\n"
                .into()
        )
    );
    assert_eq!(
        sh(&app, &id, "cd x; pwd; cd ..; pwd; cd /tmp && pwd").await,
        ok("/workspace/x\n/workspace\n/tmp\n")
    );
    assert_eq!(
        sh(&app, &id, "cd ../..; echo $?; cd nope").await,
        (
            2,
            "2\n".into(),
            "sh: 1: cd: can't cd to ../..\nsh: 1: cd: can't cd to nope\n".into()
        )
    );
    assert_eq!(
        sh(&app, &id, "cat ../../x").await,
        (1, "".into(), "cat: ../../x: Operation not permitted\n".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn text_utilities_format_like_coreutils() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_eq!(
        sh(&app, &id, "echo -n a; echo b; echo -e 'c\\td'; echo 'e\\n'").await,
        // As dash's echo: no -e, and backslash escapes always.
        ok("ab\n-e c\td\ne\n\n")
    );
    assert_eq!(
        sh(&app, &id, "printf '%s=%d %b|%5s|%-3s|%03d\\n' a 42 'x\\ty' r l 7").await,
        ok("a=42 x\ty|    r|l  |007\n")
    );
    assert_eq!(sh(&app, &id, "printf '%s\\n' one two").await, ok("one\ntwo\n"));
    assert_eq!(
        sh(
            &app,
            &id,
            "printf 'l1\\nl2\\nl3\\n' > f; head -n 2 f; tail -n 1 f; tail -n +2 f"
        )
        .await,
        ok("l1\nl2\nl3\nl2\nl3\n")
    );
    assert_eq!(sh(&app, &id, "head -c 4 f; echo; tail -c 3 f").await, ok("l1\nl\nl3\n"));
    assert_eq!(
        sh(&app, &id, "wc -l f; wc f; cat f | wc; wc -w < f").await,
        ok("3 f\n3 3 9 f\n      3       3       9\n3\n")
    );
    assert_eq!(
        sh(&app, &id, "pwd; true; false").await,
        (1, "/workspace\n".into(), "".into())
    );
    assert_eq!(
        sh(&app, &id, "which python3 ls cd nope; echo $?").await,
        ok("/usr/bin/python3\n/usr/bin/ls\n1\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "env | grep -q x; A=b env | tail -n 100 | head -c 0; env A=1 nope"
        )
        .await
        .0,
        127
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_and_brackets_evaluate_posix_expressions() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let cases = [
        ("test -e /tmp", 0),
        ("test -f /tmp", 1),
        ("[ -d /tmp ]", 0),
        ("[ -z '' ]", 0),
        ("[ -n '' ]", 1),
        ("[ a = a ]", 0),
        ("[ a != a ]", 1),
        ("[ 3 -eq 3 ]", 0),
        ("[ 3 -ne 3 ]", 1),
        ("[ 2 -lt 3 ]", 0),
        ("[ 2 -gt 3 ]", 1),
        ("[ 3 -le 3 ]", 0),
        ("[ 2 -ge 3 ]", 1),
        ("[ ! -e /nope ]", 0),
        ("[ -e /tmp -a -e /nope ]", 1),
        ("[ -e /tmp -o -e /nope ]", 0),
        ("[ ]", 1),
        ("[ x ]", 0),
    ];
    for (command, want) in cases {
        assert_eq!(sh(&app, &id, command).await, (want, "".into(), "".into()), "{command}");
    }
    assert_eq!(
        sh(&app, &id, "[ 1 -eq 1").await,
        (2, "".into(), "sh: 1: [: missing ]\n".into())
    );
    assert_eq!(
        sh(&app, &id, "[ a -eq 1 ]").await,
        (2, "".into(), "sh: 1: [: Illegal number: a\n".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn syntax_beyond_the_language_exits_2_naming_it_before_anything_runs() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let cases = [
        ("a=(1 2)", "arrays"),
        ("echo ${a[1]}", "arrays"),
        ("echo ${!X}", "indirect expansion ${!VAR}"),
        ("diff <(ls) <(ls)", "process substitution"),
        ("time ls", "the time keyword"),
        ("coproc cat", "coprocesses"),
    ];
    for (command, feature) in cases {
        assert_eq!(
            sh(&app, &id, &format!("echo before; {command}")).await,
            (
                2,
                "".into(),
                format!("sh: 1: syntax not supported by the stacyvm shell: {feature}\n")
            ),
            "{command}"
        );
    }
    assert_eq!(
        sh(&app, &id, "echo 'open").await,
        (
            2,
            "".into(),
            "sh: 1: Syntax error: Unterminated quoted string (')\n".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sleep_stops_at_the_exec_deadline_with_the_partial_output() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let started = std::time::Instant::now();
    let (status, body) = app
        .exec(&id, json!({"command": "echo started; sleep 100", "timeout": "1s"}))
        .await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["code"], "timeout");
    assert_eq!(
        body["message"],
        "the command ran past its timeout of 1s and was stopped"
    );
    assert_eq!(body["stdout"], "started\n");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(sh(&app, &id, "sleep 0.1 && echo awake").await, ok("awake\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_by_utilities_and_redirections_obey_the_disk_quota() {
    let app = TestApp::spawn_with(|s| s.sandbox.disk_quota_mb = 1).await;
    let id = app.create_wasm().await;
    assert_eq!(
        sh(
            &app,
            &id,
            "python3 -c 'print(\"x\" * 700000)' > big; echo $?; cp big big2; echo $?"
        )
        .await,
        (
            0,
            "0\n1\n".into(),
            "cp: 'big' -> 'big2': No space left on device\n".into()
        )
    );
    assert_eq!(
        sh(&app, &id, "cat big big > big3").await,
        (
            1,
            "".into(),
            "cat: big: No space left on device\ncat: big: No space left on device\n".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn args_are_quoted_onto_the_command_line_and_argv_mode_has_no_shell() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let (_, out) = app
        .exec(&id, json!({"command": "echo", "args": ["a  b", "$HOME", "it's", "*"]}))
        .await;
    assert_eq!(out["stdout"], "a  b $HOME it's *\n");
    let (_, out) = app
        .exec(&id, json!({"command": "echo", "args": ["$HOME", "*"], "mode": "argv"}))
        .await;
    assert_eq!(out["stdout"], "$HOME *\n");
    let (_, out) = app.exec(&id, json!({"command": "cd", "mode": "argv"})).await;
    assert_eq!(out["exit_code"], 127);
    assert_eq!(out["stderr"], "sh: cd: command not found\n");
    assert_error(
        &app.exec(&id, json!({"command": "echo x", "workdir": "/nope"})).await,
        400,
        "bad_request",
        "workdir /nope does not exist in the sandbox",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_script_sends_builtin_and_guest_output_as_it_comes() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let text = app
        .post(&format!("/sandboxes/{id}/exec"))
        .json(&json!({"command": "echo one; python3 -c 'print(2)'; echo three >&2; exit 5", "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], json!({"stream": "stdout", "data": "one\n"}));
    assert_eq!(lines[1], json!({"stream": "stdout", "data": "2\n"}));
    assert_eq!(lines[2], json!({"stream": "stderr", "data": "three\n"}));
    assert_eq!(lines[3]["exit_code"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn builtin_output_past_the_cap_is_dropped_and_flagged_but_pipes_keep_it_all() {
    let app = TestApp::spawn_with(|s| s.exec.output_limit_bytes = 10).await;
    let id = app.create_wasm().await;
    let out = app.run(&id, "echo 0123456789abcdef; echo more").await;
    assert_eq!(out["stdout"], "0123456789");
    assert_eq!(out["truncated"], true);
    let out = app.run(&id, "python3 -c 'print(\"x\" * 5000)' | wc -c").await;
    assert_eq!(out["stdout"], "5001\n");
    assert!(out.get("truncated").is_none(), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_stops_when_its_websocket_client_leaves() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let url = app
        .url(&format!("/sandboxes/{id}/exec/ws"))
        .replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let start = json!({"type": "start", "command": "echo up; sleep 1; touch after", "timeout": "60s"});
    ws.send(Message::Text(start.to_string().into())).await.unwrap();
    let Some(Ok(Message::Text(first))) = ws.next().await else {
        panic!("no first message");
    };
    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap(),
        json!({"type": "stdout", "data": "up\n"})
    );
    drop(ws);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        !app.sandbox_dir(&id).join("workspace/after").exists(),
        "the script kept running after the client left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_style_lines_run_on_wasm_as_in_sh() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    sh(
        &app,
        &id,
        "mkdir -p src; printf 'a\\nb\\nc\\nd\\n' > one.py; printf 'x\\n' > two.py; printf 'TODO a\\nok\\nTODO b\\n' > src/m.rs; echo 'TODO c' > src/n.rs; printf '1\\n2\\n' > a.csv; printf '1\\n' > src/b.csv",
    )
    .await;
    assert_eq!(
        sh(&app, &id, "for f in *.py; do echo \"== $f\"; head -3 \"$f\"; done").await,
        ok("== one.py\na\nb\nc\n== two.py\nx\n")
    );
    assert_eq!(
        sh(&app, &id, "grep -rn TODO src | sort | uniq -c | sort -rn | head").await,
        ok("      1 src/n.rs:1:TODO c\n      1 src/m.rs:3:TODO b\n      1 src/m.rs:1:TODO a\n")
    );
    assert_eq!(
        sh(&app, &id, "find . -name '*.csv' | sort | xargs wc -l").await,
        ok("2 ./a.csv\n1 ./src/b.csv\n3 total\n")
    );
    assert_eq!(
        sh(&app, &id, "if [ -f out.txt ]; then cat out.txt; else echo missing; fi").await,
        ok("missing\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "cat > data.json <<EOF\n{\"rows\": [1, 2, 3]}\nEOF\npython3 -c \"import json; print(json.load(open('data.json')))\""
        )
        .await,
        ok("{'rows': [1, 2, 3]}\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compound_commands_functions_and_subshells_behave_as_in_sh() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_eq!(
        sh(&app, &id, "i=0; while [ $i -lt 5 ]; do i=$((i+1)); [ $i = 2 ] && continue; [ $i = 4 ] && break; echo $i; done; until true; do echo never; done").await,
        ok("1\n3\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "for x in a.txt b.py c; do case $x in *.txt) echo text;; *.py|*.rs) echo code;; *) echo other;; esac; done"
        )
        .await,
        ok("text\ncode\nother\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "x=1; if [ $x = 2 ]; then echo two; elif [ $x = 1 ]; then echo one; else echo none; fi"
        )
        .await,
        ok("one\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "v=outer; f() { local v=inner; echo \"$1:$v\"; return 3; }; f arg; echo \"$? $v\""
        )
        .await,
        ok("arg:inner\n3 outer\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "x=1; (x=2; cd /tmp; echo \"$x $PWD\"); echo \"$x $PWD\"; { x=3; }; echo $x"
        )
        .await,
        ok("2 /tmp\n1 /workspace\n3\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "echo \"$(echo inner | tr a-z A-Z)\" `echo back` $((2 * (3 + 4) % 5)) $((2 ** 10))"
        )
        .await,
        ok("INNER back 4 1024\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "cat <<-EOF\n\tindented $((1+1))\n\tEOF\ncat <<'EOF'\nliteral $HOME\nEOF"
        )
        .await,
        ok("indented 2\nliteral $HOME\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "v=/a/b.tar.gz; echo ${#v} ${v#*/} ${v##*/} ${v%.*} ${v%%.*} ${v/b/B} ${v//[ab]/X} ${u:-d} ${u:=set} $u"
        )
        .await,
        ok("11 a/b.tar.gz b.tar.gz /a/b.tar /a/b /a/B.tar.gz /X/X.tXr.gz d set set\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "sh -c 'echo $0 $#; for a in \"$@\"; do echo \"[$a]\"; done; shift; echo $1' zero 'a b' c"
        )
        .await,
        ok("zero 2\n[a b]\n[c]\nc\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "printf 'l1\\nl2 x\\n' | while read a b; do echo \"$a|$b\"; done"
        )
        .await,
        ok("l1|\nl2|x\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "echo 'echo sourced $1' > s.sh; . ./s.sh; sh s.sh arg; bash -c 'eval \"y=6\"; echo $y'"
        )
        .await,
        ok("sourced\nsourced arg\n6\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "trap 'echo bye' EXIT; sleep 0.05 & echo started; wait; echo waited"
        )
        .await,
        ok("started\nwaited\nbye\n")
    );
    assert_eq!(sh(&app, &id, "exec echo replaced; echo never").await, ok("replaced\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn set_options_stop_trace_and_fail_pipelines_as_in_sh() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_eq!(
        sh(&app, &id, "set -e; echo a; false; echo never").await,
        (1, "a\n".into(), "".into())
    );
    assert_eq!(
        sh(&app, &id, "set -e; false || true; if false; then :; fi; echo survived").await,
        ok("survived\n")
    );
    assert_eq!(
        sh(&app, &id, "set -u; echo $nope; echo never").await,
        (2, "".into(), "sh: 1: nope: parameter not set\n".into())
    );
    assert_eq!(
        sh(&app, &id, "set -x; a=1; echo \"$a b\"").await,
        (0, "1 b\n".into(), "+ a=1\n+ echo '1 b'\n".into())
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "false | true; echo $?; set -o pipefail; false | true; echo $?; yes | head -1; echo $?"
        )
        .await,
        ok("0\n1\ny\n141\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pipes_between_guests_stream_and_end_when_the_reader_leaves() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let started = std::time::Instant::now();
    assert_eq!(sh(&app, &id, "yes | head -1").await, ok("y\n"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // 13 MB flows through three guests, far past any buffer the host keeps.
    assert_eq!(
        sh(
            &app,
            &id,
            "python3 -c 'import sys\nfor c in range(100): sys.stdout.write(\"\".join(\"row %07d x\\n\" % i for i in range(c * 10000, c * 10000 + 10000)))' | grep 99 | wc -l"
        )
        .await,
        ok("45739\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shell_budget_fails_the_exec_with_a_named_error() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    assert_eq!(
        sh(&app, &id, "f() { f; }; f").await,
        (
            2,
            "".into(),
            "sh: 1: function calls, eval, . and sh nest deeper than 100 levels\n".into()
        )
    );
    assert_eq!(
        sh(&app, &id, "A=x; while :; do A=$A$A; done").await,
        (
            2,
            "".into(),
            "sh: 1: an expanded word is longer than 1048576 bytes\n".into()
        )
    );
    assert_eq!(
        sh(&app, &id, "f() { echo $1 | f; }; f x").await,
        (
            2,
            "".into(),
            "sh: 1: more than 32 commands would run at once (pipelines and background jobs)\n".into()
        )
    );
    let (status, out) = app
        .exec(&id, json!({"command": "while :; do :; done", "timeout": "300ms"}))
        .await;
    assert_eq!(status, 408);
    assert_eq!(out["code"], "timeout");
    // The server serves on.
    assert_eq!(sh(&app, &id, "echo alive").await, ok("alive\n"));
}
