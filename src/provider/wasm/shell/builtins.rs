//! The shell's builtins: only what must live in the shell, because it
//! changes the shell itself (`cd`, `export`, `unset`, `exit`), resolves
//! commands (`which`, `env CMD`), or is too cheap to start a guest for
//! (`:`, `true`, `false`, `test`, `[`). Every other utility (`ls`, `cat`,
//! `echo`, `printf`...) runs as a wasm guest from the coreutils image.
//!
//! Each builtin's work is bounded by its arguments, which the expansion
//! caps; none reads a file's contents, and none recurses on its input.

use super::exec::{Flow, Shell, Stop};
use super::io::CmdIo;
use crate::provider::wasm::{Resolved, packages};

pub type Builtin = fn(&mut Shell, &[String], &CmdIo) -> Flow<i32>;

/// Commands of the shell itself, found only by their bare name.
const SHELL_COMMANDS: &[(&str, Builtin)] = &[
    ("cd", cd),
    ("export", export),
    ("unset", unset),
    ("exit", exit),
    (":", true_),
];

/// Utilities the shell runs itself, also found as `/bin/NAME` and
/// `/usr/bin/NAME`.
const UTILITIES: &[(&str, Builtin)] = &[
    ("true", true_),
    ("false", false_),
    ("test", test),
    ("[", test),
    ("env", env),
    ("which", which),
    ("pip", pip),
    ("pip3", pip),
];

/// How deep `(` ... `)` may nest in a `test` expression.
const MAX_TEST_DEPTH: usize = 64;

pub fn find(name: &str) -> Option<Builtin> {
    if let Some((_, f)) = SHELL_COMMANDS.iter().find(|(n, _)| *n == name) {
        return Some(*f);
    }
    let base = base_name(name);
    if base != name
        && !["/bin/", "/usr/bin/", "/usr/local/bin/"]
            .iter()
            .any(|d| name.strip_prefix(d) == Some(base))
    {
        return None;
    }
    UTILITIES.iter().find(|(n, _)| *n == base).map(|(_, f)| *f)
}

/// `cat` for `/bin/cat`.
pub fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn err(sh: &mut Shell, io: &CmdIo, message: String) {
    sh.write_stderr(io, format!("{message}\n").as_bytes());
}

fn true_(_: &mut Shell, _: &[String], _: &CmdIo) -> Flow<i32> {
    Ok(0)
}

fn false_(_: &mut Shell, _: &[String], _: &CmdIo) -> Flow<i32> {
    Ok(1)
}

fn exit(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let status = match args.get(1) {
        None => sh.status,
        Some(n) => match n.parse::<i64>() {
            Ok(n) if n >= 0 => (n & 0xff) as i32,
            _ => {
                err(sh, io, format!("sh: 1: exit: Illegal number: {n}"));
                2
            }
        },
    };
    Err(Stop::Exit(status))
}

fn cd(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let (target, print) = match args.get(1).map(String::as_str) {
        None => (sh.vars.get("HOME").cloned().unwrap_or_else(|| "/".into()), false),
        Some("-") => (
            sh.vars.get("OLDPWD").cloned().unwrap_or_else(|| sh.cwd.to_string()),
            true,
        ),
        Some(dir) => (dir.to_string(), false),
    };
    let path = match sh.resolve_path(&target) {
        Ok(p) if sh.root.metadata(p.relative()).is_ok_and(|m| m.is_dir()) => p,
        _ => {
            err(sh, io, format!("sh: 1: cd: can't cd to {target}"));
            return Ok(2);
        }
    };
    let old = sh.cwd.to_string();
    sh.cwd = path;
    let now = sh.cwd.to_string();
    sh.set_var("OLDPWD", old)?;
    sh.set_var("PWD", now.clone())?;
    if print {
        sh.write(&io.stdout, format!("{now}\n").as_bytes());
    }
    Ok(0)
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `'it'\''s'`: a value as sh would read it back.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn export(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    if args.len() == 1 {
        let mut text = String::new();
        for k in &sh.exported {
            match sh.vars.get(k) {
                Some(v) => text.push_str(&format!("export {k}={}\n", sh_quote(v))),
                None => text.push_str(&format!("export {k}\n")),
            }
        }
        sh.write(&io.stdout, text.as_bytes());
        return Ok(0);
    }
    let mut status = 0;
    for arg in &args[1..] {
        let (name, value) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (arg.as_str(), None),
        };
        if !is_name(name) {
            err(sh, io, format!("sh: 1: export: {arg}: bad variable name"));
            status = 2;
            continue;
        }
        if let Some(v) = value {
            sh.set_var(name, v.to_string())?;
        }
        sh.exported.insert(name.to_string());
    }
    Ok(status)
}

