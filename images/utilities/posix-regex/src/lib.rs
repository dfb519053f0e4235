//! POSIX regular expressions, as `grep`, `find -regex` and `locate` take
//! them, translated to the syntax of the `regex` crate.
//!
//! Three flavours: basic (BRE, with the GNU extensions `\+`, `\?`, `\|`,
//! `\<`, `\>`, `\b`, `\w`...), extended (ERE) and Emacs (the default of
//! `find -regex`). The translation keeps POSIX's rules for which characters
//! are special where (`*` at the start of a BRE is a literal, `^` is an
//! anchor only at the start of a BRE branch, `{` that starts no interval is
//! a literal in an ERE...), and writes every literal escaped, so the result
//! means in `regex` what the pattern meant to POSIX. Back-references have no
//! counterpart in `regex` and are refused with a message.
//!
//! The `regex` crate bounds the compiled program's size and nesting, so a
//! hostile pattern fails to compile rather than exhausting memory; the
//! interval counts are bounded here by POSIX's `RE_DUP_MAX` (32767).

/// Which POSIX syntax a pattern is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Basic regular expressions (`grep`, `sed`, `find -regextype posix-basic`).
    Basic,
    /// Extended regular expressions (`grep -E`, `find -regextype posix-extended`).
    Extended,
    /// GNU Emacs syntax (`find -regex` by default): like BRE, but `+` and `?`
    /// are operators and there are no intervals.
    Emacs,
}

/// The largest count an interval may name, as glibc's `RE_DUP_MAX`.
pub const DUP_MAX: u32 = 32767;

const UNMATCHED_BRACKET: &str = "Unmatched [, [^, [:, [., or [=";

/// Translates `pattern` from `flavor` into `regex` syntax. The error is the
/// message GNU's regex library gives for the same mistake.
pub fn translate(pattern: &str, flavor: Flavor) -> Result<String, String> {
    Translator {
        p: pattern.chars().collect(),
        flavor,
        out: String::with_capacity(pattern.len() * 2),
        atom: None,
        quantified: false,
        branch_start: true,
        groups: Vec::new(),
    }
    .run()
}

struct Translator {
    p: Vec<char>,
    flavor: Flavor,
    out: String,
    /// Where the last atom starts in `out`, if a quantifier may follow.
    atom: Option<usize>,
    /// Whether that atom already carries a quantifier.
    quantified: bool,
    /// At the start of the pattern, a group or an alternative.
    branch_start: bool,
    /// Where each open group starts in `out`.
    groups: Vec<usize>,
}

impl Translator {
    fn run(mut self) -> Result<String, String> {
        let mut i = 0;
        while i < self.p.len() {
            let c = self.p[i];
            i += 1;
            match c {
                '\\' => {
                    let Some(&d) = self.p.get(i) else {
                        return Err("Trailing backslash".into());
                    };
                    i += 1;
                    i = self.escape(d, i)?;
                }
                '[' => i = self.bracket(i)?,
                '.' => self.atom_str("."),
                '*' => {
                    if self.atom.is_none() {
                        self.literal('*');
                    } else {
                        self.quantify("*");
                    }
                }
                '+' | '?' if self.flavor != Flavor::Basic => {
                    if self.atom.is_none() {
                        self.literal(c);
                    } else {
                        self.quantify(if c == '+' { "+" } else { "?" });
                    }
                }
                '{' if self.flavor == Flavor::Extended => match self.interval(i, false)? {
                    Some(next) => i = next,
                    None => self.literal('{'),
                },
                '(' if self.flavor == Flavor::Extended => self.open(),
                ')' if self.flavor == Flavor::Extended && !self.groups.is_empty() => self.close()?,
                '|' if self.flavor == Flavor::Extended => self.alternate(),
                '^' if self.flavor == Flavor::Extended || self.branch_start => self.anchor("^"),
                '$' if self.flavor == Flavor::Extended || self.ends_branch(i) => self.anchor("$"),
                _ => self.literal(c),
            }
        }
        if !self.groups.is_empty() {
            return Err("Unmatched ( or \\(".into());
        }
        Ok(self.out)
    }

