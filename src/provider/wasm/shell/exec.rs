//! The interpreter: runs and-or lists, pipelines and simple commands,
//! applying redirections, with builtins in-process and every other command
//! as a wasm guest.
//!
//! Everything a script controls is bounded before it costs the host: the
//! length of the command line and how deep it nests (so the parser's
//! recursion is bounded), the size of every expanded word, argument list
//! and the shell's variables, and the time (every command checks the
//! deadline and whether the client is still there).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cap_std::fs::{Dir, OpenOptions};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::io::{CmdIo, FileOut, In, Out, PIPE_LIMIT, PipeBuf, Sink, errno_text};
use super::syntax::{self, AndOrList, Connector, Param, Pipeline, RedirectTarget, Script, SimpleCommand};
use super::{builtins, expand};
use crate::provider::wasm::Resolved;
use crate::provider::wasm::engine::LoadedRuntime;
use crate::provider::wasm::files;
use crate::provider::wasm::guest::{self, GuestJob, GuestOut};
use crate::provider::wasm::quota::{DiskLedger, LedgerUse};
use crate::provider::{ExecOutput, OutputChunk, ProviderError, StreamKind};
use crate::sandbox::path::SandboxPath;

/// The longest command line the shell parses: far longer than any script
/// written by hand or by an agent; bulk data belongs in files.
pub const MAX_SCRIPT_BYTES: usize = 1 << 20;
/// How deep brackets, braces and compound commands may nest. The parser
/// recurses once per level; this keeps it far inside a guest thread's stack.
pub const MAX_NESTING: usize = 100;
/// The largest value one expanded word or variable may have.
pub const MAX_WORD_BYTES: usize = 1 << 20;
/// The most bytes and words one command's arguments may take after
/// expansion, as `ARG_MAX` bounds a real `exec`.
pub const MAX_ARGS_BYTES: usize = 4 << 20;
pub const MAX_ARGS: usize = 1 << 16;
/// The most the shell's variables may hold together.
pub const MAX_VARS_BYTES: usize = 16 << 20;

/// Finds the runtime a command word runs, and the guest argv that comes
/// before the user's arguments (`argv0` and the runtime's prefix).
pub type Resolver = Box<dyn Fn(&str) -> Resolved + Send>;

/// Everything one shell run needs; built by the provider from the request.
pub struct ShellJob {
    pub script: String,
    pub sandbox_dir: PathBuf,
    pub cwd: SandboxPath,
    /// The starting environment, every variable exported.
    pub env: BTreeMap<String, String>,
    /// Variables the client set, which a runtime's defaults do not replace.
    pub client_env: BTreeSet<String>,
    pub stdin: Vec<u8>,
    pub stdin_stream: Option<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>>,
    pub output: Option<UnboundedSender<OutputChunk>>,
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub fuel: u64,
    pub output_limit: usize,
    /// The sandbox's disk ledger, held for the whole script.
    pub ledger: Arc<DiskLedger>,
    /// Cancelled when the client left.
    pub cancel: CancellationToken,
    pub resolve: Resolver,
    /// What the `pip` builtin works with.
    pub pip: PipContext,
}

/// What the `pip` builtin needs: the server's package machinery, and the
/// Python version that `python3` runs in this sandbox.
#[derive(Clone, Default)]
pub struct PipContext {
    pub manager: Option<Arc<crate::provider::wasm::packages::PackageManager>>,
    pub python_version: Option<String>,
}

/// Why the shell stops before the end of the script.
pub enum Stop {
    Exit(i32),
    Fail(ProviderError),
}

impl From<ProviderError> for Stop {
    fn from(e: ProviderError) -> Stop {
        Stop::Fail(e)
    }
}

pub type Flow<T> = Result<T, Stop>;

/// The exec's stdin, consumed by the first command that reads it.
enum ExecStdin {
    Bytes(Vec<u8>),
    Stream(Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>),
    Used,
}

