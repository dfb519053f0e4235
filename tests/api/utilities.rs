//! The shell's utilities beyond coreutils (grep, sed, find, diff, cmp, awk,
//! jq, tar, gzip), each a wasm guest of the utilities image: their common
//! flags on real files in a sandbox, their exit statuses and messages, and
//! the sandbox's walls, disk quota and deadline around them.

use serde_json::{Value, json};

use crate::helpers::{TestApp, send};

async fn sh(app: &TestApp, id: &str, command: &str) -> (i64, String, String) {
    let out: Value = app.run(id, command).await;
    (
        out["exit_code"].as_i64().unwrap(),
        out["stdout"].as_str().unwrap().to_string(),
        out["stderr"].as_str().unwrap().to_string(),
    )
}

/// A shell command line with data on its standard input.
async fn sh_in(app: &TestApp, id: &str, command: &str, stdin: &str) -> (i64, String, String) {
    let (status, out) = app.exec(id, json!({"command": command, "stdin": stdin})).await;
    assert_eq!(status, 200, "{command}: {out}");
    (
        out["exit_code"].as_i64().unwrap(),
        out["stdout"].as_str().unwrap().to_string(),
        out["stderr"].as_str().unwrap().to_string(),
    )
}

fn ok(stdout: &str) -> (i64, String, String) {
    (0, stdout.to_string(), String::new())
}

fn failed(code: i64, stdout: &str, stderr: &str) -> (i64, String, String) {
    (code, stdout.to_string(), stderr.to_string())
}

async fn write(app: &TestApp, id: &str, path: &str, content: &str) {
    let (status, v) = send(
        app.post(&format!("/sandboxes/{id}/files"))
            .json(&json!({"path": path, "content": content})),
    )
    .await;
    assert_eq!(status, 200, "writing {path}: {v}");
}

