//! Word expansion as sh does it: tilde, parameters (with every POSIX
//! operator and the common bash ones), command substitution and
//! arithmetic; then field splitting of unquoted expansions on `IFS`; then
//! pathname globbing of unquoted `*`, `?` and `[...]` against the sandbox;
//! then quote removal (done by the parser, which records which characters
//! were quoted).
//!
//! Every result is bounded: a word by [`MAX_WORD_BYTES`], a command's
//! arguments by [`MAX_ARGS_BYTES`] and [`MAX_ARGS`], a pattern by
//! [`pattern::MAX_TOKENS`], a glob by the entries it may visit and the
//! components it may have. Going over a bound ends the script with the
//! message sh prints for an expansion error.

use super::arith;
use super::exec::{Flow, MAX_ARGS, MAX_ARGS_BYTES, MAX_WORD_BYTES, Shell};
use super::pattern::{self, Pattern};
use super::syntax::{Param, ParamOp, Part, ReplaceKind, TestExpr, Word};
use crate::sandbox::path::SandboxPath;

/// Directory entries one glob may look at before it stops, so that a
/// pattern on a huge tree cannot run away (the same bound as `files/glob`).
const GLOB_BUDGET: usize = 100_000;
/// Path components a glob pattern may have; the walk recurses once per
/// component. A longer pattern is left as it is.
const GLOB_MAX_COMPONENTS: usize = 64;

/// One character of an expansion: whether it was quoted (never split nor
/// globbed), and whether it came from an expansion (only those split).
#[derive(Debug, Clone, Copy)]
struct Ch {
    c: char,
    quoted: bool,
    expanded: bool,
}

/// The characters of one field in the making; `started` is whether it
/// exists even if empty (a quoted empty string makes an empty field).
#[derive(Debug, Default)]
struct Field {
    chars: Vec<Ch>,
    started: bool,
}

impl Field {
    fn text(&self) -> String {
        self.chars.iter().map(|c| c.c).collect()
    }

    fn has_wildcard(&self) -> bool {
        self.chars.iter().any(|c| !c.quoted && matches!(c.c, '*' | '?' | '['))
    }
}

fn word_too_long() -> String {
    format!("an expanded word is longer than {MAX_WORD_BYTES} bytes")
}

/// What one part of a word expanded to: characters, or, for `"$@"`, one
/// word per positional parameter.
enum Expanded {
    Chars(Vec<Ch>),
    Fields(Vec<String>),
}

impl Shell {
    /// The field separators: `IFS`, or space, tab and newline.
    fn ifs(&self) -> String {
        self.var("IFS").unwrap_or_else(|| " \t\n".into())
    }