pub struct Shell {
    pub root: Dir,
    pub cwd: SandboxPath,
    pub vars: BTreeMap<String, String>,
    /// Bytes of all variable names and values, against [`MAX_VARS_BYTES`].
    vars_bytes: usize,
    pub exported: BTreeSet<String>,
    /// Names set by the client or the script: kept over runtime defaults.
    pub user_set: BTreeSet<String>,
    pub status: i32,
    pub stdout: Sink,
    pub stderr: Sink,
    ledger: Arc<DiskLedger>,
    _held: LedgerUse,
    pub deadline: Instant,
    pub output: Option<UnboundedSender<OutputChunk>>,
    cancel: CancellationToken,
    pub resolve: Resolver,
    /// The first failed write of the running builtin.
    pub write_error: Option<std::io::Error>,
    sandbox_dir: PathBuf,
    stdin: ExecStdin,
    started: Instant,
    timeout: Duration,
    memory_bytes: usize,
    fuel: u64,
    /// Output dropped anywhere: a full pipe, or a guest's capture.
    truncated: bool,
    trap: Option<String>,
    pub pip: PipContext,
}

/// Parses and runs a shell-mode command line.
pub fn run(job: ShellJob) -> Result<ExecOutput, ProviderError> {
    let started = Instant::now();
    let root = files::open_root(&job.sandbox_dir)?;
    let held = job.ledger.begin();
    let vars_bytes = job.env.iter().map(|(k, v)| k.len() + v.len()).sum();
    let mut shell = Shell {
        root,
        cwd: job.cwd,
        exported: job.env.keys().cloned().collect(),
        vars: job.env,
        vars_bytes,
        user_set: job.client_env,
        status: 0,
        stdout: Sink::new(job.output_limit, job.output.clone(), StreamKind::Stdout),
        stderr: Sink::new(job.output_limit, job.output.clone(), StreamKind::Stderr),
        ledger: job.ledger,
        _held: held,
        deadline: started + job.timeout,
        output: job.output,
        cancel: job.cancel,
        resolve: job.resolve,
        write_error: None,
        sandbox_dir: job.sandbox_dir,
        stdin: match job.stdin_stream {
            Some(stream) => ExecStdin::Stream(stream),
            None => ExecStdin::Bytes(job.stdin),
        },
        started,
        timeout: job.timeout,
        memory_bytes: job.memory_bytes,
        fuel: job.fuel,
        truncated: false,
        trap: None,
        pip: job.pip,
    };
    let status = match parse_bounded(&job.script) {
        Err(message) => {
            shell.stderr.push(format!("sh: 1: {message}\n").as_bytes());
            2
        }
        Ok(script) => match shell.script(&script) {
            Ok(status) => status,
            Err(Stop::Exit(status)) => status,
            Err(Stop::Fail(e)) => return Err(e),
        },
    };
    Ok(shell.finish(status))
}

/// Parses a command line that is short enough and nests shallowly enough
/// for the parser to handle within its bounds.
fn parse_bounded(script: &str) -> Result<Script, String> {
    if script.len() > MAX_SCRIPT_BYTES {
        return Err(format!(
            "the command line is {} bytes, above the limit of {MAX_SCRIPT_BYTES}; put long scripts and data in files",
            script.len()
        ));
    }
    if nesting(script) > MAX_NESTING {
        return Err(format!("the command line nests deeper than {MAX_NESTING} levels"));
    }
    syntax::parse(script).map_err(|e| e.to_string())
}