/// A sandbox with a small project: sources with TODOs, numbers, people.
async fn project(app: &TestApp) -> String {
    let id = app.create_wasm().await;
    write(app, &id, "src/a.py", "x TODO a\nTODO b\n").await;
    write(app, &id, "src/lib/b.py", "TODO c\n").await;
    write(app, &id, "src/c.txt", "none\n").await;
    write(app, &id, "n.txt", "one\ntwo\nthree\nfour\nfive\nsix\n").await;
    write(app, &id, "p.txt", "alice 30 NY\nbob 25 LA\ncarol 35 NY\n").await;
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn grep_selects_lines_with_the_flags_agents_use() {
    let app = TestApp::spawn().await;
    let id = project(&app).await;
    assert_eq!(
        sh(&app, &id, "grep -rn TODO src | sort").await,
        ok("src/a.py:1:x TODO a\nsrc/a.py:2:TODO b\nsrc/lib/b.py:1:TODO c\n")
    );
    assert_eq!(
        sh(&app, &id, "grep -rl TODO --include='*.py' . | sort").await,
        ok("./src/a.py\n./src/lib/b.py\n")
    );
    assert_eq!(sh(&app, &id, "grep -rL TODO src").await, ok("src/c.txt\n"));
    assert_eq!(
        sh(&app, &id, "grep -r TODO --exclude='*.py' src; echo $?").await,
        ok("1\n")
    );
    assert_eq!(
        sh(&app, &id, "grep -r TODO --exclude-dir=lib src | sort").await,
        ok("src/a.py:TODO b\nsrc/a.py:x TODO a\n")
    );
    assert_eq!(
        sh(&app, &id, "grep -c TODO src/a.py src/c.txt").await,
        ok("src/a.py:2\nsrc/c.txt:0\n")
    );
    assert_eq!(
        sh(&app, &id, "grep -n -C1 -e two -e six n.txt").await,
        ok("1-one\n2:two\n3-three\n--\n5-five\n6:six\n")
    );
    assert_eq!(sh(&app, &id, "grep -A1 three n.txt").await, ok("three\nfour\n"));
    assert_eq!(sh(&app, &id, "grep -B 1 three n.txt").await, ok("two\nthree\n"));
    assert_eq!(sh(&app, &id, "grep -iv O n.txt").await, ok("three\nfive\nsix\n"));
    assert_eq!(
        sh(&app, &id, "grep -oh 'TODO [a-z]' src/a.py").await,
        ok("TODO a\nTODO b\n")
    );
    assert_eq!(sh(&app, &id, "grep -w TOD src/a.py; echo $?").await, ok("1\n"));
    assert_eq!(sh(&app, &id, "grep -x 'TODO b' src/a.py").await, ok("TODO b\n"));
    assert_eq!(
        sh(&app, &id, "grep -E '^(t|f)' n.txt").await,
        ok("two\nthree\nfour\nfive\n")
    );
    assert_eq!(sh(&app, &id, "grep 'x\\|si[x]' n.txt").await, ok("six\n"));
    assert_eq!(sh(&app, &id, "grep -m1 -H o n.txt").await, ok("n.txt:one\n"));
    assert_eq!(sh(&app, &id, "grep -q TODO src/a.py && echo yes").await, ok("yes\n"));
    assert_eq!(sh(&app, &id, "egrep 'o{2}|^f' n.txt").await, ok("four\nfive\n"));
    // Fixed strings, and the same pattern as a regular expression.
    assert_eq!(sh_in(&app, &id, "grep -F a.b", "axb\na.b\n").await, ok("a.b\n"));
    assert_eq!(sh_in(&app, &id, "grep a.b", "axb\na.b\n").await, ok("axb\na.b\n"));
    assert_eq!(sh_in(&app, &id, "grep -n b", "a\nb\n").await, ok("2:b\n"));
    assert_eq!(sh_in(&app, &id, "fgrep -x '*'", "*\n**\n").await, ok("*\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn grep_exits_one_for_no_line_and_two_with_a_message_for_trouble() {
    let app = TestApp::spawn().await;
    let id = project(&app).await;
    assert_eq!(sh(&app, &id, "grep nope n.txt").await, failed(1, "", ""));
    assert_eq!(
        sh(&app, &id, "grep x missing.txt").await,
        failed(2, "", "grep: missing.txt: No such file or directory\n")
    );
    assert_eq!(sh(&app, &id, "grep -s x missing.txt; echo $?").await, ok("2\n"));
    // A selected line and a missing file: 2, unless -q.
    assert_eq!(
        sh(&app, &id, "grep -h one n.txt missing.txt").await,
        failed(2, "one\n", "grep: missing.txt: No such file or directory\n")
    );
    assert_eq!(sh(&app, &id, "grep -q one n.txt missing.txt").await, failed(0, "", ""));
    assert_eq!(
        sh(&app, &id, "grep -E '(' n.txt").await,
        failed(2, "", "grep: Unmatched ( or \\(\n")
    );
    assert_eq!(
        sh(&app, &id, "grep 'a\\{1' n.txt").await,
        failed(2, "", "grep: Unmatched \\{\n")
    );
    assert_eq!(
        sh(&app, &id, "grep '\\(a\\)\\1' n.txt").await,
        failed(2, "", "grep: back-references are not supported\n")
    );
    assert_eq!(
        sh(&app, &id, "grep src src").await,
        failed(2, "", "grep: src: Is a directory\n")
    );
    assert_eq!(
        sh(&app, &id, "grep --bogus x n.txt").await,
        failed(
            2,
            "",
            "grep: unrecognized option '--bogus'\nUsage: grep [OPTION]... PATTERNS [FILE]...\nTry 'grep --help' for more information.\n"
        )
    );
    // A NUL byte makes a file binary: its matches are reported, not printed.
    let (status, v) = send(
        app.post(&format!("/sandboxes/{id}/files"))
            .json(&json!({"path": "bin.dat", "content": "YQBiCnh5ego=", "encoding": "base64"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        sh(&app, &id, "grep x bin.dat").await,
        failed(0, "", "grep: bin.dat: binary file matches\n")
    );
    assert_eq!(sh(&app, &id, "grep -a -c x bin.dat").await, ok("1\n"));
    // -I takes a binary file for one without a match.
    assert_eq!(sh(&app, &id, "grep -I -c x bin.dat").await, failed(1, "0\n", ""));
    assert_eq!(sh(&app, &id, "grep -I -L x bin.dat").await, failed(1, "bin.dat\n", ""));
    // -L lists files without a selected line; the status still says whether one was selected.
    assert_eq!(
        sh(&app, &id, "grep -L one n.txt; echo $?; grep -L zzz n.txt").await,
        failed(1, "0\nn.txt\n", "")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sed_edits_streams_and_files_in_place() {
    let app = TestApp::spawn().await;
    let id = project(&app).await;
    assert_eq!(sh(&app, &id, "sed -n '2,3p' n.txt").await, ok("two\nthree\n"));
    assert_eq!(sh(&app, &id, "sed 's/o/0/g' n.txt | head -n 2").await, ok("0ne\ntw0\n"));
    assert_eq!(
        sh(&app, &id, "sed -E 's/(t)(h)/\\2\\1/' n.txt | grep ht").await,
        ok("htree\n")
    );
    assert_eq!(sh(&app, &id, "sed '/two/,/four/d' n.txt").await, ok("one\nfive\nsix\n"));
    assert_eq!(sh(&app, &id, "sed -n '$=' n.txt").await, ok("6\n"));
    assert_eq!(sh_in(&app, &id, "sed 's/a/b/'", "aa\n").await, ok("ba\n"));
    assert_eq!(
        sh(&app, &id, "sed -i 's/one/ONE/' n.txt && head -n 1 n.txt").await,
        ok("ONE\n")
    );
    assert_eq!(
        sh(&app, &id, "sed -i.bak 1d n.txt && head -n 1 n.txt n.txt.bak").await,
        ok("==> n.txt <==\ntwo\n\n==> n.txt.bak <==\nONE\n")
    );
    assert_eq!(
        sh(&app, &id, "sed p missing.txt").await,
        failed(
            1,
            "",
            "sed: error opening input file 'missing.txt': No such file or directory\n"
        )
    );
    assert_eq!(
        sh(&app, &id, "sed 's/a' n.txt").await,
        failed(
            1,
            "",
            "sed: <script argument 1>:1:4: error: unterminated regular expression\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn find_walks_the_sandbox_with_its_tests_and_actions() {
    let app = TestApp::spawn().await;
    let id = project(&app).await;
    assert_eq!(
        sh(&app, &id, "find . -name '*.py' | sort").await,
        ok("./src/a.py\n./src/lib/b.py\n")
    );
    assert_eq!(sh(&app, &id, "find src -type d | sort").await, ok("src\nsrc/lib\n"));
    assert_eq!(
        sh(&app, &id, "find . -maxdepth 1 -type f -name 'n*'").await,
        ok("./n.txt\n")
    );
    assert_eq!(sh(&app, &id, "find src -mindepth 2").await, ok("src/lib/b.py\n"));
    assert_eq!(sh(&app, &id, "find . -iname 'N.TXT'").await, ok("./n.txt\n"));
    assert_eq!(
        sh(&app, &id, "find . -path ./src -prune -o -name '*.txt' -print | sort").await,
        ok("./n.txt\n./p.txt\n")
    );
    assert_eq!(
        sh(&app, &id, "find src -name '*.py' -print0 | tr '\\0' '\\n' | sort").await,
        ok("src/a.py\nsrc/lib/b.py\n")
    );
    assert_eq!(sh(&app, &id, "touch e.txt; find . -empty").await, ok("./e.txt\n"));
    assert_eq!(
        sh(
            &app,
            &id,
            "touch -d 2020-01-01 old.txt; find . -newer old.txt -name 'n*'"
        )
        .await,
        ok("./n.txt\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "seq 1 1000 > big.txt; find . -type f -size +2k; find . -mtime -1 -name 'p*'"
        )
        .await,
        ok("./big.txt\n./p.txt\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "find . -regex '.*/[ab]\\.py' | sort; find . -regextype posix-extended -regex '.*/(a|c)\\.(py|txt)' | sort"
        )
        .await,
        ok("./src/a.py\n./src/lib/b.py\n./src/a.py\n./src/c.txt\n")
    );
    assert_eq!(
        sh(&app, &id, "find . -name '*.txt' -delete; find . -type f | sort").await,
        ok("./src/a.py\n./src/lib/b.py\n")
    );
    assert_eq!(
        sh(&app, &id, "find nope").await,
        failed(1, "", "Error: nope: No such file or directory (os error 44)\n")
    );
    // A guest cannot start a process, so the shell runs find's -exec
    // command itself, once per path find printed.
    assert_eq!(
        sh(&app, &id, "find src/a.py -exec cat {} ';'").await,
        ok("x TODO a\nTODO b\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_and_cmp_compare_files() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    write(&app, &id, "a.txt", "1\n2\n3\n").await;
    write(&app, &id, "b.txt", "1\nX\n3\n").await;
    assert_eq!(
        sh(&app, &id, "diff a.txt b.txt").await,
        failed(1, "2c2\n< 2\n---\n> X\n", "")
    );
    assert_eq!(
        sh(&app, &id, "diff -u a.txt b.txt | tail -n +3").await,
        ok("@@ -1,3 +1,3 @@\n 1\n-2\n+X\n 3\n")
    );
    assert_eq!(
        sh(&app, &id, "diff -u a.txt b.txt | head -n 2 | cut -c1-10").await,
        ok("--- a.txt\t\n+++ b.txt\t\n")
    );
    assert_eq!(sh(&app, &id, "diff a.txt a.txt").await, ok(""));
    assert_eq!(
        sh(&app, &id, "diff -q a.txt b.txt").await,
        failed(1, "Files a.txt and b.txt differ\n", "")
    );
    assert_eq!(
        sh(&app, &id, "diff a.txt missing").await,
        failed(2, "", "diff: missing: No such file or directory\n")
    );
    assert_eq!(sh_in(&app, &id, "diff - b.txt", "1\nX\n3\n").await, ok(""));
    assert_eq!(
        sh(&app, &id, "cmp a.txt b.txt").await,
        failed(1, "a.txt b.txt differ: byte 3, line 2\n", "")
    );
    assert_eq!(sh(&app, &id, "cmp -s a.txt a.txt; echo $?").await, ok("0\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn awk_runs_programs_over_fields_and_records() {
    let app = TestApp::spawn().await;
    let id = project(&app).await;
    write(&app, &id, "c.csv", "a,b,c\n1,2,3\n").await;
    assert_eq!(
        sh(&app, &id, "awk '{s+=$2} END {print s, NR}' p.txt").await,
        ok("90 3\n")
    );
    assert_eq!(sh(&app, &id, "awk -F, '{print $2}' c.csv").await, ok("b\n2\n"));
    assert_eq!(
        sh(&app, &id, "awk 'NR==2{exit 3} END{print \"end\", NR}' p.txt").await,
        failed(3, "end 2\n", "")
    );
    assert_eq!(
        sh(&app, &id, "awk '$3==\"NY\"{c++} END{print c}' p.txt").await,
        ok("2\n")
    );
    assert_eq!(
        sh(&app, &id, "awk '{a[$3]++} END{for(k in a) print k, a[k]}' p.txt | sort").await,
        ok("LA 1\nNY 2\n")
    );
    assert_eq!(
        sh(&app, &id, "awk '{printf \"%-6s|%5.2f\\n\", $1, $2}' p.txt | head -n 1").await,
        ok("alice |30.00\n")
    );
    assert_eq!(
        sh(&app, &id, "awk -v OFS=- '{$1=$1; print}' p.txt | head -n 1").await,
        ok("alice-30-NY\n")
    );
    assert_eq!(sh(&app, &id, "awk '{print length}' p.txt").await, ok("11\n9\n11\n"));
    assert_eq!(
        sh(&app, &id, "awk 'length > 9' p.txt").await,
        ok("alice 30 NY\ncarol 35 NY\n")
    );
    assert_eq!(
        sh(&app, &id, "awk '{print v, $1}' v=7 p.txt | head -n 1").await,
        ok("7 alice\n")
    );
    assert_eq!(sh_in(&app, &id, "awk '{print $2}'", "a b\n").await, ok("b\n"));
    assert_eq!(
        sh(
            &app,
            &id,
            "awk 'NR==1{print \"err\" > \"/dev/stderr\"; print \"out\" > \"/dev/stdout\"}' p.txt"
        )
        .await,
        failed(0, "out\n", "err\n")
    );
    assert_eq!(
        sh(&app, &id, "awk '{print $1}' p.txt missing").await,
        failed(
            2,
            "alice\nbob\ncarol\n",
            "awk: cannot open \"missing\" (No such file or directory)\n"
        )
    );
    assert_eq!(
        sh(&app, &id, "awk '{print'").await,
        failed(
            2,
            "",
            "awk: parser error at line 1, column 7: expected RightBrace, found Some(Eof)\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jq_filters_json() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    write(&app, &id, "j.json", r#"[{"n":"a","v":2},{"n":"b","v":5}]"#).await;
    assert_eq!(
        sh(&app, &id, "jq '.[] | select(.v > 3) | .n' j.json").await,
        ok("\"b\"\n")
    );
    assert_eq!(sh(&app, &id, "jq -c 'map(.v)' j.json").await, ok("[2,5]\n"));
    assert_eq!(sh(&app, &id, "jq -r '.[].n' j.json").await, ok("a\nb\n"));
    assert_eq!(
        sh(&app, &id, "jq '.[0]' j.json").await,
        ok("{\n  \"n\": \"a\",\n  \"v\": 2\n}\n")
    );
    assert_eq!(sh(&app, &id, "jq 'length' j.json").await, ok("2\n"));
    assert_eq!(sh(&app, &id, "jq -n --arg x 7 '$x'").await, ok("\"7\"\n"));
    assert_eq!(
        sh_in(&app, &id, "jq -S -c .", r#"{"b":1,"a":2}"#).await,
        ok("{\"a\":2,\"b\":1}\n")
    );
    assert_eq!(sh(&app, &id, "jq -e '.[0].zz' j.json").await, failed(1, "null\n", ""));
    assert_eq!(
        sh(&app, &id, "jq . missing.json").await,
        failed(2, "", "Error: missing.json: No such file or directory\n")
    );
    assert_eq!(
        sh_in(&app, &id, "jq .", "{").await,
        failed(5, "", "Error: failed to parse: value or end of sequence expected\n")
    );
    let (code, out, err) = sh(&app, &id, "jq '.[' j.json").await;
    assert_eq!((code, out.as_str()), (3, ""));
    assert!(err.contains("unclosed delimiter ["), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tar_and_gzip_round_trip_archives() {
    let app = TestApp::spawn().await;
    let id = project(&app).await;
    assert_eq!(
        sh(
            &app,
            &id,
            "mkdir -p d/sub && echo hi > d/a.txt && echo yo > d/sub/b.txt && tar czf d.tgz d && tar tzf d.tgz"
        )
        .await,
        ok("d/\nd/a.txt\nd/sub/\nd/sub/b.txt\n")
    );
    assert_eq!(
        sh(&app, &id, "mkdir out && tar xzf d.tgz -C out && cat out/d/sub/b.txt").await,
        ok("yo\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "mkdir out2 && tar -x -f d.tgz --strip-components=1 -C out2 && ls out2"
        )
        .await,
        ok("a.txt\nsub\n")
    );
    assert_eq!(sh(&app, &id, "tar cf - d | tar tf - | wc -l").await, ok("4\n"));
    assert_eq!(
        sh(&app, &id, "tar -tvf d.tgz | head -n 1 | cut -c1-33").await,
        ok("drwxr-xr-x root/root         0 20\n")
    );
    assert_eq!(sh(&app, &id, "tar xzf d.tgz -O d/a.txt").await, ok("hi\n"));
    assert_eq!(
        sh(&app, &id, "tar xf missing.tar").await,
        failed(
            2,
            "",
            "tar: missing.tar: Cannot open: No such file or directory\ntar: Error is not recoverable: exiting now\n"
        )
    );
    assert_eq!(
        sh(&app, &id, "tar cf x.tar missing").await,
        failed(
            2,
            "",
            "tar: missing: Cannot stat: No such file or directory\ntar: Exiting with failure status due to previous errors\n"
        )
    );
    assert_eq!(
        sh(&app, &id, "tar tf n.txt").await,
        failed(
            2,
            "",
            "tar: This does not look like a tar archive\ntar: Exiting with failure status due to previous errors\n"
        )
    );
    assert_eq!(
        sh(&app, &id, "tar xzf d.tgz nope").await,
        failed(
            2,
            "",
            "tar: nope: Not found in archive\ntar: Exiting with failure status due to previous errors\n"
        )
    );
    assert_eq!(
        sh(&app, &id, "tar xjf d.tbz").await,
        failed(
            2,
            "",
            "tar: bzip2 compression is not available here; use -z (gzip)\nTry 'tar --help' or 'tar --usage' for more information.\n"
        )
    );

    assert_eq!(
        sh(&app, &id, "gzip -k n.txt && ls n.txt*").await,
        ok("n.txt\nn.txt.gz\n")
    );
    assert_eq!(sh(&app, &id, "zcat n.txt.gz | head -n 1").await, ok("one\n"));
    assert_eq!(
        sh(&app, &id, "gzip n.txt").await,
        failed(2, "", "gzip: n.txt.gz already exists; not overwritten\n")
    );
    assert_eq!(sh(&app, &id, "gzip -f n.txt && ls n.txt*").await, ok("n.txt.gz\n"));
    assert_eq!(
        sh(&app, &id, "gunzip n.txt.gz && ls n.txt* && tail -n 1 n.txt").await,
        ok("n.txt\nsix\n")
    );
    assert_eq!(sh(&app, &id, "gzip -t d.tgz && gzip -l d.tgz | wc -l").await, ok("2\n"));
    assert_eq!(
        sh(&app, &id, "gzip -d n.txt").await,
        failed(2, "", "gzip: n.txt: unknown suffix -- ignored\n")
    );
    assert_eq!(
        sh(&app, &id, "gzip missing").await,
        failed(1, "", "gzip: missing: No such file or directory\n")
    );
    assert_eq!(
        sh(&app, &id, "gzip -dc n.txt").await,
        failed(1, "", "gzip: n.txt: not in gzip format\n")
    );
    assert_eq!(sh_in(&app, &id, "gzip -9 | gunzip", "hello\n").await, ok("hello\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn more_coreutils_run_and_every_utility_resolves_through_path() {
    let app = TestApp::spawn().await;
    let id = project(&app).await;
    assert_eq!(
        sh(&app, &id, "tac p.txt").await,
        ok("carol 35 NY\nbob 25 LA\nalice 30 NY\n")
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "which grep sed find diff cmp awk jq tar gzip gunzip zcat egrep fgrep tac"
        )
        .await,
        ok(
            "/usr/bin/grep\n/usr/bin/sed\n/usr/bin/find\n/usr/bin/diff\n/usr/bin/cmp\n/usr/bin/awk\n/usr/bin/jq\n/usr/bin/tar\n/usr/bin/gzip\n/usr/bin/gunzip\n/usr/bin/zcat\n/usr/bin/egrep\n/usr/bin/fgrep\n/usr/bin/tac\n"
        )
    );
    // Without a shell, `env` is the utility's: it prints the environment.
    let (status, out) = app
        .exec(
            &id,
            json!({"command": "env", "mode": "argv", "env": {"GREETING": "hi"}}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert!(
        out["stdout"].as_str().unwrap().lines().any(|l| l == "GREETING=hi"),
        "{out}"
    );
    let (status, out) = app
        .exec(
            &id,
            json!({"command": "/bin/grep", "args": ["-c", "o", "n.txt"], "mode": "argv"}),
        )
        .await;
    assert_eq!((status, out["stdout"].as_str().unwrap()), (200, "3\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn utilities_see_only_the_sandbox() {
    let app = TestApp::spawn().await;
    let id = project(&app).await;
    assert_eq!(
        sh(&app, &id, "find / -maxdepth 1 | sort").await,
        ok("/\n/tmp\n/workspace\n")
    );
    assert_eq!(
        sh(&app, &id, "grep -r root /etc").await,
        failed(2, "", "grep: /etc: No such file or directory\n")
    );
    // Members that climb out, and a symlink to / followed by a file
    // through it: refused, and nothing appears outside the sandbox.
    let evil = "import tarfile, io\n\
        t = tarfile.open('evil.tar', 'w')\n\
        for name in ['../../escape.txt', 'ok.txt']:\n\
        \x20   i = tarfile.TarInfo(name); i.size = 1; t.addfile(i, io.BytesIO(b'x'))\n\
        l = tarfile.TarInfo('link'); l.type = tarfile.SYMTYPE; l.linkname = '/'; t.addfile(l)\n\
        i = tarfile.TarInfo('link/pwned.txt'); i.size = 1; t.addfile(i, io.BytesIO(b'x'))\n\
        t.close()\n";
    write(&app, &id, "evil.py", evil).await;
    assert_eq!(
        sh(&app, &id, "python3 evil.py && mkdir x && cd x && tar xvf ../evil.tar").await,
        failed(
            2,
            "ok.txt\nlink\nlink/pwned.txt\n",
            "tar: ../../escape.txt: Member name contains '..'\n\
             tar: link: Cannot create: Operation not permitted\n\
             tar: Exiting with failure status due to previous errors\n"
        )
    );
    // The symlink to / could not be made, so `link` is a plain directory.
    assert_eq!(
        sh(&app, &id, "cat x/ok.txt; echo; find x -name pwned.txt").await,
        ok("x\nx/link/pwned.txt\n")
    );
    let sandboxes = app.data_dir.path().join("sandboxes");
    for outside in [sandboxes.join("escape.txt"), app.data_dir.path().join("escape.txt")] {
        assert!(!outside.exists(), "{} was written", outside.display());
    }
    assert!(!std::path::Path::new("/pwned.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn write_heavy_utilities_stop_at_the_disk_quota_and_keep_their_input() {
    let app = TestApp::spawn_with(|s| s.sandbox.disk_quota_mb = 2).await;
    let id = app.create_wasm().await;
    let make = "python3 -c \"import os; open('r.bin','wb').write(os.urandom(700000)); open('t.txt','w').write('hello world\\n'*100000)\"";
    assert_eq!(sh(&app, &id, make).await, ok(""));
    assert_eq!(
        sh(&app, &id, "gzip -k r.bin; ls").await,
        failed(0, "r.bin\nt.txt\n", "gzip: r.bin.gz: No space left on device\n")
    );
    assert_eq!(
        sh(&app, &id, "sed -i s/hello/HELLO/ t.txt; echo $?; head -c 12 t.txt").await,
        failed(0, "1\nhello world\n", "sed: No space left on device\n")
    );
    assert_eq!(
        sh(&app, &id, "tar cf a.tar r.bin t.txt").await,
        failed(
            2,
            "",
            "tar: a.tar: Cannot write: No space left on device\ntar: Error is not recoverable: exiting now\n"
        )
    );
    // A gzip bomb: 5 MB of zeros in a few kilobytes.
    let bomb = "python3 -c \"import tarfile, io; t = tarfile.open('z.tgz', 'w:gz'); i = tarfile.TarInfo('zeros'); i.size = 5000000; t.addfile(i, io.BytesIO(bytes(5000000))); t.close()\"";
    assert_eq!(sh(&app, &id, &format!("rm a.tar r.bin; {bomb}")).await, ok(""));
    assert_eq!(
        sh(&app, &id, "tar xzf z.tgz").await,
        failed(
            2,
            "",
            "tar: zeros: Cannot write: No space left on device\ntar: Exiting with failure status due to previous errors\n"
        )
    );
    let used: u64 = walk_bytes(&app.sandbox_dir(&id));
    assert!(used <= 2 << 20, "the sandbox holds {used} bytes");
}

/// The apparent size of every file under `dir`.
fn walk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            walk_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn a_utility_that_runs_past_the_deadline_is_stopped() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    for command in [
        "awk 'BEGIN { while (1) {} }'",
        "jq -n 'last(range(1e15))'",
        "sed ':a;ba'",
    ] {
        let (status, v) = app
            .exec(&id, json!({"command": command, "timeout": "1s", "stdin": "x\n"}))
            .await;
        assert_eq!(status, 408, "{command}: {v}");
        assert_eq!(v["code"], "timeout");
        assert_eq!(v["message"], "the command ran past its timeout of 1s and was stopped");
    }
}