    /// Handles `\d`; `i` is just past it. Returns where to go on.
    fn escape(&mut self, d: char, i: usize) -> Result<usize, String> {
        let operators = self.flavor != Flavor::Extended;
        match d {
            '(' if operators => self.open(),
            ')' if operators => {
                if self.groups.is_empty() {
                    return Err("Unmatched ) or \\)".into());
                }
                self.close()?
            }
            '|' if operators => self.alternate(),
            '{' if self.flavor == Flavor::Basic => {
                if self.atom.is_none() {
                    return Err("Invalid preceding regular expression".into());
                }
                return match self.interval(i, true)? {
                    Some(next) => Ok(next),
                    None => Err("Unmatched \\{".into()),
                };
            }
            '+' | '?' if self.flavor == Flavor::Basic => {
                if self.atom.is_none() {
                    self.literal(d);
                } else {
                    self.quantify(if d == '+' { "+" } else { "?" });
                }
            }
            '1'..='9' => return Err("back-references are not supported".into()),
            'w' | 'W' | 's' | 'S' => self.atom_str(&format!("\\{d}")),
            'b' | 'B' => self.anchor(&format!("\\{d}")),
            '<' => self.anchor("\\b{start}"),
            '>' => self.anchor("\\b{end}"),
            '`' => self.anchor("\\A"),
            '\'' => self.anchor("\\z"),
            _ => self.literal(d),
        }
        Ok(i)
    }

