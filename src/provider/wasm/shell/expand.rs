//! Word expansion as sh does it: parameters, then field splitting of
//! unquoted expansions, then pathname globbing of unquoted `*`, `?` and
//! `[...]` against the sandbox, then quote removal (already done by the
//! parser, which records which characters were quoted).
//!
//! Every result is bounded: a word by [`MAX_WORD_BYTES`], a command's
//! arguments by [`MAX_ARGS_BYTES`] and [`MAX_ARGS`], a glob by the entries
//! it may visit and the components its pattern may have. Going over a
//! bound is an error, with the message sh prints.

use cap_std::fs::Dir;

use super::exec::{MAX_ARGS, MAX_ARGS_BYTES, MAX_WORD_BYTES};
use super::syntax::{Param, Part, Word};
use crate::provider::glob::wildcard_match;
use crate::sandbox::path::SandboxPath;

/// Characters that end a field when an unquoted expansion is split (the
/// default `IFS`).
const IFS: [char; 3] = [' ', '\t', '\n'];

/// Directory entries one glob may look at before it stops, so that a
/// pattern on a huge tree cannot run away (the same bound as `files/glob`).
const GLOB_BUDGET: usize = 100_000;
/// Path components a glob pattern may have; the walk recurses once per
/// component. A longer pattern is left as it is, as one that matches
/// nothing.
const GLOB_MAX_COMPONENTS: usize = 64;

fn word_too_long() -> String {
    format!("an expanded word is longer than {MAX_WORD_BYTES} bytes")
}

/// One field after splitting: each character with whether it was quoted
/// (quoted characters never act as glob wildcards).
#[derive(Debug, Default, Clone)]
struct Field(Vec<(char, bool)>);

impl Field {
    fn push_str(&mut self, s: &str, quoted: bool) {
        self.0.extend(s.chars().map(|c| (c, quoted)));
    }

    fn text(&self) -> String {
        self.0.iter().map(|(c, _)| c).collect()
    }

    fn has_wildcard(&self) -> bool {
        self.0.iter().any(|(c, q)| !q && matches!(c, '*' | '?' | '['))
    }
}

/// Expands `word` into fields (splitting unquoted expansions), no globbing.
fn fields(word: &Word, lookup: &dyn Fn(&Param) -> String) -> Result<Vec<Field>, String> {
    let mut out = vec![];
    let mut current: Option<Field> = None;
    let mut bytes = 0usize;
    for part in &word.0 {
        bytes += match part {
            Part::Literal { text, .. } => text.len(),
            Part::Home => 0,
            Part::Param { param, .. } => lookup(param).len(),
        };
        if bytes > MAX_WORD_BYTES {
            return Err(word_too_long());
        }
        match part {
            Part::Literal { text, quoted } => current.get_or_insert_default().push_str(text, *quoted),
            Part::Home => current
                .get_or_insert_default()
                .push_str(&lookup(&Param::Named("HOME".into())), true),
            Part::Param { param, quoted: true } => current.get_or_insert_default().push_str(&lookup(param), true),
            Part::Param { param, quoted: false } => {
                let value = lookup(param);
                let mut pieces = value.split(IFS).peekable();
                let mut first = true;
                while let Some(piece) = pieces.next() {
                    if !first {
                        // A separator: the field so far ends here.
                        if let Some(f) = current.take() {
                            out.push(f);
                        }
                    }
                    first = false;
                    if !piece.is_empty() {
                        current.get_or_insert_default().push_str(piece, false);
                    } else if pieces.peek().is_none() && value.ends_with(IFS) {
                        // Trailing separator: ends the field too.
                        if let Some(f) = current.take() {
                            out.push(f);
                        }
                    }
                }
            }
        }
    }
    out.extend(current);
    Ok(out)
}

/// Expands a word to one string: no splitting and no globbing, as for
/// assignments and redirection targets.
pub fn single(word: &Word, lookup: &dyn Fn(&Param) -> String) -> Result<String, String> {
    let mut s = String::new();
    for part in &word.0 {
        match part {
            Part::Literal { text, .. } => s.push_str(text),
            Part::Home => s.push_str(&lookup(&Param::Named("HOME".into()))),
            Part::Param { param, .. } => s.push_str(&lookup(param)),
        }
        if s.len() > MAX_WORD_BYTES {
            return Err(word_too_long());
        }
    }
    Ok(s)
}

