//! Glob patterns for `files/glob`, shared by every provider so that a
//! pattern means the same everywhere: `*`, `?` and `[...]` within one path
//! component, `**` for any depth of non-hidden directories, relative
//! patterns under `/workspace`.
//!
//! Everything here is bounded: a pattern is checked against
//! [`MAX_PATTERN_BYTES`], [`MAX_SEGMENTS`] and [`MAX_SEGMENT_BYTES`] before
//! use, repeated `**` segments collapse into one, [`wildcard_match`] is
//! O(name × pattern), and [`walk`] is iterative and visits at most a budget
//! of directory entries.

use crate::sandbox::path::SandboxPath;

/// Longest pattern accepted: far beyond any real path pattern.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Most components a pattern may have, once `.` and repeated `**` are gone.
pub const MAX_SEGMENTS: usize = 32;
/// Longest component: a file name cannot be longer (NAME_MAX), so a longer
/// component could only be stars.
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Directory entries one walk may visit before it stops with what it found.
pub const WALK_BUDGET: usize = 100_000;
/// Wall-clock time one walk may take before it stops with what it found:
/// a walk of the whole budget takes well under a second.
pub const GLOB_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// A checked, normalised glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobPattern {
    absolute: bool,
    parts: Vec<String>,
}

impl GlobPattern {
    /// Checks the bounds and normalises: empty and `.` components go,
    /// `**/**` becomes `**`, and `..` is refused. The error is a sentence
    /// for the client that names the bound.
    pub fn parse(pattern: &str) -> Result<GlobPattern, String> {
        if pattern.is_empty() {
            return Err("pattern is empty".into());
        }
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(format!("the pattern is longer than {MAX_PATTERN_BYTES} bytes"));
        }
        let mut parts: Vec<String> = vec![];
        for part in pattern.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                return Err("glob patterns may not contain ..".into());
            }
            if part.len() > MAX_SEGMENT_BYTES {
                return Err(format!("a pattern component is longer than {MAX_SEGMENT_BYTES} bytes"));
            }
            if part == "**" && parts.last().is_some_and(|p| p == "**") {
                continue;
            }
            parts.push(part.to_string());
        }
        if parts.len() > MAX_SEGMENTS {
            return Err(format!("the pattern has more than {MAX_SEGMENTS} components"));
        }
        Ok(GlobPattern {
            absolute: pattern.starts_with('/'),
            parts,
        })
    }

    /// Where the pattern is resolved: `/` or `/workspace`.
    pub fn base(&self) -> SandboxPath {
        if self.absolute {
            SandboxPath::root()
        } else {
            SandboxPath::workspace()
        }
    }

    pub fn parts(&self) -> &[String] {
        &self.parts
    }
}

impl std::fmt::Display for GlobPattern {
    /// The normalised pattern, which parses back to itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.absolute, self.parts.is_empty()) {
            (true, _) => write!(f, "/{}", self.parts.join("/")),
            (false, true) => f.write_str("."),
            (false, false) => f.write_str(&self.parts.join("/")),
        }
    }
}

/// What a walk found; `truncated` when it stopped at a bound or was stopped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WalkResult {
    pub paths: Vec<String>,
    pub truncated: bool,
}

/// Bytes of paths a walk may hold at once, found and still to visit: a
/// response far larger than any client would read, and a bound on memory
/// that holds however deep or wide the tree.
pub const WALK_BYTES: usize = 16 << 20;

/// The positions of a pattern (at most [`MAX_SEGMENTS`] + 1) a path has
/// reached, as bits.
type States = u64;

/// Adds the positions after each `**` that is reached, since `**` also
/// matches no directory at all.
fn close(parts: &[String], mut states: States) -> States {
    for (j, part) in parts.iter().enumerate() {
        if states & (1 << j) != 0 && part == "**" {
            states |= 1 << (j + 1);
        }
    }
    states
}

/// The positions reached after entry `name` from `states`.
fn step(parts: &[String], states: States, name: &str, is_dir: bool) -> States {
    let mut next = 0;
    for (j, part) in parts.iter().enumerate() {
        if states & (1 << j) == 0 {
            continue;
        }
        if part == "**" {
            if is_dir && !name.starts_with('.') {
                next |= 1 << j;
            }
        } else if (j + 1 == parts.len() || is_dir) && wildcard_match(part, name) {
            next |= 1 << (j + 1);
        }
    }
    close(parts, next)
}