    /// A bracket expression; `i` is just past its `[`.
    fn bracket(&mut self, mut i: usize) -> Result<usize, String> {
        let p = &self.p;
        let mut class = String::from("[");
        if p.get(i) == Some(&'^') {
            class.push('^');
            i += 1;
        }
        let mut first = true;
        loop {
            let Some(&c) = p.get(i) else {
                return Err(UNMATCHED_BRACKET.into());
            };
            if c == ']' && !first {
                i += 1;
                break;
            }
            first = false;
            if c == '[' && matches!(p.get(i + 1), Some(':' | '=' | '.')) {
                let kind = p[i + 1];
                let start = i + 2;
                let end = (start..p.len().saturating_sub(1))
                    .find(|&k| p[k] == kind && p[k + 1] == ']')
                    .ok_or_else(|| UNMATCHED_BRACKET.to_string())?;
                let name: String = p[start..end].iter().collect();
                if kind == ':' {
                    const CLASSES: &[&str] = &[
                        "alpha", "digit", "alnum", "upper", "lower", "space", "blank", "punct", "print", "graph",
                        "cntrl", "xdigit",
                    ];
                    if !CLASSES.contains(&name.as_str()) {
                        return Err("Invalid character class name".into());
                    }
                    class.push_str(&format!("[:{name}:]"));
                } else {
                    let mut chars = name.chars();
                    match (chars.next(), chars.next()) {
                        (Some(ch), None) => push_class_char(&mut class, ch),
                        _ => return Err("Invalid collation character".into()),
                    }
                }
                i = end + 2;
                continue;
            }
            if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&h| h != ']') {
                let hi = p[i + 2];
                if c > hi {
                    return Err("Invalid range end".into());
                }
                push_class_char(&mut class, c);
                class.push('-');
                push_class_char(&mut class, hi);
                i += 3;
                continue;
            }
            push_class_char(&mut class, c);
            i += 1;
        }
        class.push(']');
        self.atom_str(&class);
        Ok(i)
    }

    /// An interval `{m}`, `{m,}`, `{,n}` or `{m,n}` whose `{` is just before
    /// `i`; `escaped` if it closes with `\}`. None if no interval starts
    /// here (an ERE's `{` is then a literal).
    fn interval(&mut self, mut i: usize, escaped: bool) -> Result<Option<usize>, String> {
        let p = &self.p;
        let number = |i: &mut usize| -> Option<u32> {
            let start = *i;
            let mut n: u32 = 0;
            while let Some(d) = p.get(*i).and_then(|c| c.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(d);
                *i += 1;
            }
            (*i > start).then_some(n)
        };
        let min = number(&mut i);
        let max = if p.get(i) == Some(&',') {
            i += 1;
            number(&mut i).or(Some(u32::MAX))
        } else {
            min
        };
        let closed = if escaped {
            p.get(i) == Some(&'\\') && p.get(i + 1) == Some(&'}')
        } else {
            p.get(i) == Some(&'}')
        };
        if !closed || (min.is_none() && max == Some(u32::MAX)) {
            if !escaped {
                return Ok(None);
            }
            let rest: String = p[i..].iter().collect();
            return Err(if rest.contains("\\}") {
                "Invalid content of \\{\\}".into()
            } else {
                "Unmatched \\{".into()
            });
        }
        i += if escaped { 2 } else { 1 };
        if self.atom.is_none() {
            if escaped {
                return Err("Invalid preceding regular expression".into());
            }
            return Ok(None);
        }
        let min = min.unwrap_or(0);
        let q = match max {
            Some(u32::MAX) => {
                if min > DUP_MAX {
                    return Err("Regular expression too big".into());
                }
                format!("{{{min},}}")
            }
            Some(max) => {
                if max > DUP_MAX {
                    return Err("Regular expression too big".into());
                }
                if min > max {
                    return Err("Invalid content of \\{\\}".into());
                }
                if min == max {
                    format!("{{{min}}}")
                } else {
                    format!("{{{min},{max}}}")
                }
            }
            None => unreachable!("an interval has a minimum or a maximum"),
        };
        self.quantify(&q);
        Ok(Some(i))
    }

    /// Whether a `$` just before `i` ends a BRE branch.
    fn ends_branch(&self, i: usize) -> bool {
        match self.p.get(i) {
            None => true,
            Some('\\') => matches!(self.p.get(i + 1), Some(')' | '|')),
            Some(_) => false,
        }
    }

    fn open(&mut self) {
        self.groups.push(self.out.len());
        self.out.push('(');
        self.atom = None;
        self.branch_start = true;
    }

    fn close(&mut self) -> Result<(), String> {
        let start = self.groups.pop().ok_or("Unmatched ) or \\)")?;
        self.out.push(')');
        self.atom = Some(start);
        self.quantified = false;
        self.branch_start = false;
        Ok(())
    }

    fn alternate(&mut self) {
        self.out.push('|');
        self.atom = None;
        self.branch_start = true;
    }

    fn anchor(&mut self, s: &str) {
        self.out.push_str(s);
        self.atom = None;
        self.branch_start = false;
    }

    fn atom_str(&mut self, s: &str) {
        self.atom = Some(self.out.len());
        self.quantified = false;
        self.out.push_str(s);
        self.branch_start = false;
    }

    fn literal(&mut self, c: char) {
        let mut buf = [0; 4];
        self.atom_str(&regex::escape(c.encode_utf8(&mut buf)));
    }

    /// Applies a quantifier to the last atom. A second quantifier applies to
    /// the quantified atom, as in POSIX (`a*?` is `(a*)?`, never lazy).
    fn quantify(&mut self, q: &str) {
        let Some(start) = self.atom else {
            return;
        };
        if self.quantified {
            self.out.insert_str(start, "(?:");
            self.out.push(')');
        }
        self.out.push_str(q);
        self.quantified = true;
        self.branch_start = false;
    }
}

