//! The stacyvm shell: shell-mode command lines on the wasm provider.
//!
//! It runs the POSIX `sh` language inside stacyvm, on the sandbox directory
//! through cap-std; it never starts a host process. Builtins that change
//! the shell (`cd`, `set`, `read`...) run in-process; every other command
//! (`ls`, `grep`, `python3`...) runs as a wasm guest with the shell's
//! working directory, exported variables and its pipes or redirections as
//! its standard streams. The commands of a pipeline run at the same time and
//! stream into each other.
//!
//! What it runs: every kind of quoting, parameters with their operators,
//! command substitution, arithmetic, lists, pipelines, `if`, `for`,
//! `while`, `until`, `case`, functions with `local`, subshells, groups,
//! here-documents, redirections of descriptors 0 to 9, `set -euxo
//! pipefail`, `trap ... EXIT`, background jobs and `wait`, and bash's
//! `[[ ]]` and `(( ))`. What it does not run (arrays, coprocesses, process
//! substitution...) exits with status 2 and a message naming it, never
//! silently misread.
//!
//! Parsing is brush-parser's (a maintained bash parser); [`syntax`] turns
//! its tree into the shell's own. The limits of an exec hold for the whole
//! script (see [`exec`]).

mod arith;
mod builtins;
mod exec;
mod expand;
mod io;
mod pattern;
mod syntax;

pub use exec::{ShellJob, Stages, run};

/// Quotes `arg` so that sh reads it back as exactly one word.
pub fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests;