/// Walks the directories the pattern can reach and returns the matching
/// sandbox paths, sorted. `read_dir` lists a directory as (name, is a
/// directory, not following symlinks), or None when it cannot be read;
/// `stop` is asked before each entry and ends the walk early (a deadline,
/// a client that left).
///
/// The walk keeps its own stack, so no tree is deep enough to exhaust the
/// thread's; each directory is read once with every pattern position it
/// reaches, so several `**` cannot multiply the work; and it reads at most
/// `budget` entries and holds at most [`WALK_BYTES`] of paths.
pub fn walk<I>(
    pattern: &GlobPattern,
    budget: usize,
    mut read_dir: impl FnMut(&SandboxPath) -> Option<I>,
    mut stop: impl FnMut() -> bool,
) -> WalkResult
where
    I: Iterator<Item = (String, bool)>,
{
    let parts = &pattern.parts;
    let accept: States = 1 << parts.len();
    let mut out = WalkResult::default();
    let mut left = budget;
    let mut bytes = 0usize;
    let base = pattern.base().to_string();
    let start = close(parts, 1);
    if start & accept != 0 {
        out.paths.push(base.clone());
    }
    // Directories still to read, as their sandbox path: a string holds a
    // path in the bytes that are counted against WALK_BYTES.
    let mut stack: Vec<(String, States)> = vec![(base, start)];
    'walk: while let Some((dir, states)) = stack.pop() {
        bytes = bytes.saturating_sub(dir.len());
        // A path too long to name cannot be read either.
        let Ok(dir_path) = SandboxPath::resolve(&SandboxPath::root(), &dir) else {
            continue;
        };
        let Some(entries) = read_dir(&dir_path) else { continue };
        for (name, is_dir) in entries {
            if left == 0 || stop() {
                out.truncated = true;
                break 'walk;
            }
            left -= 1;
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                continue;
            }
            let next = step(parts, states, &name, is_dir);
            if next == 0 {
                continue;
            }
            let child = if dir == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            };
            let found = next & accept != 0;
            let enter = is_dir && next & !accept != 0;
            let cost = child.len() * (usize::from(found) + usize::from(enter));
            if bytes.saturating_add(cost) > WALK_BYTES {
                out.truncated = true;
                break 'walk;
            }
            bytes += cost;
            if found {
                out.paths.push(child.clone());
            }
            if enter {
                stack.push((child, next & !accept));
            }
        }
    }
    out.paths.sort();
    out.paths.dedup();
    out
}

/// Whether a path, given as its components below the pattern's base,
/// matches the components of a pattern, with the walk's meaning: only
/// directories are entered, and `**` never enters a hidden one.
/// `last_is_dir` tells whether the path itself is a directory.
///
/// It runs the pattern as a set of positions over the path, so it takes
/// O(components × pattern) matches whatever the number of `**`.
pub fn path_matches(parts: &[&str], comps: &[&str], last_is_dir: bool) -> bool {
    let n = parts.len();
    // `**` at a position also matches nothing: close over that.
    let close = |states: &mut Vec<bool>| {
        for j in 0..n {
            if states[j] && parts[j] == "**" {
                states[j + 1] = true;
            }
        }
    };
    let mut states = vec![false; n + 1];
    states[0] = true;
    close(&mut states);
    for (k, comp) in comps.iter().enumerate() {
        let is_dir = k + 1 < comps.len() || last_is_dir;
        let mut next = vec![false; n + 1];
        for (j, part) in parts.iter().enumerate() {
            if !states[j] {
                continue;
            }
            if *part == "**" {
                if is_dir && !comp.starts_with('.') {
                    next[j] = true;
                }
            } else if (j + 1 == n || is_dir) && wildcard_match(part, comp) {
                next[j + 1] = true;
            }
        }
        close(&mut next);
        if !next.iter().any(|s| *s) {
            return false;
        }
        states = next;
    }
    states[n]
}

/// Shell-style match of one path component: `*`, `?` and `[...]` classes.
/// A leading `.` must be matched explicitly, as in sh.
///
/// It backtracks only to the last `*`, so it takes at most
/// O(name × pattern) steps, never exponential ones, whatever the pattern.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let mut steps = 0;
    matches(pattern, name, &mut steps)
}