/// An upper bound on how deep the parser will recurse into `script`:
/// brackets, braces, backquotes and compound-command keywords open a level,
/// their closers end one; quoted text opens nothing.
pub fn nesting(script: &str) -> usize {
    const OPENERS: &[&str] = &["if", "case", "for", "while", "until", "select"];
    const CLOSERS: &[&str] = &["fi", "esac", "done"];
    let bytes = script.as_bytes();
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_double = false;
    let mut i = 0;
    let open = |depth: &mut usize, deepest: &mut usize| {
        *depth += 1;
        *deepest = (*deepest).max(*depth);
    };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => i += 1,
            b'\'' if !in_double => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'\'' {
                    i += 1;
                }
            }
            b'"' => in_double = !in_double,
            b'(' | b'{' | b'`' => open(&mut depth, &mut deepest),
            b')' | b'}' => depth = depth.saturating_sub(1),
            b'a'..=b'z' if !in_double && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) => {
                let end = bytes[i..]
                    .iter()
                    .position(|c| !c.is_ascii_alphanumeric() && *c != b'_')
                    .map_or(bytes.len(), |n| i + n);
                let word = &script[i..end];
                if OPENERS.contains(&word) {
                    open(&mut depth, &mut deepest);
                } else if CLOSERS.contains(&word) {
                    depth = depth.saturating_sub(1);
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    deepest
}

impl Shell {
    fn finish(&mut self, exit_code: i32) -> ExecOutput {
        ExecOutput {
            exit_code,
            stdout: std::mem::take(&mut self.stdout.buf),
            stderr: std::mem::take(&mut self.stderr.buf),
            truncated: self.truncated || self.stdout.truncated || self.stderr.truncated,
            duration: self.started.elapsed(),
            trap: self.trap.clone(),
        }
    }

    /// The output so far, for an exec stopped by a limit.
    fn partial(&mut self) -> Box<ExecOutput> {
        Box::new(self.finish(self.status))
    }

    /// The sandbox's disk ledger, the sandbox's directory and the exec's
    /// cancellation, for builtins that write to the sandbox (`pip`).
    pub fn sandbox(&self) -> (&Arc<DiskLedger>, &std::path::Path, &CancellationToken) {
        (&self.ledger, &self.sandbox_dir, &self.cancel)
    }

    /// Stops at the deadline, or when the client has left.
    pub fn check_limits(&mut self) -> Flow<()> {
        if self.cancel.is_cancelled() || self.output.as_ref().is_some_and(|tx| tx.is_closed()) {
            return Err(Stop::Fail(ProviderError::Cancelled));
        }
        if Instant::now() >= self.deadline {
            return Err(self.timed_out());
        }
        Ok(())
    }

    /// Ends the script as sh ends it on an expansion error: with a message
    /// and status 2.
    fn over_limit(&mut self, message: &str) -> Stop {
        self.stderr.push(format!("sh: 1: {message}\n").as_bytes());
        Stop::Exit(2)
    }

    pub fn timed_out(&mut self) -> Stop {
        Stop::Fail(ProviderError::Timeout {
            timeout: self.timeout,
            partial: self.partial(),
        })
    }

    fn script(&mut self, script: &Script) -> Flow<i32> {
        for list in &script.lists {
            self.status = self.and_or(list)?;
        }
        Ok(self.status)
    }

    fn and_or(&mut self, list: &AndOrList) -> Flow<i32> {
        let mut status = self.pipeline(&list.first)?;
        for (connector, pipeline) in &list.rest {
            self.status = status;
            let run = match connector {
                Connector::And => status == 0,
                Connector::Or => status != 0,
            };
            if run {
                status = self.pipeline(pipeline)?;
            }
        }
        Ok(status)
    }

    /// Runs the stages one after another, each one's output buffered as the
    /// next one's input; the status is the last stage's.
    fn pipeline(&mut self, pipeline: &Pipeline) -> Flow<i32> {
        let n = pipeline.commands.len();
        let mut stdin = In::Exec;
        let mut status = 0;
        for (i, command) in pipeline.commands.iter().enumerate() {
            self.check_limits()?;
            let last = i + 1 == n;
            let pipe = Rc::new(RefCell::new(PipeBuf::default()));
            let io = CmdIo {
                stdin: stdin.clone(),
                stdout: if last {
                    Out::Exec(StreamKind::Stdout)
                } else {
                    Out::Pipe(pipe.clone())
                },
                stderr: Out::Exec(StreamKind::Stderr),
            };
            status = if n > 1 {
                // Every stage of a real pipeline runs in a subshell: cd,
                // exit and assignments there do not reach the shell.
                let saved = (
                    self.cwd.clone(),
                    self.vars.clone(),
                    self.vars_bytes,
                    self.exported.clone(),
                );
                let result = self.simple(command, &io);
                (self.cwd, self.vars, self.vars_bytes, self.exported) = saved;
                match result {
                    Err(Stop::Exit(status)) => status,
                    other => other?,
                }
            } else {
                self.simple(command, &io)?
            };
            let buffered = std::mem::take(&mut *pipe.borrow_mut());
            self.truncated |= buffered.truncated;
            stdin = In::Bytes(Rc::new(buffered.data));
        }
        Ok(if pipeline.bang { i32::from(status == 0) } else { status })
    }

    /// The value of a parameter.
    pub fn param(&self, param: &Param) -> String {
        match param {
            Param::Named(name) => self.vars.get(name).cloned().unwrap_or_default(),
            Param::Status => self.status.to_string(),
            Param::ShellName => "sh".into(),
            Param::Count => "0".into(),
            Param::Positional | Param::All => String::new(),
        }
    }

    fn simple(&mut self, command: &SimpleCommand, inherited: &CmdIo) -> Flow<i32> {
        let lookup = |p: &Param| self.param(p);
        let assignments: Result<Vec<(String, String)>, String> = command
            .assignments
            .iter()
            .map(|(name, value)| Ok((name.clone(), expand::single(value, &lookup)?)))
            .collect();
        let expanded =
            assignments.and_then(|a| Ok((a, expand::arguments(&command.words, &lookup, &self.root, &self.cwd)?)));
        let (assignments, args) = match expanded {
            Ok(expanded) => expanded,
            Err(message) => return Err(self.over_limit(&message)),
        };
        let io = match self.redirect(command, inherited) {
            Ok(io) => io,
            Err(message) => {
                self.write_stderr(inherited, format!("sh: 1: {message}\n").as_bytes());
                return Ok(2);
            }
        };
        if args.is_empty() {
            for (name, value) in assignments {
                self.set_var(&name, value)?;
            }
            return Ok(0);
        }
        self.command(&args, &assignments, &io)
    }

    /// Runs a command with its arguments expanded; `assignments` hold for
    /// this command only.
    pub fn command(&mut self, args: &[String], assignments: &[(String, String)], io: &CmdIo) -> Flow<i32> {
        let name = args[0].as_str();
        if let Some(builtin) = builtins::find(name) {
            let saved: Vec<(String, Option<String>, bool)> = assignments
                .iter()
                .map(|(k, _)| (k.clone(), self.vars.get(k).cloned(), self.exported.contains(k)))
                .collect();
            let mut result = Ok(0);
            for (k, v) in assignments {
                if let Err(stop) = self.store_var(k, v.clone()) {
                    result = Err(stop);
                    break;
                }
                self.exported.insert(k.clone());
            }
            self.write_error = None;
            if result.is_ok() {
                result = builtin(self, args, io);
            }
            for (k, old, was_exported) in saved {
                match old {
                    Some(v) => {
                        self.store_var(&k, v).ok();
                    }
                    None => self.remove_var(&k),
                }
                if !was_exported {
                    self.exported.remove(&k);
                }
            }
            let status = result?;
            if let Some(e) = self.write_error.take() {
                let message = format!("{}: write error: {}\n", builtins::base_name(name), errno_text(&e));
                self.write_stderr(io, message.as_bytes());
                return Ok(1);
            }
            return Ok(status);
        }
        let (runtime, prefix) = match (self.resolve)(name) {
            Resolved::Runtime(runtime, prefix) => (runtime, prefix),
            Resolved::Unavailable(why) => {
                self.write_stderr(io, format!("sh: {why}\n").as_bytes());
                return Ok(127);
            }
            Resolved::NotFound => {
                self.write_stderr(io, format!("sh: {name}: command not found\n").as_bytes());
                return Ok(127);
            }
        };
        let mut argv = prefix;
        argv.extend(args[1..].iter().cloned());
        self.guest(&runtime, argv, assignments, io)
    }

    /// Sets a shell variable; it stays exported if it was. Ends the script
    /// when the variables would outgrow [`MAX_VARS_BYTES`].
    pub fn set_var(&mut self, name: &str, value: String) -> Flow<()> {
        self.user_set.insert(name.to_string());
        self.store_var(name, value)
    }

    /// Removes a variable, which then no longer takes a runtime's default.
    pub fn unset_var(&mut self, name: &str) {
        self.remove_var(name);
        self.exported.remove(name);
        self.user_set.insert(name.to_string());
    }

    fn store_var(&mut self, name: &str, value: String) -> Flow<()> {
        let old = self.vars.get(name).map_or(0, |v| name.len() + v.len());
        let total = self.vars_bytes - old + name.len() + value.len();
        if value.len() > MAX_WORD_BYTES || total > MAX_VARS_BYTES {
            return Err(self.over_limit(&format!(
                "{name}: the shell's variables would hold more than {MAX_VARS_BYTES} bytes, or this one more than {MAX_WORD_BYTES}"
            )));
        }
        self.vars_bytes = total;
        self.vars.insert(name.to_string(), value);
        Ok(())
    }

    fn remove_var(&mut self, name: &str) {
        if let Some(old) = self.vars.remove(name) {
            self.vars_bytes -= name.len() + old.len();
        }
    }

    /// The environment a program sees: exported variables, plus the
    /// runtime's defaults where neither the client nor the script set one.
    pub fn environment(&self, defaults: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self
            .exported
            .iter()
            .filter_map(|k| Some((k.clone(), self.vars.get(k)?.clone())))
            .collect();
        for (k, v) in defaults {
            if !self.user_set.contains(k) {
                env.insert(k.clone(), v.clone());
            }
        }
        env.insert("PWD".into(), self.cwd.to_string());
        env
    }

    /// Applies the command's redirections in order to the inherited
    /// streams; the error is sh's message.
    fn redirect(&mut self, command: &SimpleCommand, inherited: &CmdIo) -> Result<CmdIo, String> {
        let mut io = inherited.clone();
        for r in &command.redirects {
            let lookup = |p: &Param| self.param(p);
            let target = match &r.target {
                RedirectTarget::Duplicate(from) => {
                    let out = match from {
                        0 => return Err(format!("{}: Bad file descriptor", from)),
                        n => io.get(*n),
                    };
                    match r.fd {
                        1 => io.stdout = out,
                        2 => io.stderr = out,
                        _ => return Err("0: Bad file descriptor".into()),
                    }
                    continue;
                }
                RedirectTarget::Read(w) | RedirectTarget::Write(w) | RedirectTarget::Append(w) => {
                    expand::single(w, &lookup)?
                }
            };
            // The one device a sandbox has: reads are empty, writes vanish.
            if target == "/dev/null" {
                match (&r.target, r.fd) {
                    (RedirectTarget::Read(_), _) => io.stdin = In::Bytes(Rc::default()),
                    (_, 2) => io.stderr = Out::Null,
                    _ => io.stdout = Out::Null,
                }
                continue;
            }
            let path = self
                .resolve_path(&target)
                .map_err(|why| format!("cannot open {target}: {why}"))?;
            match &r.target {
                RedirectTarget::Read(_) => {
                    // Opened here, read by the command as it goes.
                    let file = self
                        .root
                        .open(path.relative())
                        .map_err(|e| format!("cannot open {target}: {}", errno_text(&e)))?;
                    if file.metadata().is_ok_and(|m| m.is_dir()) {
                        return Err(format!("cannot open {target}: Is a directory"));
                    }
                    io.stdin = In::File(Rc::new(file.into_std()));
                }
                RedirectTarget::Write(_) | RedirectTarget::Append(_) => {
                    let append = matches!(r.target, RedirectTarget::Append(_));
                    if path.is_root() {
                        return Err(format!("cannot create {target}: Is a directory"));
                    }
                    let mut opts = OpenOptions::new();
                    opts.write(true).create(true);
                    if append {
                        opts.append(true);
                    } else {
                        opts.truncate(true);
                    }
                    let existed = self.root.symlink_metadata(path.relative()).is_ok();
                    if !existed && self.ledger.charge(0, 1).is_err() {
                        return Err(format!("cannot create {target}: No space left on device"));
                    }
                    let file = self
                        .root
                        .open_with(path.relative(), &opts)
                        .map_err(|e| format!("cannot create {target}: {}", errno_text(&e)))?;
                    let out = Out::File(Rc::new(RefCell::new(FileOut { file })));
                    match r.fd {
                        2 => io.stderr = out,
                        _ => io.stdout = out,
                    }
                }
                RedirectTarget::Duplicate(_) => unreachable!("handled above"),
            }
        }
        Ok(io)
    }

    /// Resolves a path argument against the shell's working directory.
    pub fn resolve_path(&self, arg: &str) -> Result<SandboxPath, &'static str> {
        SandboxPath::resolve(&self.cwd, arg).map_err(|e| match e {
            crate::sandbox::path::PathError::Empty => "No such file or directory",
            crate::sandbox::path::PathError::Escapes(_) => "Permission denied (outside the sandbox)",
            _ => "Invalid argument",
        })
    }

    /// Writes to a command's stdout or stderr. A failed write is kept in
    /// `write_error` and reported once the builtin is done.
    pub fn write(&mut self, out: &Out, bytes: &[u8]) {
        if bytes.is_empty() || self.write_error.is_some() {
            return;
        }
        if let Err(e) = self.try_write(out, bytes) {
            self.write_error = Some(e);
        }
    }

    fn try_write(&mut self, out: &Out, bytes: &[u8]) -> std::io::Result<()> {
        match out {
            Out::Exec(StreamKind::Stdout) => self.stdout.push(bytes),
            Out::Exec(StreamKind::Stderr) => self.stderr.push(bytes),
            Out::Pipe(pipe) => {
                let mut pipe = pipe.borrow_mut();
                let room = PIPE_LIMIT - pipe.data.len();
                if bytes.len() > room {
                    pipe.truncated = true;
                }
                pipe.data.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Out::File(file) => file.borrow_mut().write(&self.ledger, bytes)?,
            Out::Null => {}
        }
        Ok(())
    }

    /// Writes an error message; a stderr that cannot take it loses it.
    pub fn write_stderr(&mut self, io: &CmdIo, bytes: &[u8]) {
        self.try_write(&io.stderr, bytes).ok();
    }

    /// Runs a runtime command as a wasm guest, wired to `io`: a file it
    /// writes to is its stdout itself, a file it reads is its stdin itself;
    /// output to the exec or a pipe is captured and routed when it ends.
    fn guest(
        &mut self,
        runtime: &LoadedRuntime,
        argv: Vec<String>,
        assignments: &[(String, String)],
        io: &CmdIo,
    ) -> Flow<i32> {
        self.check_limits()?;
        let program = argv.first().cloned().unwrap_or_default();
        let mut env = self.environment(&runtime.def.env);
        env.extend(assignments.iter().cloned());
        // Output that goes straight to the client streams from the guest;
        // anything else is captured and routed when the guest ends.
        let streaming = self.output.is_some()
            && matches!(io.stdout, Out::Exec(StreamKind::Stdout))
            && matches!(io.stderr, Out::Exec(StreamKind::Stderr));
        let capture_limit = |shell: &Shell, out: &Out| match out {
            Out::Exec(StreamKind::Stdout) => shell.stdout.room(),
            Out::Exec(StreamKind::Stderr) => shell.stderr.room(),
            Out::Pipe(_) => PIPE_LIMIT,
            Out::File(_) | Out::Null => 0,
        };
        let output_limit = capture_limit(self, &io.stdout).max(capture_limit(self, &io.stderr));
        let target = |out: &Out| -> Flow<GuestOut> {
            match out {
                Out::File(f) => Ok(GuestOut::File(
                    f.borrow()
                        .file
                        .try_clone()
                        .map_err(|e| Stop::Fail(ProviderError::Internal(e.into())))?
                        .into_std(),
                )),
                Out::Null => Ok(GuestOut::Discard),
                Out::Exec(_) | Out::Pipe(_) => Ok(GuestOut::Capture),
            }
        };
        let (stdout, stderr) = (target(&io.stdout)?, target(&io.stderr)?);
        let (stdin, stdin_stream): (Vec<u8>, Option<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>>) =
            match &io.stdin {
                In::Bytes(b) => (b.as_ref().clone(), None),
                In::File(f) => {
                    let file = f
                        .try_clone()
                        .map_err(|e| Stop::Fail(ProviderError::Internal(e.into())))?;
                    (vec![], Some(Box::new(tokio::fs::File::from_std(file))))
                }
                In::Exec => match std::mem::replace(&mut self.stdin, ExecStdin::Used) {
                    ExecStdin::Bytes(b) => (b, None),
                    ExecStdin::Stream(s) => (vec![], Some(s)),
                    ExecStdin::Used => (vec![], None),
                },
            };
        let job = GuestJob {
            argv,
            env: env.into_iter().collect(),
            sandbox_dir: self.sandbox_dir.clone(),
            stdin,
            timeout: self.deadline.saturating_duration_since(Instant::now()),
            memory_bytes: self.memory_bytes,
            fuel: self.fuel,
            output_limit,
            // A pipe that is full is closed to its writer, as a reader
            // that stopped reading would close it.
            close_when_full: matches!(io.stdout, Out::Pipe(_)),
            stdout,
            stderr,
            ledger: self.ledger.clone(),
            stdin_stream,
            output: if streaming { self.output.clone() } else { None },
            cancel: self.cancel.clone(),
        };
        let result = guest::run(runtime, job);
        let (output, stopped) = match result {
            Ok(output) => (output, None),
            Err(ProviderError::Timeout { partial, .. }) => (*partial, Some(Limit::Timeout)),
            Err(ProviderError::FuelExhausted { fuel, partial }) => (*partial, Some(Limit::Fuel(fuel))),
            Err(ProviderError::MemoryLimit { limit_mb, partial }) => (*partial, Some(Limit::Memory(limit_mb))),
            Err(other) => return Err(Stop::Fail(other)),
        };
        if output.trap.is_some() {
            self.trap = output.trap.clone();
        }
        let mut status = output.exit_code;
        if streaming {
            self.stdout.absorb_streamed(&output.stdout);
            self.stderr.absorb_streamed(&output.stderr);
            self.truncated |= output.truncated;
        } else {
            self.truncated |= output.truncated;
            for (out, data) in [(&io.stdout, &output.stdout), (&io.stderr, &output.stderr)] {
                if matches!(out, Out::File(_) | Out::Null) {
                    continue;
                }
                if let Err(e) = self.try_write(out, data) {
                    let message = format!("sh: 1: {program}: write error: {}\n", errno_text(&e));
                    self.write_stderr(io, message.as_bytes());
                    status = 1;
                }
            }
        }
        match stopped {
            None => Ok(status),
            Some(Limit::Timeout) => Err(self.timed_out()),
            Some(Limit::Fuel(fuel)) => Err(Stop::Fail(ProviderError::FuelExhausted {
                fuel,
                partial: self.partial(),
            })),
            Some(Limit::Memory(limit_mb)) => Err(Stop::Fail(ProviderError::MemoryLimit {
                limit_mb,
                partial: self.partial(),
            })),
        }
    }
}

enum Limit {
    Timeout,
    Fuel(u64),
    Memory(u64),
}
