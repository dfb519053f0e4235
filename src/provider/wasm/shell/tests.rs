//! Parser tests: tables of tricky lines, and a property test that any
//! argument list survives POSIX quoting and parsing unchanged.

use proptest::prelude::*;

use super::quote;
use super::syntax::{self, Command, Compound, Connector, ParseError, Part, RedirectTarget, Word};

/// The text of a word made only of literal parts (quoting removed).
fn literal(word: &Word) -> String {
    word.0
        .iter()
        .map(|part| match part {
            Part::Literal { text, .. } => text.as_str(),
            other => panic!("not a literal part: {other:?}"),
        })
        .collect()
}

/// The words of a one-command line whose words are all literal.
fn words(line: &str) -> Vec<String> {
    let script = syntax::parse(line).unwrap();
    assert_eq!(script.0.len(), 1, "{line}");
    let Command::Simple(command) = &script.0[0].list.first.commands[0] else {
        panic!("not a simple command: {line}");
    };
    command.words.iter().map(literal).collect()
}

#[test]
fn every_kind_of_quoting_is_removed_as_sh_does() {
    assert_eq!(
        words(r#"python3 -c "print(40 + 2)""#),
        ["python3", "-c", "print(40 + 2)"]
    );
    assert_eq!(words(r#"a 'b c' "d 'e'" f\ g"#), ["a", "b c", "d 'e'", "f g"]);
    assert_eq!(words(r#"a"b"'c'd"#), ["abcd"]);
    assert_eq!(words(r#"echo "a\"b" 'x\y' "\q""#), ["echo", "a\"b", "x\\y", "\\q"]);
    assert_eq!(words("cmd '' x"), ["cmd", "", "x"]);
    assert_eq!(words("cmd a#b # a comment"), ["cmd", "a#b"]);
    assert_eq!(
        words("python3 -c 'print(1 | 2); x = \"$y\"'"),
        ["python3", "-c", "print(1 | 2); x = \"$y\""]
    );
}

#[test]
fn lists_pipes_and_redirections_are_structured() {
    let script = syntax::parse("a | b > out 2>&1 && c || d; e &\nf").unwrap();
    assert_eq!(script.0.len(), 3);
    let first = &script.0[0].list;
    assert_eq!(first.first.commands.len(), 2);
    assert_eq!(
        first.rest.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        [Connector::And, Connector::Or]
    );
    assert!(script.0[1].background);
    assert!(!script.0[2].background);
    let Command::Simple(b) = &first.first.commands[1] else {
        panic!("b is simple")
    };
    assert_eq!(b.redirects.len(), 2);
    assert!(matches!(&b.redirects[0].target, RedirectTarget::Write(w) if literal(w) == "out"));
    assert_eq!(b.redirects[0].fd, 1);
    assert_eq!(b.redirects[1].fd, 2);
    assert!(matches!(&b.redirects[1].target, RedirectTarget::Duplicate(w) if literal(w) == "1"));
    let assign = syntax::parse("A=1 B='x y' cmd C=3").unwrap();
    let Command::Simple(cmd) = &assign.0[0].list.first.commands[0] else {
        panic!("simple")
    };
    assert_eq!(cmd.assignments.len(), 2);
    assert_eq!(cmd.assignments[1].name, "B");
    assert_eq!(literal(&cmd.assignments[1].value), "x y");
    assert_eq!(cmd.words.len(), 2);
}

#[test]
fn compound_commands_parse_into_their_shapes() {
    let script = syntax::parse(
        "for f in a b; do echo $f; done\nwhile false; do :; done\nif a; then b; elif c; then d; else e; fi\ncase x in a|b) y;; *) z;; esac\nf() { local v; }\n( cd /; )",
    )
    .unwrap();
    let shapes: Vec<&Command> = script.0.iter().map(|i| &i.list.first.commands[0]).collect();
    assert!(
        matches!(shapes[0], Command::Compound(Compound::For { var, words: Some(w), .. }, _) if var == "f" && w.len() == 2)
    );
    assert!(matches!(
        shapes[1],
        Command::Compound(Compound::Loop { until: false, .. }, _)
    ));
    assert!(
        matches!(shapes[2], Command::Compound(Compound::If { branches, otherwise: Some(_) }, _) if branches.len() == 2)
    );
    assert!(
        matches!(shapes[3], Command::Compound(Compound::Case { arms, .. }, _) if arms.len() == 2 && arms[0].patterns.len() == 2)
    );
    assert!(matches!(shapes[4], Command::Function(f) if f.name == "f"));
    assert!(matches!(shapes[5], Command::Compound(Compound::Subshell(_), _)));
}

#[test]
fn here_documents_keep_their_body_and_quoted_delimiters_stop_expansion() {
    let script = syntax::parse("cat <<'EOF'\n$x `y`\nEOF\ncat <<-EOF\n\tz\n\tEOF\n").unwrap();
    let Command::Simple(first) = &script.0[0].list.first.commands[0] else {
        panic!("simple")
    };
    assert!(matches!(&first.redirects[0].target, RedirectTarget::HereDoc(w) if literal(w) == "$x `y`\n"));
    let Command::Simple(second) = &script.0[1].list.first.commands[0] else {
        panic!("simple")
    };
    assert!(matches!(&second.redirects[0].target, RedirectTarget::HereDoc(w) if literal(w) == "z\n"));
}

#[test]
fn syntax_outside_the_language_is_named() {
    let table = [
        ("a=(1 2)", "arrays"),
        ("echo ${a[1]}", "arrays"),
        ("diff <(a) <(b)", "process substitution"),
        ("echo ${!x}", "indirect expansion ${!VAR}"),
        ("time ls", "the time keyword"),
    ];
    for (line, feature) in table {
        assert_eq!(syntax::parse(line), Err(ParseError::Unsupported(feature)), "{line}");
    }
    assert!(matches!(syntax::parse("echo \"abc"), Err(ParseError::Syntax(_))));
    assert!(matches!(syntax::parse("echo )"), Err(ParseError::Syntax(_))));
    assert!(matches!(syntax::parse("a &&"), Err(ParseError::Syntax(_))));
    assert!(matches!(syntax::parse("if a; then b"), Err(ParseError::Syntax(_))));
}

proptest! {
    #[test]
    fn quoted_arguments_parse_back_to_themselves(args in prop::collection::vec(any::<String>(), 1..6)) {
        // NUL cannot be in an argument; a shell word never holds one.
        let args: Vec<String> = args.into_iter().map(|a| a.replace('\0', "")).collect();
        let line = format!("cmd {}", args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "));
        let got = words(&line);
        prop_assert_eq!(&got[0], "cmd");
        prop_assert_eq!(&got[1..], &args[..]);
    }

    #[test]
    fn shell_syntax_characters_survive_quoting(args in prop::collection::vec("[ -~\t\n]{0,12}", 1..6)) {
        let line = format!("cmd {}", args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "));
        let got = words(&line);
        prop_assert_eq!(&got[1..], &args[..]);
    }
}
