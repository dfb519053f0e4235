//! Shell-mode command lines on the wasm provider: a plain word splitter.
//!
//! It understands words, single and double quotes, backslash escapes, `#`
//! comments and leading `NAME=value` assignments. Anything that needs a real
//! shell (pipes, redirections, lists, expansions, subshells) is refused with
//! a message naming the feature, never silently misread.

/// A parsed simple command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimpleCommand {
    pub assignments: Vec<(String, String)>,
    pub argv: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error("shell feature not supported on the wasm provider: {0}; run one command per exec, or use mode \"argv\"")]
    Unsupported(&'static str),
    #[error("unterminated {0} quote in the command")]
    Unterminated(&'static str),
}

/// Splits `line` into words and appends `args` as extra words.
pub fn parse(line: &str, args: &[String]) -> Result<SimpleCommand, ShellError> {
    let mut words: Vec<String> = vec![];
    let mut assignable: Vec<bool> = vec![];
    let mut chars = line.chars().peekable();
    let mut current: Option<String> = None;
    // Whether the current word has had a quoted part; `NAME=value` only
    // counts as an assignment when NAME itself was unquoted.
    let mut quoted_name = false;
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = current.take() {
                    assignable.push(!quoted_name);
                    words.push(w);
                }
                quoted_name = false;
            }
            '\n' | '\r' => return Err(ShellError::Unsupported("multiple lines")),
            '#' if current.is_none() => break,
            '\'' => {
                let w = current.get_or_insert_with(String::new);
                if !w.contains('=') {
                    quoted_name = true;
                }
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => w.push(ch),
                        None => return Err(ShellError::Unterminated("single")),
                    }
                }
            }
            '"' => {
                let w = current.get_or_insert_with(String::new);
                if !w.contains('=') {
                    quoted_name = true;
                }
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('$' | '`' | '"' | '\\')) => w.push(ch),
                            Some('\n') => {}
                            Some(ch) => {
                                w.push('\\');
                                w.push(ch);
                            }
                            None => return Err(ShellError::Unterminated("double")),
                        },
                        Some('$') => {
                            if let Some(feature) = dollar_feature(chars.peek().copied()) {
                                return Err(ShellError::Unsupported(feature));
                            }
                            w.push('$');
                        }
                        Some('`') => return Err(ShellError::Unsupported("command substitution (`...`)")),
                        Some(ch) => w.push(ch),
                        None => return Err(ShellError::Unterminated("double")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(ch) => current.get_or_insert_with(String::new).push(ch),
                None => current.get_or_insert_with(String::new).push('\\'),
            },
            '|' => {
                return Err(ShellError::Unsupported(if chars.peek() == Some(&'|') {
                    "the || operator"
                } else {
                    "pipes (|)"
                }));
            }
            '&' => {
                return Err(ShellError::Unsupported(if chars.peek() == Some(&'&') {
                    "the && operator"
                } else {
                    "background jobs (&)"
                }));
            }
            ';' => return Err(ShellError::Unsupported("command lists (;)")),
            '<' | '>' => return Err(ShellError::Unsupported("redirections (<, >)")),
            '(' | ')' => return Err(ShellError::Unsupported("subshells (( ))")),
            '`' => return Err(ShellError::Unsupported("command substitution (`...`)")),
            '$' => {
                if let Some(feature) = dollar_feature(chars.peek().copied()) {
                    return Err(ShellError::Unsupported(feature));
                }
                current.get_or_insert_with(String::new).push('$');
            }
            ch => current.get_or_insert_with(String::new).push(ch),
        }
    }
    if let Some(w) = current.take() {
        assignable.push(!quoted_name);
        words.push(w);
    }
    let mut cmd = SimpleCommand::default();
    let mut iter = words.into_iter().zip(assignable);
    for (word, can_assign) in iter.by_ref() {
        match word.split_once('=') {
            Some((name, value)) if can_assign && is_name(name) => {
                cmd.assignments.push((name.to_string(), value.to_string()));
            }
            _ => {
                cmd.argv.push(word);
                break;
            }
        }
    }
    cmd.argv.extend(iter.map(|(w, _)| w));
    cmd.argv.extend(args.iter().cloned());
    Ok(cmd)
}

