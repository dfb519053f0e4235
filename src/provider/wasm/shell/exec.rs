//! The interpreter: runs and-or lists, pipelines and simple commands,
//! applying redirections, with builtins in-process and runtime commands as
//! wasm guests.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cap_std::fs::{Dir, OpenOptions};
use tokio::sync::mpsc::UnboundedSender;

use super::io::{CmdIo, Disk, FileOut, In, Out, PIPE_LIMIT, PipeBuf, Sink, errno_text};
use super::syntax::{self, AndOrList, Connector, Param, Pipeline, RedirectTarget, Script, SimpleCommand};
use super::{builtins, expand};
use crate::provider::wasm::engine::LoadedRuntime;
use crate::provider::wasm::files;
use crate::provider::wasm::guest::{self, GuestJob};
use crate::provider::{ExecOutput, OutputChunk, ProviderError, StreamKind};
use crate::sandbox::path::SandboxPath;

/// Finds the runtime a command word runs, and the guest argv that comes
/// before the user's arguments (`argv0` and the runtime's prefix).
pub type Resolver = Box<dyn Fn(&str) -> Option<(Arc<LoadedRuntime>, Vec<String>)> + Send>;

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
    pub disk_quota: u64,
    pub resolve: Resolver,
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
    pub exported: BTreeSet<String>,
    /// Names set by the client or the script: kept over runtime defaults.
    pub user_set: BTreeSet<String>,
    pub status: i32,
    pub stdout: Sink,
    pub stderr: Sink,
    pub disk: Disk,
    pub deadline: Instant,
    pub output: Option<UnboundedSender<OutputChunk>>,
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
}