fn unset(sh: &mut Shell, args: &[String], _: &CmdIo) -> Flow<i32> {
    for name in args[1..].iter().filter(|a| !a.starts_with('-')) {
        sh.unset_var(name);
    }
    Ok(0)
}

/// `env` prints the environment, or runs a command with more variables:
/// `env A=1 B=2 cmd args`. Repeated `env` words are taken in one loop, so
/// no input makes this recurse.
fn env(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let mut assignments = vec![];
    let mut rest = &args[1..];
    loop {
        match rest.split_first() {
            Some((first, tail)) if first.split_once('=').is_some_and(|(k, _)| is_name(k)) => {
                let (k, v) = first.split_once('=').expect("checked");
                assignments.push((k.to_string(), v.to_string()));
                rest = tail;
            }
            Some((first, tail)) if base_name(first) == "env" && find(first).is_some() => rest = tail,
            _ => break,
        }
    }
    if rest.is_empty() {
        let mut vars = sh.environment(&Default::default());
        vars.extend(assignments);
        let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        sh.write(&io.stdout, text.as_bytes());
        return Ok(0);
    }
    sh.command(rest, &assignments, io)
}

/// Where each command comes from: a program (`/usr/bin/NAME`, which runs
/// as a wasm guest), or a builtin of the shell.
fn which(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let mut status = 0;
    let mut text = String::new();
    for name in args[1..].iter().filter(|a| !a.starts_with('-')) {
        if SHELL_COMMANDS.iter().any(|(n, _)| n == name) {
            text.push_str(&format!("{name}: shell builtin\n"));
        } else if matches!((sh.resolve)(name), Resolved::Runtime(..)) || find(name).is_some() {
            if name.starts_with('/') {
                text.push_str(&format!("{name}\n"));
            } else {
                text.push_str(&format!("/usr/bin/{name}\n"));
            }
        } else {
            status = 1;
        }
    }
    sh.write(&io.stdout, text.as_bytes());
    Ok(status)
}

/// `pip install`, `uninstall`, `list` and `freeze`: pure-Python packages
/// for the sandbox's `python3`, resolved and downloaded by the host
/// (`packages.rs`, which bounds it all); nothing of a package runs here.
fn pip(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    sh.check_limits()?;
    let Some(version) = sh.pip.python_version.clone() else {
        err(sh, io, "pip: no Python runs in this sandbox".into());
        return Ok(127);
    };
    let manager = sh.pip.manager.clone();
    let (ledger, dir, cancel) = sh.sandbox();
    let (ledger, dir, cancel) = (ledger.clone(), dir.to_path_buf(), cancel.clone());
    let (status, out, error) = {
        let target = packages::Target {
            root: &sh.root,
            ledger: &ledger,
            python_version: &version,
            deadline: sh.deadline,
            cancel: &cancel,
        };
        packages::shell_pip(manager.as_deref(), &target, &dir, &sh.cwd, &args[1..])
    };
    sh.write(&io.stdout, out.as_bytes());
    sh.write_stderr(io, error.as_bytes());
    sh.check_limits()?;
    Ok(status)
}

/// `test` and `[`: POSIX expressions with `!`, `-a`, `-o` and parentheses.
fn test(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let name = base_name(&args[0]);
    let mut operands: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    if name == "[" {
        if operands.last() != Some(&"]") {
            err(sh, io, "sh: 1: [: missing ]".into());
            return Ok(2);
        }
        operands.pop();
    }
    let mut eval = TestEval {
        sh,
        args: &operands,
        pos: 0,
        depth: 0,
    };
    let result = eval.or().and_then(|value| {
        if eval.pos < operands.len() {
            Err(format!("{}: unexpected operator", operands[eval.pos]))
        } else {
            Ok(value)
        }
    });
    match result {
        Ok(true) => Ok(0),
        Ok(false) => Ok(1),
        Err(why) => {
            err(sh, io, format!("sh: 1: {name}: {why}"));
            Ok(2)
        }
    }
}

