//! Glob patterns for docker sandboxes, with the wasm provider's meaning:
//! `*`, `?` and `[...]` within one component, `**` for any depth of
//! non-hidden directories, relative patterns under `/workspace`.
//!
//! The container lists candidates with `find`; matching happens here, so
//! no pattern is ever interpreted by a shell.

use crate::sandbox::path::SandboxPath;

/// Where to walk and what to match there.
pub struct Plan {
    /// The deepest directory named literally by the pattern.
    pub start: SandboxPath,
    /// Levels below `start` worth walking; None for `**`.
    pub max_depth: Option<usize>,
    /// The pattern's components after `start`.
    parts: Vec<String>,
}

impl Plan {
    pub fn new(pattern: &str) -> Result<Plan, String> {
        let mut start = if pattern.starts_with('/') {
            SandboxPath::root()
        } else {
            SandboxPath::workspace()
        };
        let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        if parts.contains(&"..") {
            return Err("glob patterns may not contain ..".into());
        }
        let literal = parts.iter().take_while(|p| !p.contains(['*', '?', '['])).count();
        for part in &parts[..literal] {
            start = start.join(part).map_err(|e| e.to_string())?;
        }
        let parts: Vec<String> = parts[literal..].iter().map(|p| p.to_string()).collect();
        let max_depth = (!parts.iter().any(|p| p == "**")).then_some(parts.len());
        Ok(Plan {
            start,
            max_depth,
            parts,
        })
    }

    /// Whether `path`, as printed by `find` under `start`, matches.
    pub fn matches(&self, path: &str, is_dir: bool) -> bool {
        let start = self.start.to_string();
        let Some(rest) = path.strip_prefix(start.as_str()) else {
            return false;
        };
        if !(rest.is_empty() || rest.starts_with('/') || start == "/") {
            return false;
        }
        let comps: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();
        let parts: Vec<&str> = self.parts.iter().map(String::as_str).collect();
        matches_parts(&parts, &comps, is_dir)
    }
}

/// Mirrors the wasm provider's walk: a component is entered only if it is
/// a directory, and `**` never enters a hidden one.
fn matches_parts(parts: &[&str], comps: &[&str], last_is_dir: bool) -> bool {
    let is_dir = |i: usize| i + 1 < comps.len() || last_is_dir;
    let Some((first, rest)) = parts.split_first() else {
        return comps.is_empty();
    };
    if *first == "**" {
        if matches_parts(rest, comps, last_is_dir) {
            return true;
        }
        return !comps.is_empty()
            && !comps[0].starts_with('.')
            && is_dir(0)
            && matches_parts(parts, &comps[1..], last_is_dir);
    }
    let Some((name, tail)) = comps.split_first() else {
        return false;
    };
    if !wildcard_match(first, name) {
        return false;
    }
    if rest.is_empty() {
        tail.is_empty()
    } else {
        is_dir(0) && matches_parts(rest, tail, last_is_dir)
    }
}

/// Shell-style match of one path component: `*`, `?` and `[...]` classes.
/// A leading `.` must be matched explicitly, as in sh. (The same as the
/// wasm provider's, which keeps its copy private.)
fn wildcard_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut star_n) = (None, 0);
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some(pi);
                    star_n = ni;
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_match(&p, pi, n[ni]) {
                        if matched {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some(s) => {
                pi = s + 1;
                star_n += 1;
                ni = star_n;
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; returns
/// whether it matched and the index after `]`, or None if unterminated.
fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (p[i] != ']' || first) {
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    if i >= p.len() {
        return None;
    }
    Some((matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(pattern: &str, paths: &[(&str, bool)]) -> Vec<String> {
        let plan = Plan::new(pattern).unwrap();
        paths
            .iter()
            .filter(|(p, d)| plan.matches(p, *d))
            .map(|(p, _)| p.to_string())
            .collect()
    }

    #[test]
    fn patterns_match_like_the_wasm_walk() {
        let tree = [
            ("/workspace", true),
            ("/workspace/a.txt", false),
            ("/workspace/moved", true),
            ("/workspace/moved/b.txt", false),
            ("/workspace/.git", true),
            ("/workspace/.git/c.txt", false),
            ("/workspace/x.txt", true),
        ];
        assert_eq!(
            hits("**/*.txt", &tree),
            ["/workspace/a.txt", "/workspace/moved/b.txt", "/workspace/x.txt"]
        );
        assert_eq!(hits("*.txt", &tree), ["/workspace/a.txt", "/workspace/x.txt"]);
        assert_eq!(hits("moved/*", &tree), ["/workspace/moved/b.txt"]);
        assert_eq!(hits(".git/*.txt", &tree), ["/workspace/.git/c.txt"]);
        assert_eq!(hits("a.txt", &tree), ["/workspace/a.txt"]);
        assert_eq!(
            hits("/tmp/*.dat", &[("/tmp/b.dat", false), ("/tmpx/c.dat", false)]),
            ["/tmp/b.dat"]
        );
        assert_eq!(
            hits("/*/b.dat", &[("/tmp/b.dat", false), ("/tmp", true)]),
            ["/tmp/b.dat"]
        );
    }

    #[test]
    fn the_walk_starts_at_the_literal_prefix() {
        let plan = Plan::new("/tmp/sub/*.py").unwrap();
        assert_eq!((plan.start.to_string(), plan.max_depth), ("/tmp/sub".into(), Some(1)));
        let plan = Plan::new("src/**/*.rs").unwrap();
        assert_eq!(
            (plan.start.to_string(), plan.max_depth),
            ("/workspace/src".into(), None)
        );
        assert!(Plan::new("../x").is_err());
    }

    #[test]
    fn wildcards_match_like_sh() {
        let table = [
            ("*.py", "main.py", true),
            ("*.py", "main.pyc", false),
            ("m?in.py", "main.py", true),
            ("*", ".hidden", false),
            (".*", ".hidden", true),
            ("[abc]x", "bx", true),
            ("[!abc]x", "bx", false),
            ("[a-c]x", "cx", true),
            ("[x", "[x", true),
        ];
        for (p, n, want) in table {
            assert_eq!(wildcard_match(p, n), want, "{p} vs {n}");
        }
    }
}
