//! The stacyvm shell: shell-mode command lines on the wasm provider.
//!
//! It is a POSIX `sh` subset that runs inside stacyvm, on the sandbox
//! directory through cap-std; it never starts a host process. Builtins
//! (`echo`, `cat`, `ls`, `cd`, `test`...) run in-process; runtime commands
//! (`python3`...) run as wasm guests with the shell's working directory,
//! exported variables and pipes or redirections as their standard streams.
//!
//! What it runs: words with every kind of quoting, `$VAR`, `${VAR}` and `$?`
//! (split when unquoted), `;`, `&&`, `||`, `!`, pipes (each stage runs to
//! completion and its output is the next stage's input), redirections
//! (`<`, `>`, `>>`, `2>`, `2>>`, `2>&1`, `>&2`), prefix and plain
//! assignments, globbing of unquoted `*`, `?` and `[...]`, `#` comments and
//! newlines. Everything else that sh accepts (loops, `if`, functions,
//! subshells, command substitution, here-documents, `&`...) exits with
//! status 2 and a message naming it, never silently misread.
//!
//! Parsing is brush-parser's (a maintained bash parser): [`syntax`] maps its
//! tree onto the subset above. The limits of an exec hold for the whole
//! script: the deadline between commands and in `sleep`, the output cap,
//! the disk quota for every byte builtins and redirections write, and the
//! client leaving.

mod builtins;
mod exec;
mod expand;
mod io;
mod syntax;

pub use exec::{PipContext, ShellJob, run};

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
