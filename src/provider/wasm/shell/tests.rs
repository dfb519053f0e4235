//! Parser tests: tables of tricky lines, and a property test that any
//! argument list survives POSIX quoting and parsing unchanged.

use proptest::prelude::*;

use super::expand;
use super::quote;
use super::syntax::{self, Param, ParseError, RedirectTarget};

/// The words of a one-command line, expanded with no variables set.
fn words(line: &str) -> Vec<String> {
    let script = syntax::parse(line).unwrap();
    assert_eq!(script.lists.len(), 1, "{line}");
    let command = &script.lists[0].first.commands[0];
    let lookup = |_: &Param| String::new();
    command
        .words
        .iter()
        .flat_map(|w| {
            let s = expand::single(w, &lookup).unwrap();
            // Unquoted empty expansions vanish; quoted ones stay.
            (!w.0.is_empty()).then_some(s)
        })
        .collect()
}

#[test]
fn every_kind_of_quoting_is_removed_as_sh_does() {
    assert_eq!(
        words(r#"python3 -c "print(40 + 2)""#),
        ["python3", "-c", "print(40 + 2)"]
    );
    assert_eq!(words(r#"a 'b c' "d 'e'" f\ g"#), ["a", "b c", "d 'e'", "f g"]);
    assert_eq!(words(r#"a"b"'c'd"#), ["abcd"]);
    assert_eq!(
        words(r#"echo "a\"b" 'x\y' "\$x" "\q""#),
        ["echo", "a\"b", "x\\y", "$x", "\\q"]
    );
    assert_eq!(words("cmd '' x"), ["cmd", "", "x"]);
    assert_eq!(words("cmd a#b # a comment"), ["cmd", "a#b"]);
    assert_eq!(
        words("python3 -c 'print(1 | 2); x = \"$y\"'"),
        ["python3", "-c", "print(1 | 2); x = \"$y\""]
    );
}

#[test]
fn lists_pipes_and_redirections_are_structured() {
    let script = syntax::parse("a | b > out 2>&1 && c || d; e\nf").unwrap();
    assert_eq!(script.lists.len(), 3);
    let first = &script.lists[0];
    assert_eq!(first.first.commands.len(), 2);
    assert_eq!(first.rest.len(), 2);
    let b = &first.first.commands[1];
    assert_eq!(b.redirects.len(), 2);
    assert!(matches!(b.redirects[0].target, RedirectTarget::Write(_)));
    assert_eq!(b.redirects[0].fd, 1);
    assert_eq!(b.redirects[1].fd, 2);
    assert_eq!(b.redirects[1].target, RedirectTarget::Duplicate(1));
    let assign = syntax::parse("A=1 B='x y' cmd C=3").unwrap();
    let cmd = &assign.lists[0].first.commands[0];
    assert_eq!(cmd.assignments.len(), 2);
    assert_eq!(cmd.words.len(), 2);
}

#[test]
fn syntax_outside_the_subset_is_named() {
    let table = [
        ("for i in 1; do :; done", "for loops"),
        ("a &", "background jobs (&)"),
        ("echo $(id)", "command substitution $(...)"),
        ("echo \"`id`\"", "command substitution `...`"),
        ("echo $$", "$$"),
        ("a 3> f", "file descriptors above 2"),
        ("a >&-", "closing file descriptors (>&-)"),
        ("a <<< x", "here-documents (<<)"),
        ("cat <<EOF", "here-documents (<<)"),
    ];
    for (line, feature) in table {
        assert_eq!(syntax::parse(line), Err(ParseError::Unsupported(feature)), "{line}");
    }
    assert_eq!(
        syntax::parse("echo \"abc"),
        Err(ParseError::Syntax("Unterminated quoted string (\")".into()))
    );
    assert_eq!(
        syntax::parse("echo )"),
        Err(ParseError::Syntax("unexpected token at line 1 col 6".into()))
    );
    assert_eq!(
        syntax::parse("a &&"),
        Err(ParseError::Syntax("end of file unexpected".into()))
    );
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