fn matches(pattern: &str, name: &str, steps: &mut usize) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut star_n) = (None, 0);
    while let Some(&c) = n.get(ni) {
        *steps += 1;
        match p.get(pi) {
            Some('*') => {
                star = Some(pi);
                star_n = ni;
                pi += 1;
                continue;
            }
            Some('?') => {
                pi += 1;
                ni += 1;
                continue;
            }
            Some('[') => match class_match(&p, pi, c, steps) {
                Some((true, next)) => {
                    pi = next;
                    ni += 1;
                    continue;
                }
                Some((false, _)) => {}
                None if c == '[' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                None => {}
            },
            Some(&literal) if literal == c => {
                pi += 1;
                ni += 1;
                continue;
            }
            _ => {}
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
    p.get(pi..).unwrap_or_default().iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; returns
/// whether it matched and the index after `]`, or None if unterminated.
fn class_match(p: &[char], start: usize, c: char, steps: &mut usize) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        *steps += 1;
        let &here = p.get(i)?;
        if here == ']' && !first {
            break;
        }
        first = false;
        match (p.get(i + 1), p.get(i + 2)) {
            (Some('-'), Some(&to)) if to != ']' => {
                if here <= c && c <= to {
                    matched = true;
                }
                i += 3;
            }
            _ => {
                if here == c {
                    matched = true;
                }
                i += 1;
            }
        }
    }
    Some((matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("[x", "[x", true),
            ("[]]", "]", true),
            ("[a-]", "-", true),
            ("", "", true),
            ("*", "", true),
            ("a", "", false),
        ];
        for (p, n, want) in table {
            assert_eq!(wildcard_match(p, n), want, "{p} vs {n}");
        }
    }

    /// The backtracking is bounded by name × pattern even for the patterns
    /// that make naive matchers exponential: `*a*a*a…b` against `aaaa…`,
    /// and a long literal tail after a star.
    #[test]
    fn wildcard_match_is_bounded_by_name_times_pattern_on_adversarial_input() {
        let name = "a".repeat(4000);
        let stars = format!("{}b", "*a".repeat(2000));
        let tail = format!("*{}b", "a".repeat(3000));
        let classes = format!("*{}b", "[a]".repeat(1000));
        for pattern in [stars, tail, classes] {
            let mut steps = 0;
            let started = std::time::Instant::now();
            assert!(!matches(&pattern, &name, &mut steps));
            let bound = (name.len() + 1) * (pattern.len() + 1);
            assert!(steps <= bound, "{steps} steps > {bound}");
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
        }
        // The same shape that can match does so.
        assert!(wildcard_match(&format!("{}a", "*a".repeat(100)), &"a".repeat(300)));
    }

    #[test]
    fn patterns_are_bounded_and_normalised() {
        let ok = |p: &str| GlobPattern::parse(p).unwrap().to_string();
        assert_eq!(ok("**/**/**/x"), "**/x");
        assert_eq!(ok("/a/**/**/b/**"), "/a/**/b/**");
        assert_eq!(ok("./a//b/./*.py"), "a/b/*.py");
        assert_eq!(ok("."), ".");
        assert_eq!(ok("/"), "/");
        assert_eq!(ok(&"**/".repeat(300)), "**");
        let err = |p: &str| GlobPattern::parse(p).unwrap_err();
        assert_eq!(err(""), "pattern is empty");
        assert_eq!(err("../x"), "glob patterns may not contain ..");
        assert_eq!(err(&"a".repeat(1025)), "the pattern is longer than 1024 bytes");
        assert_eq!(err(&"a/".repeat(33)), "the pattern has more than 32 components");
        assert_eq!(
            err(&format!("{}/x", "*".repeat(256))),
            "a pattern component is longer than 255 bytes"
        );
        assert!(GlobPattern::parse(&"a/".repeat(32)).is_ok());
    }

    /// An in-memory tree: directory → entries.
    fn tree(entries: &[&str]) -> std::collections::BTreeMap<String, Vec<(String, bool)>> {
        let mut dirs: std::collections::BTreeMap<String, Vec<(String, bool)>> = Default::default();
        for e in entries {
            let is_dir = e.ends_with('/');
            let path = e.trim_end_matches('/');
            let (parent, name) = path.rsplit_once('/').unwrap();
            let parent = if parent.is_empty() { "/" } else { parent };
            dirs.entry(parent.to_string())
                .or_default()
                .push((name.to_string(), is_dir));
            if is_dir {
                dirs.entry(path.to_string()).or_default();
            }
        }
        dirs
    }

    fn glob(dirs: &std::collections::BTreeMap<String, Vec<(String, bool)>>, pattern: &str) -> Vec<String> {
        let pattern = GlobPattern::parse(pattern).unwrap();
        let result = walk(
            &pattern,
            WALK_BUDGET,
            |d| dirs.get(&d.to_string()).map(|e| e.clone().into_iter()),
            || false,
        );
        assert!(!result.truncated);
        result.paths
    }

    #[test]
    fn the_walk_matches_like_sh_with_double_star() {
        let dirs = tree(&[
            "/workspace/",
            "/workspace/a.txt",
            "/workspace/moved/",
            "/workspace/moved/b.txt",
            "/workspace/.git/",
            "/workspace/.git/c.txt",
            "/workspace/x.txt/",
            "/tmp/",
            "/tmp/b.dat",
        ]);
        assert_eq!(
            glob(&dirs, "**/*.txt"),
            ["/workspace/a.txt", "/workspace/moved/b.txt", "/workspace/x.txt"]
        );
        assert_eq!(glob(&dirs, "**/**/**/*.txt"), glob(&dirs, "**/*.txt"));
        assert_eq!(glob(&dirs, "*.txt"), ["/workspace/a.txt", "/workspace/x.txt"]);
        assert_eq!(glob(&dirs, ".git/*.txt"), ["/workspace/.git/c.txt"]);
        assert_eq!(glob(&dirs, "/*/b.dat"), ["/tmp/b.dat"]);
        assert_eq!(
            glob(&dirs, "**"),
            ["/workspace", "/workspace/moved", "/workspace/x.txt"]
        );
        assert_eq!(glob(&dirs, "nothing*"), Vec::<String>::new());
    }

    #[test]
    fn path_matches_agrees_with_the_walk() {
        let dirs = tree(&[
            "/workspace/",
            "/workspace/a.txt",
            "/workspace/moved/",
            "/workspace/moved/b.txt",
            "/workspace/moved/deeper/",
            "/workspace/moved/deeper/c.txt",
            "/workspace/.git/",
            "/workspace/.git/c.txt",
            "/workspace/x.txt/",
        ]);
        let all: Vec<(Vec<&str>, bool)> = dirs
            .iter()
            .flat_map(|(d, entries)| entries.iter().map(move |(n, is_dir)| (format!("{d}/{n}"), *is_dir)))
            .filter_map(|(path, is_dir)| {
                let rest = path.strip_prefix("/workspace/")?.to_string();
                Some((rest.leak().split('/').collect(), is_dir))
            })
            .collect();
        for pattern in [
            "**/*.txt",
            "*.txt",
            "moved/**/c.txt",
            "**/deeper/**",
            "**",
            ".git/*",
            "*/*/*.txt",
        ] {
            let parts: Vec<&str> = pattern.split('/').collect();
            let mut by_match: Vec<String> = all
                .iter()
                .filter(|(comps, is_dir)| path_matches(&parts, comps, *is_dir))
                .map(|(comps, _)| format!("/workspace/{}", comps.join("/")))
                .collect();
            if path_matches(&parts, &[], true) {
                by_match.push("/workspace".into());
            }
            by_match.sort();
            assert_eq!(by_match, glob(&dirs, pattern), "{pattern}");
        }
    }

    #[test]
    fn path_matches_stays_linear_with_many_double_stars() {
        let parts: Vec<&str> = "**/a/**/a/**/a/**/a/**/a/**/a/**/b".split('/').collect();
        let comps: Vec<&str> = std::iter::repeat_n("a", 5000).collect();
        let started = std::time::Instant::now();
        assert!(!path_matches(&parts, &comps, false));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn the_walk_stops_at_its_budget_and_never_recurses() {
        // A chain 2 000 directories deep, as deep as a 4 KiB path goes: the
        // walk's own stack holds it.
        let depth = 2_000;
        let pattern = GlobPattern::parse("/**/leaf").unwrap();
        let mut read = 0;
        let result = walk(
            &pattern,
            WALK_BUDGET,
            |d: &SandboxPath| {
                read += 1;
                let level = d.components().len();
                (level < depth).then(|| vec![("d".to_string(), true)].into_iter())
            },
            || false,
        );
        assert!(!result.truncated);
        assert_eq!(read, depth + 1);
        let wide = walk(
            &GlobPattern::parse("/**/*").unwrap(),
            1000,
            |_: &SandboxPath| Some((0..10).map(|i| (format!("d{i}"), true))),
            || false,
        );
        assert!(wide.truncated);
        assert!(wide.paths.len() <= 1000);
    }
}