/// A recursive-descent evaluator whose only recursion is through
/// parentheses, which [`MAX_TEST_DEPTH`] bounds; runs of `!` are counted
/// in a loop.
struct TestEval<'a, 's> {
    sh: &'s Shell,
    args: &'a [&'a str],
    pos: usize,
    depth: usize,
}

const UNARY: &[&str] = &["-e", "-f", "-d", "-s", "-r", "-w", "-x", "-L", "-h", "-z", "-n"];
const BINARY: &[&str] = &["=", "==", "!=", "-eq", "-ne", "-lt", "-gt", "-le", "-ge"];

impl<'a> TestEval<'a, '_> {
    fn peek(&self, offset: usize) -> Option<&'a str> {
        self.args.get(self.pos + offset).copied()
    }

    fn or(&mut self) -> Result<bool, String> {
        let mut value = self.and()?;
        while self.peek(0) == Some("-o") {
            self.pos += 1;
            value |= self.and()?;
        }
        Ok(value)
    }

    fn and(&mut self) -> Result<bool, String> {
        let mut value = self.not()?;
        while self.peek(0) == Some("-a") {
            self.pos += 1;
            value &= self.not()?;
        }
        Ok(value)
    }

    fn not(&mut self) -> Result<bool, String> {
        let mut negate = false;
        loop {
            let binary_next = self.peek(1).is_some_and(|op| BINARY.contains(&op)) && self.peek(2).is_some();
            if self.peek(0) != Some("!") || binary_next {
                break;
            }
            self.pos += 1;
            negate = !negate;
        }
        Ok(self.primary()? != negate)
    }

    fn primary(&mut self) -> Result<bool, String> {
        let Some(first) = self.peek(0) else {
            return Ok(false);
        };
        if let (Some(op), Some(right)) = (self.peek(1), self.peek(2))
            && BINARY.contains(&op)
        {
            self.pos += 3;
            return binary(first, op, right);
        }
        if first == "(" && self.peek(1).is_some() {
            if self.depth == MAX_TEST_DEPTH {
                return Err(format!("parentheses nest deeper than {MAX_TEST_DEPTH} levels"));
            }
            self.pos += 1;
            self.depth += 1;
            let value = self.or()?;
            self.depth -= 1;
            if self.peek(0) != Some(")") {
                return Err("missing )".into());
            }
            self.pos += 1;
            return Ok(value);
        }
        if UNARY.contains(&first)
            && let Some(operand) = self.peek(1)
        {
            self.pos += 2;
            return Ok(self.unary(first, operand));
        }
        self.pos += 1;
        Ok(!first.is_empty())
    }

    fn unary(&self, op: &str, operand: &str) -> bool {
        use cap_std::fs::MetadataExt;
        match op {
            "-z" => return operand.is_empty(),
            "-n" => return !operand.is_empty(),
            _ => {}
        }
        let Ok(path) = self.sh.resolve_path(operand) else {
            return false;
        };
        let root = &self.sh.root;
        if matches!(op, "-L" | "-h") {
            return root
                .symlink_metadata(path.relative())
                .is_ok_and(|m| m.file_type().is_symlink());
        }
        let Ok(meta) = root.metadata(path.relative()) else {
            return false;
        };
        match op {
            "-f" => meta.is_file(),
            "-d" => meta.is_dir(),
            "-s" => meta.len() > 0,
            "-x" => meta.mode() & 0o111 != 0,
            _ => true,
        }
    }
}

fn binary(left: &str, op: &str, right: &str) -> Result<bool, String> {
    let int = |s: &str| s.trim().parse::<i64>().map_err(|_| format!("Illegal number: {s}"));
    Ok(match op {
        "=" | "==" => left == right,
        "!=" => left != right,
        "-eq" => int(left)? == int(right)?,
        "-ne" => int(left)? != int(right)?,
        "-lt" => int(left)? < int(right)?,
        "-gt" => int(left)? > int(right)?,
        "-le" => int(left)? <= int(right)?,
        _ => int(left)? >= int(right)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilities_are_found_by_bare_name_and_in_the_bin_directories_only() {
        assert!(find("test").is_some());
        assert!(find("/usr/bin/[").is_some());
        assert!(find("/bin/true").is_some());
        assert!(find("/tmp/true").is_none());
        assert!(find("/bin/cd").is_none());
        assert!(find("ls").is_none());
    }
}