    /// Expands command words into arguments: split, globbed, bounded.
    pub fn expand_words(&mut self, words: &[super::syntax::Word]) -> Flow<Vec<String>> {
        let mut out: Vec<String> = vec![];
        let mut bytes = 0usize;
        for word in words {
            for field in self.fields(word)? {
                let expanded = if field.has_wildcard() && !self.opts.noglob {
                    let matches = self.glob(&field);
                    if matches.is_empty() {
                        vec![field.text()]
                    } else {
                        matches
                    }
                } else {
                    vec![field.text()]
                };
                for arg in expanded {
                    bytes += arg.len() + 1;
                    out.push(arg);
                    if bytes > MAX_ARGS_BYTES || out.len() > MAX_ARGS {
                        return Err(self.over_limit(&format!(
                            "the arguments are longer than {MAX_ARGS_BYTES} bytes or more than {MAX_ARGS} words"
                        )));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Expands a word to one string: no splitting and no globbing, as for
    /// assignments, redirection targets and `case`.
    pub fn expand_single(&mut self, word: &Word) -> Flow<String> {
        let chars = self.expand_chars(word)?;
        Ok(chars.iter().map(|c| c.c).collect())
    }

    /// Expands a pattern word: quoted characters stay literal.
    pub fn expand_pattern(&mut self, word: &Word) -> Flow<Pattern> {
        let chars = self.expand_chars(word)?;
        let pattern = Pattern::new(&chars.iter().map(|c| (c.c, c.quoted)).collect::<Vec<_>>());
        if !pattern.fits() {
            return Err(self.over_limit(&format!("a pattern is longer than {} characters", pattern::MAX_TOKENS)));
        }
        Ok(pattern)
    }

    /// Evaluates an arithmetic word.
    pub fn arith(&mut self, word: &Word) -> Flow<i64> {
        let text = self.expand_single(word)?;
        match arith::eval(&text, &mut ShellVars(self)) {
            Ok(value) => Ok(value),
            Err(message) => Err(self.over_limit(&message)),
        }
    }

    /// Every character of a word's expansion, with no splitting.
    fn expand_chars(&mut self, word: &Word) -> Flow<Vec<Ch>> {
        let mut out = vec![];
        for part in &word.0 {
            match self.part(part)? {
                Expanded::Chars(chars) => out.extend(chars),
                Expanded::Fields(fields) => {
                    let joined = fields.join(" ");
                    out.extend(joined.chars().map(|c| Ch {
                        c,
                        quoted: true,
                        expanded: true,
                    }))
                }
            }
            if out.len() > MAX_WORD_BYTES {
                return Err(self.over_limit(&word_too_long()));
            }
        }
        Ok(out)
    }

    /// Expands `word` into fields, splitting unquoted expansions on IFS.
    fn fields(&mut self, word: &Word) -> Flow<Vec<Field>> {
        let ifs = self.ifs();
        let mut out: Vec<Field> = vec![];
        let mut current = Field::default();
        let mut bytes = 0usize;
        for part in &word.0 {
            let quoted_part = matches!(
                part,
                Part::Literal { quoted: true, .. }
                    | Part::Param { quoted: true, .. }
                    | Part::Command { quoted: true, .. }
                    | Part::Arith { quoted: true, .. }
            );
            match self.part(part)? {
                Expanded::Fields(fields) => {
                    // "$@": the first joins the field so far, the last the
                    // text after; none at all makes no field.
                    let n = fields.len();
                    for (i, f) in fields.into_iter().enumerate() {
                        bytes += f.len();
                        current.started = true;
                        current.chars.extend(f.chars().map(|c| Ch {
                            c,
                            quoted: true,
                            expanded: true,
                        }));
                        if i + 1 < n {
                            out.push(std::mem::take(&mut current));
                        }
                    }
                }
                Expanded::Chars(chars) => {
                    if quoted_part {
                        current.started = true;
                    }
                    for ch in chars {
                        bytes += ch.c.len_utf8();
                        let separator = ch.expanded && !ch.quoted && ifs.contains(ch.c);
                        if !separator {
                            current.started = true;
                            current.chars.push(ch);
                            continue;
                        }
                        let whitespace = ch.c.is_whitespace();
                        if current.started {
                            out.push(std::mem::take(&mut current));
                        } else if !whitespace {
                            // A non-white separator always ends a field,
                            // even an empty one.
                            out.push(Field {
                                chars: vec![],
                                started: true,
                            });
                        }
                    }
                }
            }
            if bytes > MAX_WORD_BYTES {
                return Err(self.over_limit(&word_too_long()));
            }
        }
        if current.started {
            out.push(current);
        }
        Ok(out)
    }

    fn part(&mut self, part: &Part) -> Flow<Expanded> {
        let chars = |text: String, quoted: bool, expanded: bool| {
            Expanded::Chars(text.chars().map(|c| Ch { c, quoted, expanded }).collect())
        };
        Ok(match part {
            Part::Literal { text, quoted } => chars(text.clone(), *quoted, false),
            Part::Home => chars(self.var("HOME").unwrap_or_default(), true, false),
            Part::Command { script, quoted } => chars(self.substitute(script)?, *quoted, true),
            Part::Arith { expr, quoted } => chars(self.arith(expr)?.to_string(), *quoted, true),
            Part::Param { param, op, quoted } => return self.param(param, op, *quoted),
        })
    }

    /// A parameter's value; None when unset.
    pub fn param_value(&self, param: &Param) -> Option<String> {
        match param {
            Param::Named(name) => self.var(name),
            Param::Positional(n) => self.positional.get(*n as usize - 1).cloned(),
            Param::Status => Some(self.status.to_string()),
            Param::ShellName => Some(self.shell_name.clone()),
            Param::Count => Some(self.positional.len().to_string()),
            Param::All => Some(self.positional.join(" ")),
            Param::Star => {
                let sep = self.ifs().chars().next().map(String::from).unwrap_or_default();
                Some(self.positional.join(&sep))
            }
            Param::Pid => Some(self.ctx.pid.to_string()),
            Param::LastJob => Some(self.last_job_id()),
            Param::Flags => {
                let mut flags = String::new();
                for (on, f) in [
                    (self.opts.errexit, 'e'),
                    (self.opts.noglob, 'f'),
                    (self.opts.nounset, 'u'),
                    (self.opts.xtrace, 'x'),
                    (self.opts.noclobber, 'C'),
                ] {
                    if on {
                        flags.push(f);
                    }
                }
                Some(flags)
            }
        }
    }

    fn param_name(param: &Param) -> String {
        match param {
            Param::Named(name) => name.clone(),
            Param::Positional(n) => n.to_string(),
            Param::ShellName => "0".into(),
            _ => "?".into(),
        }
    }

    fn param(&mut self, param: &Param, op: &ParamOp, quoted: bool) -> Flow<Expanded> {
        let value = self.param_value(param);
        let chars = |text: &str| {
            Expanded::Chars(
                text.chars()
                    .map(|c| Ch {
                        c,
                        quoted,
                        expanded: true,
                    })
                    .collect(),
            )
        };
        let unset_or_null = |colon: bool, v: &Option<String>| v.is_none() || (colon && v.as_deref() == Some(""));
        match op {
            ParamOp::Value => {
                if quoted && *param == Param::All {
                    return Ok(Expanded::Fields(self.positional.clone()));
                }
                if value.is_none() && self.opts.nounset && !matches!(param, Param::All | Param::Star | Param::LastJob) {
                    let name = Self::param_name(param);
                    return Err(self.over_limit(&format!("{name}: parameter not set")));
                }
                Ok(chars(&value.unwrap_or_default()))
            }
            ParamOp::Length => Ok(chars(&value.unwrap_or_default().chars().count().to_string())),
            ParamOp::Default { colon, word } => {
                if unset_or_null(*colon, &value) {
                    Ok(Expanded::Chars(self.expand_chars(word)?))
                } else {
                    Ok(chars(&value.unwrap_or_default()))
                }
            }
            ParamOp::Assign { colon, word } => {
                if unset_or_null(*colon, &value) {
                    let new = self.expand_single(word)?;
                    match param {
                        Param::Named(name) => self.set_var(name, new.clone())?,
                        _ => {
                            let name = Self::param_name(param);
                            return Err(self.over_limit(&format!("{name}: bad variable name")));
                        }
                    }
                    Ok(chars(&new))
                } else {
                    Ok(chars(&value.unwrap_or_default()))
                }
            }
            ParamOp::Error { colon, word } => {
                if unset_or_null(*colon, &value) {
                    let message = match word {
                        Some(w) => self.expand_single(w)?,
                        None => "parameter null or not set".into(),
                    };
                    let name = Self::param_name(param);
                    return Err(self.over_limit(&format!("{name}: {message}")));
                }
                Ok(chars(&value.unwrap_or_default()))
            }
            ParamOp::Alternative { colon, word } => {
                if unset_or_null(*colon, &value) {
                    Ok(Expanded::Chars(vec![]))
                } else {
                    Ok(Expanded::Chars(self.expand_chars(word)?))
                }
            }
            ParamOp::RemovePrefix { longest, pattern } => {
                let value = value.unwrap_or_default();
                let p = self.expand_pattern(pattern)?;
                let ends = p.prefix_matches(&value);
                let cut = if *longest { ends.last() } else { ends.first() };
                Ok(chars(&value[cut.copied().unwrap_or(0)..]))
            }
            ParamOp::RemoveSuffix { longest, pattern } => {
                let value = value.unwrap_or_default();
                let p = self.expand_pattern(pattern)?;
                let starts = p.suffix_matches(&value);
                let cut = if *longest { starts.last() } else { starts.first() };
                Ok(chars(&value[..cut.copied().unwrap_or(value.len())]))
            }
            ParamOp::Replace {
                kind,
                pattern,
                replacement,
            } => {
                let value = value.unwrap_or_default();
                let p = self.expand_pattern(pattern)?;
                let with = self.expand_single(replacement)?;
                let replaced = self.replace(&value, &p, &with, *kind)?;
                Ok(chars(&replaced))
            }
            ParamOp::Substring { offset, length } => {
                let value = value.unwrap_or_default();
                let chars_of: Vec<char> = value.chars().collect();
                let n = chars_of.len() as i64;
                let mut start = self.arith(offset)?;
                if start < 0 {
                    start = (n + start).max(0);
                }
                let start = start.min(n);
                let end = match length {
                    None => n,
                    Some(l) => {
                        let l = self.arith(l)?;
                        if l < 0 {
                            (n + l).max(start)
                        } else {
                            start.saturating_add(l).min(n)
                        }
                    }
                };
                let text: String = chars_of[start as usize..end as usize].iter().collect();
                Ok(chars(&text))
            }
            ParamOp::Case { upper, all } => {
                let value = value.unwrap_or_default();
                let mut text = String::with_capacity(value.len());
                for (i, c) in value.chars().enumerate() {
                    if *all || i == 0 {
                        if *upper {
                            text.extend(c.to_uppercase());
                        } else {
                            text.extend(c.to_lowercase());
                        }
                    } else {
                        text.push(c);
                    }
                }
                Ok(chars(&text))
            }
        }
    }

    /// `${v/p/r}` and its forms: the longest match at each place, left to
    /// right.
    fn replace(&mut self, value: &str, p: &Pattern, with: &str, kind: ReplaceKind) -> Flow<String> {
        match kind {
            ReplaceKind::Prefix => {
                let ends = p.prefix_matches(value);
                Ok(match ends.last() {
                    Some(&end) => format!("{with}{}", &value[end..]),
                    None => value.to_string(),
                })
            }
            ReplaceKind::Suffix => {
                let starts = p.suffix_matches(value);
                Ok(match starts.last() {
                    Some(&start) => format!("{}{with}", &value[..start]),
                    None => value.to_string(),
                })
            }
            ReplaceKind::First | ReplaceKind::All => {
                let mut out = String::new();
                let mut rest = value;
                let mut done = false;
                // Each place is tried once: at most len × pattern work per
                // place, and the pattern and value are both bounded.
                let places = value.chars().count();
                // Without a `*`, a search at one place dies within the
                // pattern's length; with one, it may run to the end.
                let per_place = if p.has_star() { places } else { p.len() };
                if places.saturating_mul(per_place).saturating_mul(p.len().max(1)) > 1 << 30 {
                    return Err(self.over_limit("a pattern replacement over this value would take too long"));
                }
                while !rest.is_empty() && !done {
                    let ends = p.prefix_matches(rest);
                    match ends.last().copied().filter(|&e| e > 0) {
                        Some(end) => {
                            out.push_str(with);
                            rest = &rest[end..];
                            done = kind == ReplaceKind::First;
                        }
                        None => {
                            let c = rest.chars().next().unwrap_or_default();
                            out.push(c);
                            rest = &rest[c.len_utf8()..];
                        }
                    }
                    if out.len() > MAX_WORD_BYTES {
                        return Err(self.over_limit(&word_too_long()));
                    }
                }
                out.push_str(rest);
                Ok(out)
            }
        }
    }

    /// Entries of the sandbox a field matches, spelled as the pattern was
    /// (relative stays relative), sorted; none when nothing matches.
    fn glob(&self, field: &Field) -> Vec<String> {
        let mut components: Vec<(String, Vec<(char, bool)>, bool)> = vec![];
        let mut current: (String, Vec<(char, bool)>, bool) = Default::default();
        for ch in &field.chars {
            if ch.c == '/' {
                components.push(std::mem::take(&mut current));
                continue;
            }
            current.0.push(ch.c);
            current.1.push((ch.c, ch.quoted));
            if !ch.quoted && matches!(ch.c, '*' | '?' | '[') {
                current.2 = true;
            }
        }
        components.push(current);
        if components.len() > GLOB_MAX_COMPONENTS {
            return vec![];
        }
        let absolute = field.chars.first().is_some_and(|c| c.c == '/');
        let start = if absolute {
            SandboxPath::root()
        } else {
            self.cwd.clone()
        };
        let compiled: Vec<(String, Pattern, bool, bool)> = components
            .into_iter()
            .map(|(text, chars, wild)| {
                let dot = chars.first().is_some_and(|(c, _)| *c == '.');
                (text, Pattern::new(&chars), wild, dot)
            })
            .collect();
        if compiled.iter().any(|(_, p, _, _)| !p.fits()) {
            return vec![];
        }
        let mut out = vec![];
        let mut budget = GLOB_BUDGET;
        self.glob_walk(&start, String::new(), &compiled, &mut out, &mut budget);
        out.sort();
        out
    }

    fn glob_walk(
        &self,
        dir: &SandboxPath,
        typed: String,
        rest: &[(String, Pattern, bool, bool)],
        out: &mut Vec<String>,
        budget: &mut usize,
    ) {
        let Some(((text, pattern, wild, dot), rest)) = rest.split_first() else {
            out.push(typed);
            return;
        };
        let joined = |name: &str| {
            if typed.is_empty() && text.is_empty() {
                "/".to_string()
            } else if typed.is_empty() {
                name.to_string()
            } else if typed.ends_with('/') {
                format!("{typed}{name}")
            } else {
                format!("{typed}/{name}")
            }
        };
        let root = &self.ctx.root;
        if !wild {
            if text.is_empty() {
                self.glob_walk(dir, joined(""), rest, out, budget);
                return;
            }
            let Ok(path) = dir.join(text) else { return };
            if root.symlink_metadata(path.relative()).is_ok() {
                self.glob_walk(&path, joined(text), rest, out, budget);
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
            // A leading dot is matched only by a leading dot.
            if name.starts_with('.') && !dot {
                continue;
            }
            if pattern.matches(&name) {
                let is_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
                names.push((name, is_dir));
            }
        }
        names.sort();
        for (name, is_dir) in names {
            if rest.is_empty() || is_dir {
                let Ok(path) = dir.join(&name) else { continue };
                self.glob_walk(&path, joined(&name), rest, out, budget);
            }
        }
    }

    /// Evaluates `[[ ]]`: the error is the message for a malformed test.
    pub fn test_expr(&mut self, expr: &TestExpr) -> Flow<Result<bool, String>> {
        Ok(match expr {
            TestExpr::And(a, b) => match self.test_expr(a)? {
                Ok(true) => self.test_expr(b)?,
                other => other,
            },
            TestExpr::Or(a, b) => match self.test_expr(a)? {
                Ok(false) => self.test_expr(b)?,
                other => other,
            },
            TestExpr::Not(a) => self.test_expr(a)?.map(|v| !v),
            TestExpr::Unary(op, w) => {
                let value = self.expand_single(w)?;
                if *op == "-v" {
                    Ok(self.var(&value).is_some())
                } else {
                    Ok(super::builtins::unary_test(self, op, &value))
                }
            }
            TestExpr::Binary(op, a, b) => {
                let left = self.expand_single(a)?;
                match *op {
                    "==" | "!=" => {
                        let matched = self.expand_pattern(b)?.matches(&left);
                        Ok(matched == (*op == "=="))
                    }
                    "=~" => {
                        let re = self.expand_single(b)?;
                        match regex::RegexBuilder::new(&re).size_limit(1 << 20).build() {
                            Ok(re) => Ok(re.is_match(&left)),
                            Err(_) => Err(format!("invalid regular expression {re:?}")),
                        }
                    }
                    "!=s" => {
                        let right = self.expand_single(b)?;
                        Ok(left != right)
                    }
                    op => {
                        let right = self.expand_single(b)?;
                        super::builtins::binary_test(self, &left, op, &right)
                    }
                }
            }
        })
    }
}

/// The shell's variables as arithmetic sees them.
struct ShellVars<'a>(&'a mut Shell);

impl arith::Vars for ShellVars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0.var(name)
    }

    fn set(&mut self, name: &str, value: String) -> Result<(), String> {
        self.0
            .set_var(name, value)
            .map_err(|_| format!("{name}: cannot be set"))
    }
}
