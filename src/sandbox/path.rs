//! Sandbox-relative paths that cannot express an escape.
//!
//! A client path is absolute inside the sandbox (`/tmp/x`) or relative to a
//! base directory (`/workspace` by default). It is normalised lexically; a
//! `..` that would climb above the sandbox root is refused. Symlinks are the
//! other way out, and those are stopped by cap-std when the path is used.

use std::fmt;

/// A normalised path inside a sandbox, stored without its leading `/`;
/// the root is the empty path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SandboxPath {
    components: Vec<String>,
}

/// Why a client path was refused; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} escapes the sandbox")]
    Escapes(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path is longer than 4096 bytes")]
    TooLong,
}

pub const WORKSPACE: &str = "/workspace";

impl SandboxPath {
    pub fn root() -> Self {
        SandboxPath { components: vec![] }
    }

    /// Resolves `input` against the sandbox-absolute directory `base`.
    pub fn resolve(base: &SandboxPath, input: &str) -> Result<Self, PathError> {
        if input.is_empty() {
            return Err(PathError::Empty);
        }
        if input.len() > 4096 {
            return Err(PathError::TooLong);
        }
        if input.contains('\0') {
            return Err(PathError::Nul(input.to_string()));
        }
        let mut components = if input.starts_with('/') {
            vec![]
        } else {
            base.components.clone()
        };
        for part in input.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if components.pop().is_none() {
                        return Err(PathError::Escapes(input.to_string()));
                    }
                }
                name => components.push(name.to_string()),
            }
        }
        Ok(SandboxPath { components })
    }

    /// Resolves a client path against `/workspace`, as the files API does.
    pub fn parse(input: &str) -> Result<Self, PathError> {
        Self::resolve(&Self::workspace(), input)
    }

    pub fn workspace() -> Self {
        SandboxPath {
            components: vec!["workspace".into()],
        }
    }

    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The path relative to the sandbox root, `.` for the root itself, as
    /// cap-std expects it.
    pub fn relative(&self) -> String {
        if self.components.is_empty() {
            ".".into()
        } else {
            self.components.join("/")
        }
    }

    pub fn parent(&self) -> Option<SandboxPath> {
        if self.components.is_empty() {
            return None;
        }
        let mut components = self.components.clone();
        components.pop();
        Some(SandboxPath { components })
    }

    pub fn file_name(&self) -> Option<&str> {
        self.components.last().map(String::as_str)
    }

    pub fn join(&self, name: &str) -> Result<SandboxPath, PathError> {
        SandboxPath::resolve(self, name)
    }

    pub fn components(&self) -> &[String] {
        &self.components
    }
}

impl fmt::Display for SandboxPath {
    /// The absolute form a client sees: `/workspace/a.txt`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.components.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_paths_resolve_inside_the_sandbox() {
        let table = [
            ("a.txt", "/workspace/a.txt"),
            ("./a.txt", "/workspace/a.txt"),
            ("sub/../a.txt", "/workspace/a.txt"),
            ("/tmp/x", "/tmp/x"),
            ("/", "/"),
            ("//tmp///x/", "/tmp/x"),
            ("..", "/"),
            ("../etc/passwd", "/etc/passwd"),
            ("/workspace/../workspace/b", "/workspace/b"),
            (".", "/workspace"),
        ];
        for (input, expected) in table {
            assert_eq!(SandboxPath::parse(input).unwrap().to_string(), expected, "{input}");
        }
    }

    #[test]
    fn paths_that_climb_above_the_root_are_refused() {
        for input in ["../..", "../../etc/passwd", "/..", "/../x", "a/../../../b"] {
            assert_eq!(
                SandboxPath::parse(input),
                Err(PathError::Escapes(input.to_string())),
                "{input}"
            );
        }
    }

    #[test]
    fn empty_and_nul_paths_are_refused() {
        assert_eq!(SandboxPath::parse(""), Err(PathError::Empty));
        assert_eq!(SandboxPath::parse("a\0b"), Err(PathError::Nul("a\0b".into())));
        assert_eq!(SandboxPath::parse(&"a".repeat(5000)), Err(PathError::TooLong));
    }

    #[test]
    fn relative_form_is_what_cap_std_expects() {
        assert_eq!(SandboxPath::root().relative(), ".");
        assert_eq!(SandboxPath::parse("x/y").unwrap().relative(), "workspace/x/y");
        assert_eq!(
            SandboxPath::parse("/tmp/x").unwrap().parent().unwrap().to_string(),
            "/tmp"
        );
    }
}
