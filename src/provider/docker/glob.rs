//! Glob patterns for docker sandboxes, with the wasm provider's meaning:
//! `*`, `?` and `[...]` within one component, `**` for any depth of
//! non-hidden directories, relative patterns under `/workspace`.
//!
//! The container lists candidates with `find`; matching happens here, so
//! no pattern is ever interpreted by a shell.

use crate::provider::glob::wildcard_match;
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
}