/// What a `$` followed by `next` would mean to a shell, if it is special.
fn dollar_feature(next: Option<char>) -> Option<&'static str> {
    match next? {
        '(' => Some("command substitution ($(...))"),
        '{' | '?' | '#' | '@' | '*' | '!' | '$' | '-' => Some("variable expansion ($VAR)"),
        c if c.is_ascii_alphanumeric() || c == '_' => Some("variable expansion ($VAR)"),
        _ => None,
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        parse(line, &[]).unwrap().argv
    }

    #[test]
    fn words_and_quotes_split_as_sh_does() {
        assert_eq!(
            argv(r#"python3 -c "print(40 + 2)""#),
            ["python3", "-c", "print(40 + 2)"]
        );
        assert_eq!(argv("python3 main.py arg"), ["python3", "main.py", "arg"]);
        assert_eq!(argv(r#"a 'b c' "d 'e'" f\ g"#), ["a", "b c", "d 'e'", "f g"]);
        assert_eq!(argv(r#"a"b"'c'd"#), ["abcd"]);
        assert_eq!(argv(r#"echo "a\"b" 'x\y'"#), ["echo", "a\"b", "x\\y"]);
        assert_eq!(argv("  spaced\t\targs  "), ["spaced", "args"]);
        assert_eq!(argv("cmd '' x"), ["cmd", "", "x"]);
        assert_eq!(argv("cmd # a comment"), ["cmd"]);
        assert_eq!(argv("cmd a#b"), ["cmd", "a#b"]);
        assert_eq!(argv("echo 3$ 1*2"), ["echo", "3$", "1*2"]);
    }

    #[test]
    fn leading_assignments_become_environment() {
        let c = parse("A=1 B='x y' python3 C=3", &[]).unwrap();
        assert_eq!(c.assignments, [("A".into(), "1".into()), ("B".into(), "x y".into())]);
        assert_eq!(c.argv, ["python3", "C=3"]);
        assert_eq!(parse("'A'=1 cmd", &[]).unwrap().argv, ["A=1", "cmd"]);
    }

    #[test]
    fn args_are_appended_as_whole_words() {
        let c = parse("python3 main.py", &["a b".into(), "$HOME".into()]).unwrap();
        assert_eq!(c.argv, ["python3", "main.py", "a b", "$HOME"]);
    }

    #[test]
    fn shell_features_are_refused_by_name() {
        let table = [
            ("a | b", "pipes (|)"),
            ("a || b", "the || operator"),
            ("a && b", "the && operator"),
            ("a &", "background jobs (&)"),
            ("a; b", "command lists (;)"),
            ("a > f", "redirections (<, >)"),
            ("a < f", "redirections (<, >)"),
            ("(a)", "subshells (( ))"),
            ("echo $HOME", "variable expansion ($VAR)"),
            ("echo \"${X}\"", "variable expansion ($VAR)"),
            ("echo $(id)", "command substitution ($(...))"),
            ("echo `id`", "command substitution (`...`)"),
            ("a\nb", "multiple lines"),
        ];
        for (line, feature) in table {
            assert_eq!(parse(line, &[]), Err(ShellError::Unsupported(feature)), "{line}");
        }
        assert_eq!(
            argv("python3 -c 'print(1 | 2); x = \"$y\"'"),
            ["python3", "-c", "print(1 | 2); x = \"$y\""]
        );
    }

    #[test]
    fn unterminated_quotes_are_refused() {
        assert_eq!(parse("echo 'abc", &[]), Err(ShellError::Unterminated("single")));
        assert_eq!(parse("echo \"abc", &[]), Err(ShellError::Unterminated("double")));
    }
}