/// Expands command words into arguments, globbing against the sandbox
/// with relative patterns resolved against `cwd`.
pub fn arguments(
    words: &[Word],
    lookup: &dyn Fn(&Param) -> String,
    root: &Dir,
    cwd: &SandboxPath,
) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = vec![];
    let mut bytes = 0usize;
    let mut push = |out: &mut Vec<String>, arg: String| {
        bytes += arg.len() + 1;
        out.push(arg);
        if bytes > MAX_ARGS_BYTES || out.len() > MAX_ARGS {
            return Err(format!(
                "the arguments are longer than {MAX_ARGS_BYTES} bytes or more than {MAX_ARGS} words"
            ));
        }
        Ok(())
    };
    for word in words {
        for field in fields(word, lookup)? {
            if field.has_wildcard() {
                let matches = glob(root, cwd, &field);
                if !matches.is_empty() {
                    for m in matches {
                        push(&mut out, m)?;
                    }
                    continue;
                }
            }
            push(&mut out, field.text())?;
        }
    }
    Ok(out)
}

/// Sandbox entries a field matches, spelled as the pattern was (relative
/// stays relative), sorted; none when nothing matches.
fn glob(root: &Dir, cwd: &SandboxPath, field: &Field) -> Vec<String> {
    // Components of the pattern, each as (text as typed, pattern for
    // wildcard_match with quoted wildcards made literal, has wildcard).
    let mut components: Vec<(String, String, bool)> = vec![];
    let mut current = (String::new(), String::new(), false);
    for &(c, quoted) in &field.0 {
        if c == '/' {
            components.push(std::mem::take(&mut current));
            continue;
        }
        current.0.push(c);
        match (c, quoted) {
            ('*' | '?' | '[', false) => {
                current.1.push(c);
                current.2 = true;
            }
            ('*' | '?' | '[', true) => current.1.push_str(&format!("[{c}]")),
            _ => current.1.push(c),
        }
    }
    components.push(current);
    if components.len() > GLOB_MAX_COMPONENTS {
        return vec![];
    }
    let absolute = field.0.first().is_some_and(|(c, _)| *c == '/');
    let start = if absolute { SandboxPath::root() } else { cwd.clone() };
    let mut out = vec![];
    let mut budget = GLOB_BUDGET;
    walk(root, &start, String::new(), &components, &mut out, &mut budget);
    out.sort();
    out
}

fn walk(
    root: &Dir,
    dir: &SandboxPath,
    typed: String,
    rest: &[(String, String, bool)],
    out: &mut Vec<String>,
    budget: &mut usize,
) {
    let Some(((text, pattern, wild), rest)) = rest.split_first() else {
        out.push(typed);
        return;
    };
    let joined = |name: &str| {
        if typed.is_empty() && text.is_empty() {
            // The leading empty component of an absolute pattern.
            "/".to_string()
        } else if typed.is_empty() {
            name.to_string()
        } else if typed.ends_with('/') {
            format!("{typed}{name}")
        } else {
            format!("{typed}/{name}")
        }
    };
    if !wild {
        if text.is_empty() {
            // `a//b` or a leading or trailing `/`.
            walk(root, dir, joined(""), rest, out, budget);
            return;
        }
        let Ok(path) = dir.join(text) else { return };
        if root.symlink_metadata(path.relative()).is_ok() {
            walk(root, &path, joined(text), rest, out, budget);
        }
        return;
    }
    let Ok(entries) = root.read_dir(dir.relative()) else {
        return;
    };
    let mut names: Vec<(String, bool)> = vec![];
    for item in entries.flatten() {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let name = item.file_name().to_string_lossy().into_owned();
        if wildcard_match(pattern, &name) {
            let is_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
            names.push((name, is_dir));
        }
    }
    for (name, is_dir) in names {
        if rest.is_empty() || is_dir {
            let Ok(path) = dir.join(&name) else { continue };
            walk(root, &path, joined(&name), rest, out, budget);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::wasm::shell::syntax;

    fn expand(raw: &str, vars: &[(&str, &str)]) -> Vec<String> {
        let word = syntax::word(raw).unwrap();
        let lookup = |p: &Param| match p {
            Param::Named(n) => vars
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_string())
                .unwrap_or_default(),
            _ => String::new(),
        };
        fields(&word, &lookup).unwrap().iter().map(Field::text).collect()
    }

    #[test]
    fn unquoted_expansions_split_and_quoted_ones_do_not() {
        let vars = [("A", "x  y"), ("E", ""), ("T", " lead trail ")];
        assert_eq!(expand("$A", &vars), ["x", "y"]);
        assert_eq!(expand("\"$A\"", &vars), ["x  y"]);
        assert_eq!(expand("pre$A.post", &vars), ["prex", "y.post"]);
        assert_eq!(expand("$E", &vars), Vec::<String>::new());
        assert_eq!(expand("\"$E\"", &vars), [""]);
        assert_eq!(expand("a${T}b", &vars), ["a", "lead", "trail", "b"]);
        assert_eq!(expand("'$A'", &vars), ["$A"]);
    }
}
