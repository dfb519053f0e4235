//! Glob patterns for docker sandboxes, with the wasm provider's meaning:
//! `*`, `?` and `[...]` within one component, `**` for any depth of
//! non-hidden directories, relative patterns under `/workspace`.
//!
//! The container lists candidates with `find`; matching happens here, so
//! no pattern is ever interpreted by a shell. The container decides how
//! much it lists, so matching is bounded: at most [`MAX_ENTRIES`] entries
//! are examined (the wasm walk's budget), a pattern has at most
//! [`MAX_PARTS`] components, and each entry costs at most one step per
//! component and live pattern position (no backtracking).

use crate::provider::glob::wildcard_match;
use crate::sandbox::path::SandboxPath;

/// Entries examined per glob, as the wasm provider's walk.
pub const MAX_ENTRIES: usize = 100_000;
/// Components of a pattern after its literal prefix, repeated `**` counted
/// once: deeper patterns have no use and multiply the matching work.
pub const MAX_PARTS: usize = 32;
/// Matcher steps (one wildcard match each) per glob: about a second of
/// CPU at worst, far above what any real tree needs.
const MAX_STEPS: usize = 20_000_000;

/// Where to walk and what to match there.
pub struct Plan {
    /// The deepest directory named literally by the pattern.
    pub start: SandboxPath,
    /// Levels below `start` worth walking; None for `**`.
    pub max_depth: Option<usize>,
    /// The pattern's components after `start`, with no `**` twice in a row.
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
        let mut rest: Vec<String> = parts[literal..].iter().map(|p| p.to_string()).collect();
        // `**/**` means what `**` means.
        rest.dedup_by(|a, b| a == "**" && b == "**");
        if rest.len() > MAX_PARTS {
            return Err(format!(
                "glob patterns may have at most {MAX_PARTS} components after their literal directory"
            ));
        }
        let max_depth = (!rest.iter().any(|p| p == "**")).then_some(rest.len());
        Ok(Plan {
            start,
            max_depth,
            parts: rest,
        })
    }

    /// The matching paths of a walk's output: NUL-terminated directories,
    /// an empty name, then NUL-terminated other entries. A walk cut short
    /// ends in a partial name, which is ignored. Sorted, without duplicates.
    pub fn select(&self, walk: &[u8]) -> Vec<String> {
        let mut items: Vec<&[u8]> = walk.split(|b| *b == 0).collect();
        items.pop();
        let mut is_dir = true;
        let (mut examined, mut steps) = (0, 0);
        let mut found = vec![];
        for item in items {
            if item.is_empty() {
                is_dir = false;
                continue;
            }
            if examined == MAX_ENTRIES || steps >= MAX_STEPS {
                break;
            }
            examined += 1;
            let path = String::from_utf8_lossy(item);
            if self.matches(&path, is_dir, &mut steps) {
                found.push(path.into_owned());
            }
        }
        found.sort();
        found.dedup();
        found
    }

    /// Whether `path`, as printed by `find` under `start`, matches; adds the
    /// wildcard matches it made to `steps`.
    pub fn matches(&self, path: &str, is_dir: bool, steps: &mut usize) -> bool {
        let start = self.start.to_string();
        let Some(rest) = path.strip_prefix(start.as_str()) else {
            return false;
        };
        if !(rest.is_empty() || rest.starts_with('/') || start == "/") {
            return false;
        }
        let comps: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();
        let parts: Vec<&str> = self.parts.iter().map(String::as_str).collect();
        matches_parts(&parts, &comps, is_dir, steps)
    }
}

/// Mirrors the wasm provider's walk: a component is entered only if it is
/// a directory, and `**` never enters a hidden one. Runs the pattern as a
/// set of live positions over the components, so the work is at most
/// components x positions, whatever the pattern.
fn matches_parts(parts: &[&str], comps: &[&str], last_is_dir: bool, steps: &mut usize) -> bool {
    // live[i]: the components so far can be matched by parts[..i].
    let mut live = vec![false; parts.len() + 1];
    live[0] = true;
    let close = |live: &mut Vec<bool>| {
        // `**` may match nothing: its position also stands for the next.
        for i in 0..parts.len() {
            if live[i] && parts[i] == "**" {
                live[i + 1] = true;
            }
        }
    };
    close(&mut live);
    for (j, comp) in comps.iter().enumerate() {
        let is_dir = j + 1 < comps.len() || last_is_dir;
        let mut next = vec![false; parts.len() + 1];
        let mut any = false;
        for i in 0..parts.len() {
            if !live[i] {
                continue;
            }
            if parts[i] == "**" {
                if is_dir && !comp.starts_with('.') {
                    next[i] = true;
                    any = true;
                }
                continue;
            }
            *steps += 1;
            // A component followed by more of the pattern must be a directory.
            if (i + 1 == parts.len() || is_dir) && wildcard_match(parts[i], comp) {
                next[i + 1] = true;
                any = true;
            }
        }
        if !any {
            return false;
        }
        live = next;
        close(&mut live);
    }
    live[parts.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(pattern: &str, paths: &[(&str, bool)]) -> Vec<String> {
        let plan = Plan::new(pattern).unwrap();
        paths
            .iter()
            .filter(|(p, d)| plan.matches(p, *d, &mut 0))
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
    fn repeated_double_stars_collapse_and_deep_patterns_are_refused() {
        let plan = Plan::new("**/**/**/*.rs").unwrap();
        assert_eq!(plan.parts, ["**", "*.rs"]);
        assert!(Plan::new(&vec!["*"; MAX_PARTS].join("/")).is_ok());
        assert_eq!(
            Plan::new(&vec!["*"; MAX_PARTS + 1].join("/")).err().unwrap(),
            "glob patterns may have at most 32 components after their literal directory"
        );
        // Literal components before the first wildcard do not count.
        assert!(Plan::new(&(vec!["d"; 100].join("/") + "/*")).is_ok());
    }

    #[test]
    fn a_pathological_pattern_on_a_deep_path_costs_components_times_positions() {
        let plan = Plan::new(&(vec!["**/*a*"; 15].join("/") + "/end")).unwrap();
        let deep = format!("/workspace/{}/end", vec!["a"; 2000].join("/"));
        let mut steps = 0;
        assert!(plan.matches(&deep, false, &mut steps));
        assert!(steps <= 2001 * plan.parts.len(), "{steps} steps");
        let mut steps = 0;
        assert!(!plan.matches(
            &format!("/workspace/{}/nope", vec!["a"; 2000].join("/")),
            false,
            &mut steps
        ));
    }

    #[test]
    fn selection_stops_at_the_entry_budget_and_ignores_a_cut_name() {
        let plan = Plan::new("*").unwrap();
        let mut walk = Vec::new();
        walk.extend_from_slice(b"/workspace\0\0");
        for i in 0..MAX_ENTRIES + 10 {
            walk.extend_from_slice(format!("/workspace/f{i}\0").as_bytes());
        }
        walk.extend_from_slice(b"/workspace/cut");
        let found = plan.select(&walk);
        // The start directory counts as examined and does not match `*`.
        assert_eq!(found.len(), MAX_ENTRIES - 1);
        assert!(!found.iter().any(|f| f.ends_with("cut")));
    }
}
