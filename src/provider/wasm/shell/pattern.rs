//! sh patterns (`case`, `${v#p}`, `[[ a == p ]]`, globbing): `*`, `?` and
//! `[...]`, where quoted characters are literal. Matching runs the pattern
//! as an automaton over the text, so it costs at most text × pattern steps,
//! whether it asks for a whole match, every matching prefix or every
//! matching suffix; patterns are at most [`MAX_TOKENS`] long.

/// The longest pattern, in elements, the shell matches with: with a word
/// of at most 1 MiB, a match costs at most 2^28 steps.
pub const MAX_TOKENS: usize = 256;

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Char(char),
    Any,
    Star,
    /// A bracket expression: ranges, whether it is negated.
    Class(Vec<(char, char)>, bool),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pattern(Vec<Token>);

impl Pattern {
    /// Compiles characters with their quotedness; quoted wildcards are
    /// literal.
    pub fn new(chars: &[(char, bool)]) -> Pattern {
        let mut tokens = vec![];
        let mut i = 0;
        while i < chars.len() {
            let (c, quoted) = chars[i];
            i += 1;
            if quoted {
                tokens.push(Token::Char(c));
                continue;
            }
            match c {
                '*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::Any),
                '\\' if i < chars.len() => {
                    tokens.push(Token::Char(chars[i].0));
                    i += 1;
                }
                '[' => match class(&chars[i..]) {
                    Some((token, used)) => {
                        tokens.push(token);
                        i += used;
                    }
                    None => tokens.push(Token::Char('[')),
                },
                c => tokens.push(Token::Char(c)),
            }
        }
        Pattern(tokens)
    }

    /// A pattern from unquoted text.
    #[cfg(test)]
    pub fn parse(text: &str) -> Pattern {
        let chars: Vec<(char, bool)> = text.chars().map(|c| (c, false)).collect();
        Pattern::new(&chars)
    }

    /// How many elements the pattern has.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the pattern has a `*`.
    pub fn has_star(&self) -> bool {
        self.0.contains(&Token::Star)
    }

    /// Whether the pattern is short enough to match with.
    pub fn fits(&self) -> bool {
        self.0.len() <= MAX_TOKENS
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        let ends = run(&self.0, chars.iter().copied());
        ends.get(chars.len()).copied().unwrap_or(false)
    }

    /// The byte lengths of the prefixes of `text` that match, shortest
    /// first.
    pub fn prefix_matches(&self, text: &str) -> Vec<usize> {
        let offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        let ends = run(&self.0, text.chars());
        (0..ends.len()).filter(|&n| ends[n]).map(|n| offsets[n]).collect()
    }

    /// The byte offsets where the suffixes of `text` that match start,
    /// shortest suffix first.
    pub fn suffix_matches(&self, text: &str) -> Vec<usize> {
        let offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        let reversed: Vec<Token> = self.0.iter().rev().cloned().collect();
        let ends = run(&reversed, text.chars().rev());
        let n = offsets.len() - 1;
        (0..ends.len()).filter(|&k| ends[k]).map(|k| offsets[n - k]).collect()
    }
}

/// Runs the pattern over `text`; entry k says whether the first k
/// characters match the whole pattern.
fn run(tokens: &[Token], text: impl Iterator<Item = char>) -> Vec<bool> {
    let m = tokens.len();
    let close = |set: &mut Vec<bool>| {
        for i in 0..m {
            if set[i] && tokens[i] == Token::Star {
                set[i + 1] = true;
            }
        }
    };
    let mut set = vec![false; m + 1];
    set[0] = true;
    close(&mut set);
    let mut ends = vec![set[m]];
    for c in text {
        let mut next = vec![false; m + 1];
        let mut any = false;
        for i in 0..m {
            if !set[i] {
                continue;
            }
            match &tokens[i] {
                Token::Star => {
                    next[i] = true;
                    any = true;
                }
                token if one(token, c) => {
                    next[i + 1] = true;
                    any = true;
                }
                _ => {}
            }
        }
        close(&mut next);
        ends.push(next[m]);
        set = next;
        if !any {
            // Nothing can match any longer prefix.
            break;
        }
    }
    ends
}

fn one(token: &Token, c: char) -> bool {
    match token {
        Token::Char(p) => *p == c,
        Token::Any => true,
        Token::Class(ranges, negated) => ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated,
        Token::Star => false,
    }
}

/// A bracket expression after its `[`; the token and how many characters
/// it used, or None when it is not closed.
fn class(chars: &[(char, bool)]) -> Option<(Token, usize)> {
    let mut i = 0;
    let negated = matches!(chars.first(), Some(('!' | '^', false)));
    if negated {
        i += 1;
    }
    let mut ranges = vec![];
    let mut first = true;
    while i < chars.len() {
        let (c, quoted) = chars[i];
        if c == ']' && !quoted && !first {
            return Some((Token::Class(ranges, negated), i + 1));
        }
        first = false;
        if c == '[' && !quoted && chars.get(i + 1) == Some(&(':', false)) {
            let rest: String = chars[i + 2..].iter().map(|(c, _)| c).collect();
            if let Some(end) = rest.find(":]") {
                ranges.extend(named_class(&rest[..end]));
                i += 2 + end + 2;
                continue;
            }
        }
        if chars.get(i + 1) == Some(&('-', false)) && chars.get(i + 2).is_some_and(|(n, _)| *n != ']') {
            ranges.push((c, chars[i + 2].0));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

fn named_class(name: &str) -> Vec<(char, char)> {
    match name {
        "alpha" => vec![('a', 'z'), ('A', 'Z')],
        "digit" => vec![('0', '9')],
        "alnum" => vec![('a', 'z'), ('A', 'Z'), ('0', '9')],
        "upper" => vec![('A', 'Z')],
        "lower" => vec![('a', 'z')],
        "space" => vec![(' ', ' '), ('\t', '\r')],
        "blank" => vec![(' ', ' '), ('\t', '\t')],
        "punct" => vec![('!', '/'), (':', '@'), ('[', '`'), ('{', '~')],
        "xdigit" => vec![('0', '9'), ('a', 'f'), ('A', 'F')],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_sh() {
        let table = [
            ("*.py", "main.py", true),
            ("*.py", "main.pyc", false),
            ("m?in.py", "main.py", true),
            ("[abc]x", "bx", true),
            ("[!abc]x", "bx", false),
            ("[a-c]x", "cx", true),
            ("[[:digit:]]*", "7up", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("[x", "[x", true),
            ("", "", true),
            ("*", "", true),
        ];
        for (p, n, want) in table {
            assert_eq!(Pattern::parse(p).matches(n), want, "{p} vs {n}");
        }
        let quoted = Pattern::new(&[('*', true), ('.', false), ('*', false)]);
        assert!(quoted.matches("*.txt"));
        assert!(!quoted.matches("a.txt"));
    }

    #[test]
    fn an_adversarial_pattern_costs_name_times_pattern() {
        let pattern = Pattern::parse(&format!("{}b", "*a".repeat(500)));
        let name = "a".repeat(5000);
        assert!(!pattern.matches(&name));
        assert!(Pattern::parse(&format!("{}a", "*a".repeat(500))).matches(&name));
    }

    #[test]
    fn prefixes_and_suffixes_are_found_shortest_first() {
        let p = Pattern::parse("*/");
        assert_eq!(p.prefix_matches("a/b/c"), [2, 4]);
        let p = Pattern::parse(".*");
        assert_eq!(p.suffix_matches("x.tar.gz"), [5, 1]);
        assert_eq!(Pattern::parse("*").prefix_matches("ab"), [0, 1, 2]);
    }
}