/// A character inside a `regex` class, escaped where `regex` gives it a
/// meaning that POSIX does not (POSIX has no escapes inside brackets).
fn push_class_char(class: &mut String, c: char) {
    if matches!(c, '\\' | '[' | ']' | '^' | '-' | '&' | '~') {
        class.push('\\');
    }
    class.push(c);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bre(p: &str) -> String {
        translate(p, Flavor::Basic).unwrap()
    }
    fn ere(p: &str) -> String {
        translate(p, Flavor::Extended).unwrap()
    }
    fn matches(p: &str, f: Flavor, text: &str) -> bool {
        regex::Regex::new(&translate(p, f).unwrap()).unwrap().is_match(text)
    }

    #[test]
    fn basic_expressions_keep_posix_meanings() {
        assert_eq!(bre("a\\(b\\)*c"), "a(b)*c");
        assert_eq!(bre("a|b+?(c)"), "a\\|b\\+\\?\\(c\\)");
        assert_eq!(bre("x\\|y\\+z\\?"), "x|y+z?");
        assert_eq!(bre("*a"), "\\*a");
        assert_eq!(bre("a^b$c"), "a\\^b\\$c");
        assert_eq!(bre("^ab$"), "^ab$");
        assert_eq!(bre("a\\{2,3\\}"), "a{2,3}");
        assert_eq!(bre("a\\{,3\\}"), "a{0,3}");
        assert_eq!(bre("a{2}"), "a\\{2\\}");
        assert!(matches("\\<foo\\>", Flavor::Basic, "a foo b"));
        assert!(!matches("\\<foo\\>", Flavor::Basic, "afoob"));
    }

    #[test]
    fn extended_expressions_keep_posix_meanings() {
        assert_eq!(ere("(a|b)+c?"), "(a|b)+c?");
        assert_eq!(ere("a{2}"), "a{2}");
        assert_eq!(ere("a{x"), "a\\{x");
        assert_eq!(ere("{1}"), "\\{1}");
        assert_eq!(ere("a)"), "a\\)");
        assert_eq!(ere("+a"), "\\+a");
        assert_eq!(ere("a*?"), "(?:a*)?");
        assert_eq!(ere("a**"), "(?:a*)*");
    }

    #[test]
    fn brackets_are_posix_brackets() {
        assert_eq!(bre("[]a]"), "[\\]a]");
        assert_eq!(bre("[^]a-]"), "[^\\]a\\-]");
        assert_eq!(bre("[a\\]"), "[a\\\\]");
        assert_eq!(bre("[[:digit:]x]"), "[[:digit:]x]");
        assert_eq!(bre("[&&~~]"), "[\\&\\&\\~\\~]");
        assert!(matches("^[[:alpha:]_][[:alnum:]_]*$", Flavor::Basic, "foo_1"));
        assert!(matches("[a-c]", Flavor::Extended, "b"));
        assert!(matches("[.]", Flavor::Extended, "."));
        assert!(!matches("[.]", Flavor::Extended, "x"));
    }

    #[test]
    fn mistakes_get_gnu_messages() {
        let err = |p: &str, f| translate(p, f).unwrap_err();
        assert_eq!(err("[abc", Flavor::Basic), UNMATCHED_BRACKET);
        assert_eq!(err("\\(a", Flavor::Basic), "Unmatched ( or \\(");
        assert_eq!(err("(a", Flavor::Extended), "Unmatched ( or \\(");
        assert_eq!(err("a\\)", Flavor::Basic), "Unmatched ) or \\)");
        assert_eq!(err("a\\", Flavor::Basic), "Trailing backslash");
        assert_eq!(err("[[:nope:]]", Flavor::Basic), "Invalid character class name");
        assert_eq!(err("[z-a]", Flavor::Basic), "Invalid range end");
        assert_eq!(err("a\\{99999\\}", Flavor::Basic), "Regular expression too big");
        assert_eq!(err("a{3,1}", Flavor::Extended), "Invalid content of \\{\\}");
        assert_eq!(err("\\(a\\)\\1", Flavor::Basic), "back-references are not supported");
    }

    #[test]
    fn emacs_has_unescaped_repetition_and_escaped_groups() {
        assert_eq!(translate(".*\\.\\(c\\|h\\)+", Flavor::Emacs).unwrap(), ".*\\.(c|h)+");
        assert!(matches("^.*/a+b?$", Flavor::Emacs, "./aa"));
    }
}