/// Parses and runs a shell-mode command line.
pub fn run(job: ShellJob) -> Result<ExecOutput, ProviderError> {
    let started = Instant::now();
    let root = files::open_root(&job.sandbox_dir)?;
    let mut shell = Shell {
        root,
        cwd: job.cwd,
        exported: job.env.keys().cloned().collect(),
        vars: job.env,
        user_set: job.client_env,
        status: 0,
        stdout: Sink::new(job.output_limit, job.output.clone(), StreamKind::Stdout),
        stderr: Sink::new(job.output_limit, job.output.clone(), StreamKind::Stderr),
        disk: Disk::new(job.sandbox_dir.clone(), job.disk_quota),
        deadline: started + job.timeout,
        output: job.output,
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
    };
    let status = match syntax::parse(&job.script) {
        Err(e) => {
            shell.stderr.push(format!("sh: 1: {e}\n").as_bytes());
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

    /// Stops at the deadline, or when the client has left.
    pub fn check_limits(&mut self) -> Flow<()> {
        if self.output.as_ref().is_some_and(|tx| tx.is_closed()) {
            return Err(Stop::Fail(ProviderError::Cancelled));
        }
        if Instant::now() >= self.deadline {
            return Err(self.timed_out());
        }
        Ok(())
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
                let saved = (self.cwd.clone(), self.vars.clone(), self.exported.clone());
                let result = self.simple(command, &io);
                (self.cwd, self.vars, self.exported) = saved;
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
        let assignments: Vec<(String, String)> = command
            .assignments
            .iter()
            .map(|(name, value)| (name.clone(), expand::single(value, &lookup)))
            .collect();
        let args = expand::arguments(&command.words, &lookup, &self.root, &self.cwd);
        let io = match self.redirect(command, inherited) {
            Ok(io) => io,
            Err(message) => {
                self.write_stderr(inherited, format!("sh: 1: {message}\n").as_bytes());
                return Ok(2);
            }
        };
        if args.is_empty() {
            for (name, value) in assignments {
                self.set_var(&name, value);
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
            for (k, v) in assignments {
                self.vars.insert(k.clone(), v.clone());
                self.exported.insert(k.clone());
            }
            self.write_error = None;
            let result = builtin(self, args, io);
            for (k, old, was_exported) in saved {
                match old {
                    Some(v) => self.vars.insert(k.clone(), v),
                    None => self.vars.remove(&k),
                };
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
        let Some((runtime, prefix)) = (self.resolve)(name) else {
            self.write_stderr(io, format!("sh: {name}: command not found\n").as_bytes());
            return Ok(127);
        };
        let mut argv = prefix;
        argv.extend(args[1..].iter().cloned());
        self.guest(&runtime, argv, assignments, io)
    }

    /// Sets a shell variable; it stays exported if it was.
    pub fn set_var(&mut self, name: &str, value: String) {
        self.user_set.insert(name.to_string());
        self.vars.insert(name.to_string(), value);
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
                    expand::single(w, &lookup)
                }
            };
            let path = self
                .resolve_path(&target)
                .map_err(|why| format!("cannot open {target}: {why}"))?;
            match &r.target {
                RedirectTarget::Read(_) => {
                    let data = self
                        .root
                        .read(path.relative())
                        .map_err(|e| format!("cannot open {target}: {}", errno_text(&e)))?;
                    io.stdin = In::Bytes(Rc::new(data));
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
                    let file = self
                        .root
                        .open_with(path.relative(), &opts)
                        .map_err(|e| format!("cannot create {target}: {}", errno_text(&e)))?;
                    if !append {
                        // Truncation may have freed space.
                        self.disk.forget();
                    }
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
            Out::File(file) => file.borrow_mut().write(&mut self.disk, bytes)?,
        }
        Ok(())
    }

    /// Writes an error message; a stderr that cannot take it loses it.
    pub fn write_stderr(&mut self, io: &CmdIo, bytes: &[u8]) {
        self.try_write(&io.stderr, bytes).ok();
    }

    /// Everything a command's stdin holds.
    pub fn read_stdin(&mut self, stdin: &In) -> Flow<Vec<u8>> {
        match stdin {
            In::Bytes(b) => Ok(b.as_ref().clone()),
            In::Exec => match std::mem::replace(&mut self.stdin, ExecStdin::Used) {
                ExecStdin::Bytes(b) => Ok(b),
                ExecStdin::Used => Ok(vec![]),
                ExecStdin::Stream(mut stream) => {
                    let mut buf = vec![];
                    let deadline = tokio::time::Instant::from_std(self.deadline);
                    let read = tokio::runtime::Handle::current().block_on(tokio::time::timeout_at(
                        deadline,
                        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut buf),
                    ));
                    match read {
                        Ok(Ok(_)) => Ok(buf),
                        Ok(Err(e)) => Err(Stop::Fail(ProviderError::Internal(e.into()))),
                        Err(_) => Err(self.timed_out()),
                    }
                }
            },
        }
    }

    /// Runs a runtime command as a wasm guest, wired to `io`.
    fn guest(
        &mut self,
        runtime: &LoadedRuntime,
        argv: Vec<String>,
        assignments: &[(String, String)],
        io: &CmdIo,
    ) -> Flow<i32> {
        self.check_limits()?;
        let mut env = self.environment(&runtime.def.env);
        env.extend(assignments.iter().cloned());
        // Output that goes straight to the client streams from the guest;
        // anything else is captured and routed when the guest ends.
        let streaming = self.output.is_some()
            && matches!(io.stdout, Out::Exec(StreamKind::Stdout))
            && matches!(io.stderr, Out::Exec(StreamKind::Stderr));
        let capture_limit = |shell: &mut Shell, out: &Out| match out {
            Out::Exec(StreamKind::Stdout) => shell.stdout.room(),
            Out::Exec(StreamKind::Stderr) => shell.stderr.room(),
            Out::Pipe(_) => PIPE_LIMIT,
            // One byte past the quota, to notice output that cannot fit.
            Out::File(_) => usize::try_from(shell.disk.remaining())
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        };
        let output_limit = capture_limit(self, &io.stdout).max(capture_limit(self, &io.stderr));
        let (stdin, stdin_stream) = match &io.stdin {
            In::Bytes(b) => (b.as_ref().clone(), None),
            In::Exec => match std::mem::replace(&mut self.stdin, ExecStdin::Used) {
                ExecStdin::Bytes(b) => (b, None),
                ExecStdin::Stream(s) => (vec![], Some(s)),
                ExecStdin::Used => (vec![], None),
            },
        };
        let disk_remaining = self.disk.remaining();
        let job = GuestJob {
            argv,
            env: env.into_iter().collect(),
            sandbox_dir: self.sandbox_dir.clone(),
            stdin,
            timeout: self.deadline.saturating_duration_since(Instant::now()),
            memory_bytes: self.memory_bytes,
            fuel: self.fuel,
            output_limit,
            disk_remaining,
            stdin_stream,
            output: if streaming { self.output.clone() } else { None },
        };
        let result = guest::run(runtime, job);
        self.disk.forget();
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
            if output.truncated && !matches!(io.stdout, Out::File(_)) && !matches!(io.stderr, Out::File(_)) {
                self.truncated = true;
            }
            for (out, data) in [(&io.stdout, &output.stdout), (&io.stderr, &output.stderr)] {
                if let Err(e) = self.try_write(out, data) {
                    let message = format!("sh: 1: {}: write error: {}\n", argv0(runtime), errno_text(&e));
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

fn argv0(runtime: &LoadedRuntime) -> &str {
    &runtime.def.argv0
}
