//! The interpreter: lists, pipelines whose commands run at the same time
//! and stream into each other, compound commands, functions, redirections,
//! and simple commands, which are builtins, functions, or programs run as
//! wasm guests.
//!
//! Everything a script controls is bounded before it costs the host: the
//! length of the command line and how deep it nests (so the parser's
//! recursion is bounded), the size of every expanded word, argument list
//! and the shell's variables, the commands it may run in all, the depth of
//! function calls, and the commands alive at once; and the time: every
//! command checks the deadline and whether the client is still there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cap_std::fs::{Dir, OpenOptions};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::builtins;
use super::io::{Capture, CmdIo, FileOut, GuestStdin, Out, Sink, Source, errno_text, input, lock, pipe};
use super::syntax::{
    self, AndOrList, CaseNext, Command, Compound, Connector, Function, Item, Pipeline, Redirect, RedirectTarget,
    Script, SimpleCommand,
};
use crate::provider::wasm::Resolved;
use crate::provider::wasm::engine::LoadedRuntime;
use crate::provider::wasm::files;
use crate::provider::wasm::guest::{self, GuestJob, GuestOut, GuestPool, StopCheck};
use crate::provider::wasm::packages::PipContext;
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
/// Commands (simple commands and loop rounds) one exec may run: far more
/// than a script does in its timeout, so that a loop of cheap builtins
/// meets a bound of its own.
pub const MAX_STEPS: u64 = 10_000_000;
/// How deep function calls, `eval`, `.` and `sh -c` may nest: each level
/// is a recursion of the interpreter on the host.
pub const MAX_CALL_DEPTH: usize = 100;
/// Commands of one pipeline.
pub const MAX_PIPELINE: usize = 16;
/// Commands one exec may have running at once besides its own (pipeline
/// stages and background jobs).
pub const MAX_LIVE_STAGES: usize = 32;

/// Finds the runtime a command word runs, and the guest argv that comes
/// before the user's arguments (`argv0` and the runtime's prefix).
pub type Resolver = Arc<dyn Fn(&str) -> Resolved + Send + Sync>;

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
    /// Threads for commands that run at the same time as the shell.
    pub stages: Arc<Stages>,
    /// What the `pip` builtin works with.
    pub pip: PipContext,
}

/// The threads that run pipeline stages and background jobs, and the
/// permits that make sure every command started has a thread: a pipeline
/// takes all the permits it needs before it starts any of its commands.
pub struct Stages {
    pool: GuestPool,
    free: Mutex<usize>,
    freed: Condvar,
    size: usize,
}

impl Stages {
    pub fn new(size: usize) -> Stages {
        Stages {
            pool: GuestPool::new(size),
            free: Mutex::new(size),
            freed: Condvar::new(),
            size,
        }
    }

    /// Takes `n` permits, waiting for them until the exec must stop.
    fn acquire(&self, n: usize, stop: &StopCheck) -> Result<(), ()> {
        if n > self.size {
            return Err(());
        }
        let mut free = lock(&self.free);
        while *free < n {
            if stop.must_stop().is_some() {
                return Err(());
            }
            free = self
                .freed
                .wait_timeout(free, Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *free -= n;
        drop(free);
        self.pool.ensure_threads(self.size - *lock(&self.free));
        Ok(())
    }

    fn release(&self, n: usize) {
        *lock(&self.free) += n;
        self.freed.notify_all();
    }
}

/// What every copy of the shell of one exec shares.
pub struct Ctx {
    pub root: Dir,
    pub sandbox_dir: PathBuf,
    pub stdout: Mutex<Sink>,
    pub stderr: Mutex<Sink>,
    pub output: Option<UnboundedSender<OutputChunk>>,
    pub stop: StopCheck,
    pub timeout: Duration,
    pub started: Instant,
    pub memory_bytes: usize,
    pub fuel: u64,
    pub ledger: Arc<DiskLedger>,
    _held: LedgerUse,
    pub resolve: Resolver,
    pub stages: Arc<Stages>,
    pub pip: PipContext,
    live: AtomicUsize,
    steps: AtomicU64,
    /// Output dropped anywhere: a guest's capture or the exec's own.
    pub truncated: AtomicBool,
    pub trap: Mutex<Option<String>>,
    /// What `$$` says.
    pub pid: u32,
}

/// Why the shell stops running a list before its end.
pub enum Stop {
    Exit(i32),
    Return(i32),
    Break(usize),
    Continue(usize),
    Fail(ProviderError),
}

impl From<ProviderError> for Stop {
    fn from(e: ProviderError) -> Stop {
        Stop::Fail(e)
    }
}

pub type Flow<T> = Result<T, Stop>;

/// A shell variable.
#[derive(Debug, Clone, Default)]
pub struct Var {
    pub value: String,
    pub exported: bool,
    pub readonly: bool,
}

/// `set -e`, `set -u`, `set -x`, `set -o pipefail`, `set -f`, `set -C`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub errexit: bool,
    pub nounset: bool,
    pub xtrace: bool,
    pub pipefail: bool,
    pub noglob: bool,
    pub noclobber: bool,
}

/// A background job started with `&`.
struct Job {
    done: std::sync::mpsc::Receiver<std::thread::Result<i32>>,
    cancel: CancellationToken,
}

pub struct Shell {
    pub ctx: Arc<Ctx>,
    pub cwd: SandboxPath,
    pub vars: BTreeMap<String, Var>,
    /// Bytes of all variable names and values, against [`MAX_VARS_BYTES`].
    vars_bytes: usize,
    /// Names set by the client or the script: kept over runtime defaults.
    pub user_set: BTreeSet<String>,
    pub functions: HashMap<String, Arc<Function>>,
    pub positional: Vec<String>,
    pub shell_name: String,
    pub status: i32,
    pub opts: Options,
    /// Saved variables of the enclosing function calls, for `local`.
    pub locals: Vec<Vec<(String, Option<Var>)>>,
    pub depth: usize,
    pub loops: usize,
    /// Inside a condition, where `set -e` does not apply.
    errexit_off: usize,
    /// The shell's own standard streams.
    pub io: CmdIo,
    /// When this copy runs, for deadlines and cancellation (a background
    /// job has a cancel of its own).
    pub stop: StopCheck,
    jobs: Vec<Job>,
    last_job: u32,
    /// The first failed write of the running builtin.
    pub write_error: Option<std::io::Error>,
    trap_ran: bool,
    /// What `trap ... EXIT` set.
    pub trap_action: Option<String>,
    /// The status of the last command substitution of this command, which
    /// a command of assignments only returns.
    pub status_of_substitution: Option<i32>,
}

impl Clone for Shell {
    /// A subshell: the same state, which it may change for itself only.
    fn clone(&self) -> Shell {
        Shell {
            ctx: self.ctx.clone(),
            cwd: self.cwd.clone(),
            vars: self.vars.clone(),
            vars_bytes: self.vars_bytes,
            user_set: self.user_set.clone(),
            functions: self.functions.clone(),
            positional: self.positional.clone(),
            shell_name: self.shell_name.clone(),
            status: self.status,
            opts: self.opts,
            locals: vec![],
            depth: self.depth,
            loops: 0,
            errexit_off: self.errexit_off,
            io: self.io.clone(),
            stop: self.stop.clone(),
            jobs: vec![],
            last_job: self.last_job,
            write_error: None,
            // A subshell runs no EXIT trap of its parent.
            trap_ran: true,
            trap_action: None,
            status_of_substitution: None,
        }
    }
}

/// Parses and runs a shell-mode command line.
pub fn run(job: ShellJob) -> Result<ExecOutput, ProviderError> {
    let started = Instant::now();
    let root = files::open_root(&job.sandbox_dir)?;
    let held = job.ledger.begin();
    let stop = StopCheck {
        deadline: started + job.timeout,
        output: job.output.clone(),
        cancel: job.cancel.clone(),
    };
    let ctx = Arc::new(Ctx {
        root,
        sandbox_dir: job.sandbox_dir,
        stdout: Mutex::new(Sink::new(job.output_limit, job.output.clone(), StreamKind::Stdout)),
        stderr: Mutex::new(Sink::new(job.output_limit, job.output.clone(), StreamKind::Stderr)),
        output: job.output,
        stop: stop.clone(),
        timeout: job.timeout,
        started,
        memory_bytes: job.memory_bytes,
        fuel: job.fuel,
        ledger: job.ledger,
        _held: held,
        resolve: job.resolve,
        stages: job.stages,
        pip: job.pip,
        live: AtomicUsize::new(0),
        steps: AtomicU64::new(0),
        truncated: AtomicBool::new(false),
        trap: Mutex::new(None),
        pid: 4242,
    });
    // Ends the stdin pump when the script ends, even if the client never
    // closes its stdin.
    let done = tokio_util::sync::CancellationToken::new();
    let _end_pump = done.clone().drop_guard();
    let stdin = match job.stdin_stream {
        Some(stream) => super::io::pump(stream, &stop, done),
        None => input(Source::Bytes(job.stdin, 0)),
    };
    let mut shell = Shell::new(
        ctx.clone(),
        job.cwd,
        job.env,
        job.client_env,
        CmdIo::new(stdin, Out::Exec(StreamKind::Stdout), Out::Exec(StreamKind::Stderr)),
        stop,
    );
    let status = shell.run_script_text(&job.script, "sh");
    drop(shell);
    let status = status?;
    Ok(finish(&ctx, status))
}

/// The exec's result from what the shell kept.
fn finish(ctx: &Ctx, exit_code: i32) -> ExecOutput {
    let mut stdout = lock(&ctx.stdout);
    let mut stderr = lock(&ctx.stderr);
    ExecOutput {
        exit_code,
        truncated: ctx.truncated.load(Ordering::Relaxed) || stdout.truncated || stderr.truncated,
        stdout: std::mem::take(&mut stdout.buf),
        stderr: std::mem::take(&mut stderr.buf),
        duration: ctx.started.elapsed(),
        trap: lock(&ctx.trap).clone(),
    }
}

/// Parses a command line that is short enough and nests shallowly enough
/// for the parser to handle within its bounds.
pub fn parse_bounded(script: &str) -> Result<Script, String> {
    if script.len() > MAX_SCRIPT_BYTES {
        return Err(format!(
            "the command line is {} bytes, above the limit of {MAX_SCRIPT_BYTES}; put long scripts and data in files",
            script.len()
        ));
    }
    let (depth, parens) = nesting(script);
    if depth > MAX_NESTING {
        return Err(format!("the command line nests deeper than {MAX_NESTING} levels"));
    }
    if parens > MAX_PAREN_NESTING {
        return Err(format!(
            "parentheses nest deeper than {MAX_PAREN_NESTING} levels in the command line"
        ));
    }
    syntax::parse(script).map_err(|e| e.to_string())
}

/// How deep parentheses may nest. The parser tries `((` as arithmetic and
/// then as two subshells, which costs it twice as much for each level.
const MAX_PAREN_NESTING: usize = 16;

/// An upper bound on how deep the parser will recurse into `script`:
/// brackets, braces, backquotes and compound-command keywords open a level,
/// their closers end one; quoted text opens nothing. Also how deep
/// parentheses alone nest.
pub fn nesting(script: &str) -> (usize, usize) {
    const OPENERS: &[&str] = &["if", "case", "for", "while", "until", "select"];
    const CLOSERS: &[&str] = &["fi", "esac", "done"];
    let bytes = script.as_bytes();
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut parens, mut deepest_parens) = (0usize, 0usize);
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
            b'(' => {
                open(&mut depth, &mut deepest);
                // In double quotes only `$(` is syntax.
                if !in_double || (i > 0 && bytes[i - 1] == b'$') {
                    open(&mut parens, &mut deepest_parens);
                }
            }
            b'{' | b'`' => open(&mut depth, &mut deepest),
            b')' => {
                depth = depth.saturating_sub(1);
                if !in_double || parens > 0 {
                    parens = parens.saturating_sub(1);
                }
            }
            b'}' => depth = depth.saturating_sub(1),
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
    (deepest, deepest_parens)
}

/// The statuses of a pipeline's commands, as `set -o pipefail` reads them.
fn pipeline_status(statuses: &[i32], pipefail: bool) -> i32 {
    if pipefail {
        statuses.iter().rev().copied().find(|s| *s != 0).unwrap_or(0)
    } else {
        statuses.last().copied().unwrap_or(0)
    }
}

impl Shell {
    pub fn new(
        ctx: Arc<Ctx>,
        cwd: SandboxPath,
        env: BTreeMap<String, String>,
        user_set: BTreeSet<String>,
        io: CmdIo,
        stop: StopCheck,
    ) -> Shell {
        let vars_bytes = env.iter().map(|(k, v)| k.len() + v.len()).sum();
        let vars = env
            .into_iter()
            .map(|(k, value)| {
                (
                    k,
                    Var {
                        value,
                        exported: true,
                        readonly: false,
                    },
                )
            })
            .collect();
        Shell {
            ctx,
            cwd,
            vars,
            vars_bytes,
            user_set,
            functions: HashMap::new(),
            positional: vec![],
            shell_name: "sh".into(),
            status: 0,
            opts: Options::default(),
            locals: vec![],
            depth: 0,
            loops: 0,
            errexit_off: 0,
            io,
            stop,
            jobs: vec![],
            last_job: 0,
            write_error: None,
            trap_ran: false,
            trap_action: None,
            status_of_substitution: None,
        }
    }

    /// Runs a whole script as `sh -c` does: its EXIT trap at the end, its
    /// background jobs stopped when it ends.
    pub fn run_script_text(&mut self, text: &str, name: &str) -> Result<i32, ProviderError> {
        self.shell_name = name.to_string();
        let result = match parse_bounded(text) {
            Err(message) => {
                self.err(&format!("sh: 1: {message}"));
                Ok(2)
            }
            Ok(script) => self.script(&script),
        };
        let mut status = match result {
            Ok(status) => Ok(status),
            Err(Stop::Exit(status) | Stop::Return(status)) => Ok(status),
            Err(Stop::Break(_) | Stop::Continue(_)) => Ok(self.status),
            Err(Stop::Fail(e)) => Err(e),
        };
        if let Ok(code) = status {
            self.status = code;
            if let Err(Stop::Fail(e)) = self.exit_trap() {
                status = Err(e);
            }
            if let Ok(code) = &mut status {
                *code = self.status;
            }
        }
        self.stop_jobs();
        status
    }

    /// Runs a script as a new shell (`sh -c`, `sh file`): its own EXIT
    /// trap and jobs, one more level of nesting.
    pub fn run_child(mut self, text: &str, name: &str) -> Result<i32, ProviderError> {
        self.trap_ran = false;
        self.trap_action = None;
        self.depth += 1;
        if self.depth > MAX_CALL_DEPTH {
            self.err(&format!(
                "sh: 1: function calls, eval, . and sh nest deeper than {MAX_CALL_DEPTH} levels"
            ));
            return Ok(2);
        }
        self.run_script_text(text, name)
    }

    /// Runs the EXIT trap once; its `exit` sets the final status.
    fn exit_trap(&mut self) -> Flow<()> {
        if self.trap_ran {
            return Ok(());
        }
        self.trap_ran = true;
        let Some(action) = self.trap_action.take() else {
            return Ok(());
        };
        let status = self.status;
        match self.eval_text(&action) {
            Ok(_) => self.status = status,
            Err(Stop::Exit(code)) => self.status = code,
            Err(Stop::Fail(e)) => return Err(Stop::Fail(e)),
            Err(_) => self.status = status,
        }
        Ok(())
    }

    /// Stops and forgets the background jobs still running.
    fn stop_jobs(&mut self) {
        for job in self.jobs.drain(..) {
            job.cancel.cancel();
            job.done.recv().ok();
        }
    }

    pub fn err(&mut self, message: &str) {
        let io = self.io.clone();
        self.write_stderr(&io, format!("{message}\n").as_bytes());
    }

    /// Ends the script as sh ends it on an expansion error: with a message
    /// and status 2.
    pub fn over_limit(&mut self, message: &str) -> Stop {
        self.err(&format!("sh: 1: {message}"));
        Stop::Exit(2)
    }

    /// Stops at the deadline, when the client has left, or past the step
    /// budget; counts one step.
    pub fn check_limits(&mut self) -> Flow<()> {
        if self.stop.must_stop().is_some() {
            let cancelled =
                self.ctx.stop.cancel.is_cancelled() || self.ctx.output.as_ref().is_some_and(|tx| tx.is_closed());
            if cancelled {
                return Err(Stop::Fail(ProviderError::Cancelled));
            }
            if Instant::now() >= self.ctx.stop.deadline {
                return Err(self.timed_out());
            }
            // A background job's own cancel: end it quietly.
            return Err(Stop::Exit(143));
        }
        if self.ctx.steps.fetch_add(1, Ordering::Relaxed) >= MAX_STEPS {
            return Err(self.over_limit(&format!("the script ran more than {MAX_STEPS} commands")));
        }
        Ok(())
    }

    pub fn timed_out(&mut self) -> Stop {
        Stop::Fail(ProviderError::Timeout {
            timeout: self.ctx.timeout,
            partial: Box::new(finish_partial(&self.ctx, self.status)),
        })
    }

    pub fn script(&mut self, script: &Script) -> Flow<i32> {
        for item in &script.0 {
            self.status = if item.background {
                self.background(item)?
            } else {
                self.and_or(&item.list)?
            };
        }
        Ok(self.status)
    }

    /// Runs a script in a condition (`if`, `while`, `&&`...), where
    /// `set -e` does not stop the shell.
    fn condition(&mut self, script: &Script) -> Flow<i32> {
        self.errexit_off += 1;
        let result = self.script(script);
        self.errexit_off -= 1;
        result
    }

    fn and_or(&mut self, list: &AndOrList) -> Flow<i32> {
        let last = list.rest.len();
        let mut status = self.pipeline_checked(&list.first, last == 0)?;
        for (i, (connector, pipeline)) in list.rest.iter().enumerate() {
            self.status = status;
            let run = match connector {
                Connector::And => status == 0,
                Connector::Or => status != 0,
            };
            if run {
                status = self.pipeline_checked(pipeline, i + 1 == last)?;
            }
        }
        Ok(status)
    }

    /// Runs a pipeline; `set -e` ends the shell if it fails and is not a
    /// condition (the last of an and-or list, not negated).
    fn pipeline_checked(&mut self, pipeline: &Pipeline, last: bool) -> Flow<i32> {
        let exempt = !last || pipeline.bang;
        if exempt {
            self.errexit_off += 1;
        }
        let result = self.pipeline(pipeline);
        if exempt {
            self.errexit_off -= 1;
        }
        let status = result?;
        self.status = status;
        if status != 0 && !exempt && self.opts.errexit && self.errexit_off == 0 {
            return Err(Stop::Exit(status));
        }
        Ok(status)
    }

    fn pipeline(&mut self, pipeline: &Pipeline) -> Flow<i32> {
        let n = pipeline.commands.len();
        let status = if n == 1 {
            self.command(&pipeline.commands[0])?
        } else {
            let statuses = self.concurrent_pipeline(&pipeline.commands)?;
            pipeline_status(&statuses, self.opts.pipefail)
        };
        Ok(if pipeline.bang { i32::from(status == 0) } else { status })
    }

    /// Reserves `n` concurrent commands for this exec and threads for them.
    fn reserve(&mut self, n: usize) -> Flow<()> {
        let live = self.ctx.live.fetch_add(n, Ordering::AcqRel) + n;
        if live > MAX_LIVE_STAGES {
            self.ctx.live.fetch_sub(n, Ordering::AcqRel);
            return Err(self.over_limit(&format!(
                "more than {MAX_LIVE_STAGES} commands would run at once (pipelines and background jobs)"
            )));
        }
        if self.ctx.stages.acquire(n, &self.stop).is_err() {
            self.ctx.live.fetch_sub(n, Ordering::AcqRel);
            self.check_limits()?;
            return Err(self.over_limit("the server has no thread free for this pipeline"));
        }
        Ok(())
    }

    fn unreserve(&self, n: usize) {
        self.ctx.stages.release(n);
        self.ctx.live.fetch_sub(n, Ordering::AcqRel);
    }

    /// Runs every command of a pipeline at once, each in a subshell, each
    /// one's output streaming into the next one's input through a bounded
    /// pipe. The last runs on this thread.
    fn concurrent_pipeline(&mut self, commands: &[Command]) -> Flow<Vec<i32>> {
        let n = commands.len();
        if n > MAX_PIPELINE {
            return Err(self.over_limit(&format!("a pipeline has more than {MAX_PIPELINE} commands")));
        }
        self.check_limits()?;
        self.reserve(n - 1)?;
        let mut receivers = Vec::with_capacity(n - 1);
        let mut stdin = self.io.stdin.clone();
        for command in &commands[..n - 1] {
            let (writer, reader) = pipe();
            let mut stage = self.clone();
            stage.io.stdin = stdin;
            stage.io.set_out(1, Out::Pipe(Arc::new(writer)));
            stdin = input(Source::Pipe(reader));
            let command = command.clone();
            receivers.push(
                self.ctx
                    .stages
                    .pool
                    .submit(move || stage.run_subshell(|sh| sh.command(&command))),
            );
        }
        let mut last = self.clone();
        last.io.stdin = stdin;
        let last_status = last.run_subshell(|sh| sh.command(&commands[n - 1]));
        let mut statuses = Vec::with_capacity(n);
        let mut failure = None;
        for rx in receivers {
            match rx.recv() {
                Ok(Ok(Ok(status))) => statuses.push(status),
                Ok(Ok(Err(e))) => {
                    failure.get_or_insert(e);
                    statuses.push(1);
                }
                _ => {
                    failure.get_or_insert(ProviderError::Internal(anyhow::anyhow!(
                        "a pipeline command's host code panicked"
                    )));
                    statuses.push(1);
                }
            }
        }
        self.unreserve(n - 1);
        match last_status {
            Ok(status) => statuses.push(status),
            Err(e) => return Err(Stop::Fail(e)),
        }
        if let Some(e) = failure {
            return Err(Stop::Fail(e));
        }
        Ok(statuses)
    }

    /// Runs `f` as a subshell: `exit`, `return` and loop control end it
    /// with a status; limits and failures end the exec.
    pub fn run_subshell(mut self, f: impl FnOnce(&mut Shell) -> Flow<i32>) -> Result<i32, ProviderError> {
        let status = match f(&mut self) {
            Ok(status) => status,
            Err(Stop::Exit(status) | Stop::Return(status)) => status,
            Err(Stop::Break(_) | Stop::Continue(_)) => self.status,
            Err(Stop::Fail(e)) => {
                self.stop_jobs();
                return Err(e);
            }
        };
        self.stop_jobs();
        Ok(status)
    }

    /// `cmd &`: runs the list as a job on a thread of its own; `wait`
    /// waits for it, and the script's end stops it.
    fn background(&mut self, item: &Item) -> Flow<i32> {
        self.check_limits()?;
        self.reserve(1)?;
        let mut job = self.clone();
        let cancel = self.stop.cancel.child_token();
        job.stop.cancel = cancel.clone();
        job.io.stdin = input(Source::Empty);
        let list = item.list.clone();
        let ctx = self.ctx.clone();
        let done = self.ctx.stages.pool.submit(move || {
            let status = job.run_subshell(|sh| sh.and_or(&list)).unwrap_or(1);
            ctx.stages.release(1);
            ctx.live.fetch_sub(1, Ordering::AcqRel);
            status
        });
        self.jobs.push(Job { done, cancel });
        self.last_job += 1;
        Ok(0)
    }

    /// What `$!` says: an id for the last background job.
    pub fn last_job_id(&self) -> String {
        if self.last_job == 0 {
            String::new()
        } else {
            (self.ctx.pid + self.last_job).to_string()
        }
    }

    /// `wait`: waits for every background job; the status of the last.
    pub fn wait_jobs(&mut self) -> Flow<i32> {
        let mut status = 0;
        for job in std::mem::take(&mut self.jobs) {
            loop {
                match job.done.recv_timeout(Duration::from_millis(10)) {
                    Ok(Ok(s)) => {
                        status = s;
                        break;
                    }
                    Ok(Err(_)) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        status = 1;
                        break;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(stop) = self.check_limits() {
                            job.cancel.cancel();
                            return Err(stop);
                        }
                    }
                }
            }
        }
        Ok(status)
    }

    pub fn command(&mut self, command: &Command) -> Flow<i32> {
        match command {
            Command::Simple(simple) => self.simple(simple),
            Command::Function(f) => {
                self.functions.insert(f.name.clone(), f.clone());
                Ok(0)
            }
            Command::Compound(compound, redirects) => {
                let io = match self.redirect(redirects, &self.io.clone()) {
                    Ok(io) => io,
                    Err(message) => {
                        self.err(&format!("sh: 1: {message}"));
                        return Ok(2);
                    }
                };
                let saved = std::mem::replace(&mut self.io, io);
                let result = self.compound(compound);
                self.io = saved;
                result
            }
        }
    }

    fn compound(&mut self, compound: &Compound) -> Flow<i32> {
        match compound {
            Compound::Group(script) => self.script(script),
            Compound::Subshell(script) => {
                let sub = self.clone();
                match sub.run_subshell(|sh| sh.script(script)) {
                    Ok(status) => Ok(status),
                    Err(e) => Err(Stop::Fail(e)),
                }
            }
            Compound::If { branches, otherwise } => {
                for (cond, body) in branches {
                    if self.condition(cond)? == 0 {
                        return self.script(body);
                    }
                }
                match otherwise {
                    Some(body) => self.script(body),
                    None => Ok(0),
                }
            }
            Compound::For { var, words, body } => {
                let values = match words {
                    Some(words) => self.expand_words(words)?,
                    None => self.positional.clone(),
                };
                self.loops += 1;
                let result = self.for_loop(var, &values, body);
                self.loops -= 1;
                result
            }
            Compound::ArithFor { init, cond, step, body } => {
                if let Some(init) = init {
                    self.arith(init)?;
                }
                self.loops += 1;
                let mut status = 0;
                let result = loop {
                    if let Err(stop) = self.check_limits() {
                        break Err(stop);
                    }
                    match cond.as_ref().map(|c| self.arith(c)).transpose() {
                        Ok(Some(0)) => break Ok(status),
                        Ok(_) => {}
                        Err(stop) => break Err(stop),
                    }
                    match self.script(body) {
                        Ok(s) => status = s,
                        Err(Stop::Break(n)) if n > 1 => break Err(Stop::Break(n - 1)),
                        Err(Stop::Break(_)) => break Ok(status),
                        Err(Stop::Continue(n)) if n > 1 => break Err(Stop::Continue(n - 1)),
                        Err(Stop::Continue(_)) => {}
                        Err(stop) => break Err(stop),
                    }
                    if let Some(step) = step
                        && let Err(stop) = self.arith(step)
                    {
                        break Err(stop);
                    }
                };
                self.loops -= 1;
                result
            }
            Compound::Loop { until, cond, body } => {
                self.loops += 1;
                let result = self.while_loop(*until, cond, body);
                self.loops -= 1;
                result
            }
            Compound::Case { word, arms } => {
                let value = self.expand_single(word)?;
                let mut status = 0;
                let mut i = 0;
                let mut falling = false;
                while i < arms.len() {
                    let arm = &arms[i];
                    let hit = falling || {
                        let mut hit = false;
                        for p in &arm.patterns {
                            if self.expand_pattern(p)?.matches(&value) {
                                hit = true;
                                break;
                            }
                        }
                        hit
                    };
                    if hit {
                        status = self.script(&arm.body)?;
                        match arm.then {
                            CaseNext::Stop => break,
                            CaseNext::FallThrough => falling = true,
                            CaseNext::TestNext => falling = false,
                        }
                    }
                    i += 1;
                }
                Ok(status)
            }
            Compound::Arith(expr) => Ok(i32::from(self.arith(expr)? == 0)),
            Compound::Test(expr) => match self.test_expr(expr)? {
                Ok(true) => Ok(0),
                Ok(false) => Ok(1),
                Err(message) => {
                    self.err(&format!("sh: 1: [[: {message}"));
                    Ok(2)
                }
            },
        }
    }

    fn for_loop(&mut self, var: &str, values: &[String], body: &Script) -> Flow<i32> {
        let mut status = 0;
        for value in values {
            self.check_limits()?;
            self.set_var(var, value.clone())?;
            match self.script(body) {
                Ok(s) => status = s,
                Err(Stop::Break(n)) if n > 1 => return Err(Stop::Break(n - 1)),
                Err(Stop::Break(_)) => break,
                Err(Stop::Continue(n)) if n > 1 => return Err(Stop::Continue(n - 1)),
                Err(Stop::Continue(_)) => {}
                Err(stop) => return Err(stop),
            }
        }
        Ok(status)
    }

    fn while_loop(&mut self, until: bool, cond: &Script, body: &Script) -> Flow<i32> {
        let mut status = 0;
        loop {
            self.check_limits()?;
            let c = match self.condition(cond) {
                Ok(c) => c,
                Err(Stop::Break(n)) if n > 1 => return Err(Stop::Break(n - 1)),
                Err(Stop::Break(_)) => break,
                Err(stop) => return Err(stop),
            };
            if (c == 0) == until {
                break;
            }
            match self.script(body) {
                Ok(s) => status = s,
                Err(Stop::Break(n)) if n > 1 => return Err(Stop::Break(n - 1)),
                Err(Stop::Break(_)) => break,
                Err(Stop::Continue(n)) if n > 1 => return Err(Stop::Continue(n - 1)),
                Err(Stop::Continue(_)) => {}
                Err(stop) => return Err(stop),
            }
        }
        Ok(status)
    }

    /// Parses and runs text in this shell (`eval`, `.`, traps).
    pub fn eval_text(&mut self, text: &str) -> Flow<i32> {
        let script = match parse_bounded(text) {
            Ok(script) => script,
            Err(message) => {
                self.err(&format!("sh: 1: {message}"));
                return Ok(2);
            }
        };
        self.enter_call()?;
        let result = self.script(&script);
        self.depth -= 1;
        result
    }

    /// One more level of function call, `eval`, `.` or `sh`.
    pub fn enter_call(&mut self) -> Flow<()> {
        if self.depth >= MAX_CALL_DEPTH {
            return Err(self.over_limit(&format!(
                "function calls, eval, . and sh nest deeper than {MAX_CALL_DEPTH} levels"
            )));
        }
        self.depth += 1;
        Ok(())
    }

    /// Calls a function with `args` as its positional parameters.
    pub fn call_function(&mut self, f: &Function, args: &[String], io: &CmdIo) -> Flow<i32> {
        self.enter_call()?;
        let saved_args = std::mem::replace(&mut self.positional, args.to_vec());
        let saved_io = std::mem::replace(&mut self.io, io.clone());
        self.locals.push(vec![]);
        let result = match self.redirect(&f.redirects, &self.io.clone()) {
            Ok(io) => {
                self.io = io;
                self.compound(&f.body)
            }
            Err(message) => {
                self.err(&format!("sh: 1: {message}"));
                Ok(2)
            }
        };
        for (name, old) in self.locals.pop().unwrap_or_default().into_iter().rev() {
            match old {
                Some(var) => {
                    self.store_var(&name, var.value.clone()).ok();
                    if let Some(v) = self.vars.get_mut(&name) {
                        v.exported = var.exported;
                        v.readonly = var.readonly;
                    }
                }
                None => self.remove_var(&name),
            }
        }
        self.io = saved_io;
        self.positional = saved_args;
        self.depth -= 1;
        match result {
            Err(Stop::Return(status)) => Ok(status),
            other => other,
        }
    }

    fn simple(&mut self, command: &SimpleCommand) -> Flow<i32> {
        self.check_limits()?;
        self.status_of_substitution = None;
        let args = self.expand_words(&command.words)?;
        let mut assignments = Vec::with_capacity(command.assignments.len());
        for a in &command.assignments {
            let mut value = self.expand_single(&a.value)?;
            if a.append {
                value = format!("{}{value}", self.var(&a.name).unwrap_or_default());
            }
            assignments.push((a.name.clone(), value));
        }
        if self.opts.xtrace {
            let mut line = String::from("+");
            for (k, v) in &assignments {
                line.push_str(&format!(" {k}={}", builtins::trace_quote(v)));
            }
            for a in &args {
                line.push(' ');
                line.push_str(&builtins::trace_quote(a));
            }
            self.err(&line);
        }
        // `exec` with only redirections changes the shell's own streams.
        if args.len() == 1 && args[0] == "exec" {
            return match self.redirect(&command.redirects, &self.io.clone()) {
                Ok(io) => {
                    self.io = io;
                    Ok(0)
                }
                Err(message) => {
                    self.err(&format!("sh: 1: {message}"));
                    Err(Stop::Exit(2))
                }
            };
        }
        let io = match self.redirect(&command.redirects, &self.io.clone()) {
            Ok(io) => io,
            Err(message) => {
                self.err(&format!("sh: 1: {message}"));
                return Ok(2);
            }
        };
        if args.is_empty() {
            for (name, value) in assignments {
                self.set_var(&name, value)?;
            }
            return Ok(self.status_of_substitution.take().unwrap_or(0));
        }
        self.command_words(&args, &assignments, &io)
    }

    /// Runs a command given as words: a special builtin, a function, a
    /// builtin or a program. `assignments` hold for this command only,
    /// except for special builtins, where they stay.
    pub fn command_words(&mut self, args: &[String], assignments: &[(String, String)], io: &CmdIo) -> Flow<i32> {
        let name = args[0].as_str();
        if builtins::is_special(name) {
            for (k, v) in assignments {
                self.set_var(k, v.clone())?;
            }
            return self.builtin(name, args, io);
        }
        if let Some(f) = self.functions.get(name).cloned() {
            return self.with_assignments(assignments, |sh| sh.call_function(&f, &args[1..], io));
        }
        if builtins::find(name).is_some() {
            return self.with_assignments(assignments, |sh| sh.builtin(name, args, io));
        }
        self.program(args, assignments, io)
    }

    /// Runs a builtin or program, never a function (`command name`).
    pub fn command_words_no_functions(&mut self, args: &[String], io: &CmdIo) -> Flow<i32> {
        if builtins::find(&args[0]).is_some() {
            return self.builtin(&args[0], args, io);
        }
        self.program(args, &[], io)
    }

    /// Runs a program (never a function or builtin): a wasm guest.
    pub fn program(&mut self, args: &[String], assignments: &[(String, String)], io: &CmdIo) -> Flow<i32> {
        let name = args[0].as_str();
        let (runtime, prefix) = match (self.ctx.resolve)(name) {
            Resolved::Runtime(runtime, prefix) => (runtime, prefix),
            Resolved::Unavailable(why) => {
                self.write_stderr(io, format!("sh: {why}\n").as_bytes());
                return Ok(127);
            }
            Resolved::NotFound => {
                self.write_stderr(io, format!("sh: 1: {name}: not found\n").as_bytes());
                return Ok(127);
            }
        };
        let mut argv = prefix;
        argv.extend(args[1..].iter().cloned());
        self.guest(&runtime, argv, assignments, io)
    }

    fn builtin(&mut self, name: &str, args: &[String], io: &CmdIo) -> Flow<i32> {
        let Some(builtin) = builtins::find(name) else {
            return Ok(127);
        };
        self.write_error = None;
        let status = builtin(self, args, io)?;
        if let Some(e) = self.write_error.take() {
            let message = format!(
                "sh: 1: {}: write error: {}\n",
                builtins::base_name(name),
                errno_text(&e)
            );
            self.write_stderr(io, message.as_bytes());
            return Ok(1);
        }
        Ok(status)
    }

    /// Runs `f` with `assignments` set (and exported) for its duration.
    fn with_assignments(
        &mut self,
        assignments: &[(String, String)],
        f: impl FnOnce(&mut Shell) -> Flow<i32>,
    ) -> Flow<i32> {
        if assignments.is_empty() {
            return f(self);
        }
        let saved: Vec<(String, Option<Var>)> = assignments
            .iter()
            .map(|(k, _)| (k.clone(), self.vars.get(k).cloned()))
            .collect();
        let mut result = Ok(0);
        for (k, v) in assignments {
            if let Err(stop) = self.store_var(k, v.clone()) {
                result = Err(stop);
                break;
            }
            if let Some(var) = self.vars.get_mut(k) {
                var.exported = true;
            }
        }
        if result.is_ok() {
            result = f(self);
        }
        for (k, old) in saved {
            match old {
                Some(var) => {
                    self.store_var(&k, var.value.clone()).ok();
                    if let Some(v) = self.vars.get_mut(&k) {
                        v.exported = var.exported;
                    }
                }
                None => self.remove_var(&k),
            }
        }
        result
    }

    /// The value of a variable, if set.
    pub fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).map(|v| v.value.clone())
    }

    /// Sets a shell variable; it stays exported if it was. Ends the script
    /// when the variables would outgrow [`MAX_VARS_BYTES`].
    pub fn set_var(&mut self, name: &str, value: String) -> Flow<()> {
        if self.vars.get(name).is_some_and(|v| v.readonly) {
            return Err(self.over_limit(&format!("{name}: is read only")));
        }
        self.user_set.insert(name.to_string());
        self.store_var(name, value)
    }

    /// Removes a variable, which then no longer takes a runtime's default.
    pub fn unset_var(&mut self, name: &str) -> Flow<()> {
        if self.vars.get(name).is_some_and(|v| v.readonly) {
            return Err(self.over_limit(&format!("{name}: is read only")));
        }
        self.remove_var(name);
        self.user_set.insert(name.to_string());
        Ok(())
    }

    pub fn store_var(&mut self, name: &str, value: String) -> Flow<()> {
        let old = self.vars.get(name).map_or(0, |v| name.len() + v.value.len());
        let total = self.vars_bytes - old + name.len() + value.len();
        if value.len() > MAX_WORD_BYTES || total > MAX_VARS_BYTES {
            return Err(self.over_limit(&format!(
                "{name}: the shell's variables would hold more than {MAX_VARS_BYTES} bytes, or this one more than {MAX_WORD_BYTES}"
            )));
        }
        self.vars_bytes = total;
        self.vars.entry(name.to_string()).or_default().value = value;
        Ok(())
    }

    fn remove_var(&mut self, name: &str) {
        if let Some(old) = self.vars.remove(name) {
            self.vars_bytes -= name.len() + old.value.len();
        }
    }

    /// The environment a program sees: exported variables, plus the
    /// runtime's defaults where neither the client nor the script set one.
    pub fn environment(&self, defaults: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self
            .vars
            .iter()
            .filter(|(_, v)| v.exported)
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect();
        for (k, v) in defaults {
            if !self.user_set.contains(k) {
                env.insert(k.clone(), v.clone());
            }
        }
        env.insert("PWD".into(), self.cwd.to_string());
        env
    }

    /// Applies redirections in order to `inherited`; the error is sh's
    /// message.
    pub fn redirect(&mut self, redirects: &[Redirect], inherited: &CmdIo) -> Result<CmdIo, String> {
        let mut io = inherited.clone();
        for r in redirects {
            let target = match &r.target {
                RedirectTarget::Duplicate(w) => {
                    let target = self.expand_single(w).map_err(|_| "bad redirection".to_string())?;
                    if target == "-" {
                        if r.fd == 0 {
                            io.stdin = input(Source::Empty);
                        } else {
                            io.set_out(r.fd, Out::Closed);
                        }
                        continue;
                    }
                    let from: i32 = target.parse().map_err(|_| format!("{target}: Bad file descriptor"))?;
                    if r.fd == 0 || from == 0 {
                        if r.fd == from {
                            continue;
                        }
                        return Err("input duplication is not supported by the stacyvm shell".into());
                    }
                    let out = io
                        .out(from)
                        .cloned()
                        .ok_or_else(|| format!("{from}: Bad file descriptor"))?;
                    if matches!(out, Out::Closed) {
                        return Err(format!("{from}: Bad file descriptor"));
                    }
                    io.set_out(r.fd, out);
                    continue;
                }
                RedirectTarget::HereDoc(body) => {
                    let text = self.expand_single(body).map_err(|_| "here-document".to_string())?;
                    io.stdin = input(Source::Bytes(text.into_bytes(), 0));
                    continue;
                }
                RedirectTarget::HereString(w) => {
                    let mut text = self.expand_single(w).map_err(|_| "here-string".to_string())?;
                    text.push('\n');
                    io.stdin = input(Source::Bytes(text.into_bytes(), 0));
                    continue;
                }
                RedirectTarget::Read(w)
                | RedirectTarget::Write(w)
                | RedirectTarget::Append(w)
                | RedirectTarget::ReadWrite(w) => self.expand_single(w).map_err(|_| "bad redirection".to_string())?,
            };
            // The one device a sandbox has: reads are empty, writes vanish.
            if target == "/dev/null" {
                match (&r.target, r.fd) {
                    (RedirectTarget::Read(_), _) => io.stdin = input(Source::Empty),
                    (_, -1) => {
                        io.set_out(1, Out::Null);
                        io.set_out(2, Out::Null);
                    }
                    (_, fd) => io.set_out(fd, Out::Null),
                }
                continue;
            }
            if matches!(target.as_str(), "/dev/stdout" | "/dev/stderr") {
                let from = if target == "/dev/stdout" { 1 } else { 2 };
                if let Some(out) = inherited.out(from).cloned() {
                    io.set_out(r.fd.max(1), out);
                }
                continue;
            }
            if target == "/dev/stdin" {
                continue;
            }
            let path = self
                .resolve_path(&target)
                .map_err(|why| format!("cannot open {target}: {why}"))?;
            match &r.target {
                RedirectTarget::Read(_) => {
                    // Opened here, read by the command as it goes.
                    let file = self
                        .ctx
                        .root
                        .open(path.relative())
                        .map_err(|e| format!("cannot open {target}: {}", errno_text(&e)))?;
                    if file.metadata().is_ok_and(|m| m.is_dir()) {
                        return Err(format!("cannot open {target}: Is a directory"));
                    }
                    let source = Source::File(file.into_std());
                    if r.fd == 0 {
                        io.stdin = input(source);
                    }
                }
                _ => {
                    let append = matches!(r.target, RedirectTarget::Append(_));
                    let read_write = matches!(r.target, RedirectTarget::ReadWrite(_));
                    if path.is_root() {
                        return Err(format!("cannot create {target}: Is a directory"));
                    }
                    let mut opts = OpenOptions::new();
                    opts.write(true).create(true);
                    if append {
                        opts.append(true);
                    } else if read_write {
                        opts.read(true);
                    } else {
                        opts.truncate(true);
                    }
                    let existed = self.ctx.root.symlink_metadata(path.relative()).is_ok();
                    if !existed && self.ctx.ledger.charge(0, 1).is_err() {
                        return Err(format!("cannot create {target}: No space left on device"));
                    }
                    let file = self
                        .ctx
                        .root
                        .open_with(path.relative(), &opts)
                        .map_err(|e| format!("cannot create {target}: {}", errno_text(&e)))?;
                    let file = file.into_std();
                    if read_write && r.fd == 0 {
                        io.stdin = input(Source::File(file));
                        continue;
                    }
                    let out = Out::File(Arc::new(Mutex::new(FileOut { file })));
                    if r.fd == -1 {
                        io.set_out(1, out.clone());
                        io.set_out(2, out);
                    } else {
                        io.set_out(r.fd, out);
                    }
                }
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

    pub fn try_write(&mut self, out: &Out, bytes: &[u8]) -> std::io::Result<()> {
        match out {
            Out::Exec(StreamKind::Stdout) => lock(&self.ctx.stdout).push(bytes),
            Out::Exec(StreamKind::Stderr) => lock(&self.ctx.stderr).push(bytes),
            Out::Pipe(writer) => writer.write_all(bytes, &self.stop)?,
            Out::File(file) => lock(file).write(&self.ctx.ledger, bytes)?,
            Out::Capture(capture) => {
                let mut capture = lock(capture);
                if capture.data.len() + bytes.len() > MAX_WORD_BYTES {
                    capture.overflowed = true;
                } else {
                    capture.data.extend_from_slice(bytes);
                }
            }
            Out::Null => {}
            Out::Closed => return Err(std::io::Error::from_raw_os_error(9)),
        }
        Ok(())
    }

    /// Writes an error message; a stderr that cannot take it loses it.
    pub fn write_stderr(&mut self, io: &CmdIo, bytes: &[u8]) {
        let out = io.stderr().clone();
        self.try_write(&out, bytes).ok();
    }

    /// Runs a command substitution: the script in a subshell whose output
    /// is captured, without its trailing newlines.
    pub fn substitute(&mut self, script: &Script) -> Flow<String> {
        let capture = Arc::new(Mutex::new(Capture::default()));
        let mut sub = self.clone();
        sub.io.set_out(1, Out::Capture(capture.clone()));
        sub.enter_call()?;
        let status = sub.run_subshell(|sh| sh.script(script)).map_err(Stop::Fail)?;
        self.status_of_substitution = Some(status);
        self.status = status;
        let capture = std::mem::take(&mut *lock(&capture));
        if capture.overflowed {
            return Err(self.over_limit(&format!(
                "a command substitution's output is longer than {MAX_WORD_BYTES} bytes"
            )));
        }
        let mut text = String::from_utf8_lossy(&capture.data).into_owned();
        while text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    }

    /// Runs a program as a wasm guest, wired to `io`: a file it writes to
    /// is its stdout itself, and a pipe, a file or the exec's stdin is its
    /// stdin; output to the exec or a substitution is captured and routed
    /// when it ends.
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
        if program == "echo" {
            // dash's echo: escapes are always interpreted, only -n is an
            // option; uutils' echo does so under POSIXLY_CORRECT.
            env.insert("POSIXLY_CORRECT".into(), "1".into());
        }
        let direct = |out: &Out, kind: StreamKind| matches!(out, Out::Exec(k) if *k == kind);
        // Output that goes straight to the client streams from the guest.
        let streaming = self.ctx.output.is_some()
            && direct(io.stdout(), StreamKind::Stdout)
            && direct(io.stderr(), StreamKind::Stderr);
        let capture_limit = |shell: &Shell, out: &Out| match out {
            Out::Exec(StreamKind::Stdout) => lock(&shell.ctx.stdout).room(),
            Out::Exec(StreamKind::Stderr) => lock(&shell.ctx.stderr).room(),
            Out::Capture(_) => MAX_WORD_BYTES + 1,
            _ => 0,
        };
        let output_limit = capture_limit(self, io.stdout()).max(capture_limit(self, io.stderr()));
        let stop = self.stop.clone();
        let target = |out: &Out| -> Flow<GuestOut> {
            Ok(match out {
                Out::File(f) => GuestOut::File(
                    lock(f)
                        .file
                        .try_clone()
                        .map_err(|e| Stop::Fail(ProviderError::Internal(e.into())))?,
                ),
                Out::Pipe(writer) => {
                    let (writer, stop) = (writer.clone(), stop.clone());
                    GuestOut::Writer(Arc::new(move |bytes: &[u8]| writer.write_all(bytes, &stop)))
                }
                Out::Null | Out::Closed => GuestOut::Discard,
                Out::Exec(_) | Out::Capture(_) => GuestOut::Capture,
            })
        };
        let (stdout, stderr) = (target(io.stdout())?, target(io.stderr())?);
        let piped = matches!(io.stdout(), Out::Pipe(_)) || matches!(lock(&io.stdin).source_kind(), SourceKind::Pipe);
        let job = GuestJob {
            argv,
            env: env.into_iter().collect(),
            sandbox_dir: self.ctx.sandbox_dir.clone(),
            stdin: vec![],
            timeout: self.stop.deadline.saturating_duration_since(Instant::now()),
            memory_bytes: self.ctx.memory_bytes,
            fuel: self.ctx.fuel,
            output_limit,
            close_when_full: false,
            stdout,
            stderr,
            ledger: self.ctx.ledger.clone(),
            stdin_stream: None,
            stdin_custom: Some(Box::new(GuestStdin {
                input: io.stdin.clone(),
                stop: self.stop.clone(),
            })),
            output: if streaming { self.ctx.output.clone() } else { None },
            cancel: self.stop.cancel.clone(),
        };
        let result = guest::run(runtime, job);
        if piped {
            // The finished instance holds the pipe's ends: let them go now,
            // so that the other end sees it.
            guest::release_parked();
        }
        let (output, stopped) = match result {
            Ok(output) => (output, None),
            Err(ProviderError::Timeout { partial, .. }) => (*partial, Some(Limit::Timeout)),
            Err(ProviderError::FuelExhausted { fuel, partial }) => (*partial, Some(Limit::Fuel(fuel))),
            Err(ProviderError::MemoryLimit { limit_mb, partial }) => (*partial, Some(Limit::Memory(limit_mb))),
            Err(ProviderError::Cancelled) if !self.ctx.stop.cancel.is_cancelled() => {
                // A background job stopped at the script's end.
                return Err(Stop::Exit(143));
            }
            Err(other) => return Err(Stop::Fail(other)),
        };
        if let Some(trap) = &output.trap {
            *lock(&self.ctx.trap) = Some(trap.clone());
        }
        let mut status = output.exit_code;
        if streaming {
            lock(&self.ctx.stdout).absorb_streamed(&output.stdout);
            lock(&self.ctx.stderr).absorb_streamed(&output.stderr);
            if output.truncated {
                self.ctx.truncated.store(true, Ordering::Relaxed);
            }
        } else {
            let captured_to = |out: &Out| matches!(out, Out::Exec(_) | Out::Capture(_));
            if output.truncated && (captured_to(io.stdout()) || captured_to(io.stderr())) {
                match io.stdout() {
                    Out::Capture(c) => lock(c).overflowed = true,
                    _ => self.ctx.truncated.store(true, Ordering::Relaxed),
                }
            }
            for (out, data) in [(io.stdout(), &output.stdout), (io.stderr(), &output.stderr)] {
                if !captured_to(out) {
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
                partial: Box::new(finish_partial(&self.ctx, self.status)),
            })),
            Some(Limit::Memory(limit_mb)) => Err(Stop::Fail(ProviderError::MemoryLimit {
                limit_mb,
                partial: Box::new(finish_partial(&self.ctx, self.status)),
            })),
        }
    }
}

/// The output so far, for an exec stopped by a limit.
fn finish_partial(ctx: &Ctx, status: i32) -> ExecOutput {
    let stdout = lock(&ctx.stdout);
    let stderr = lock(&ctx.stderr);
    ExecOutput {
        exit_code: status,
        truncated: ctx.truncated.load(Ordering::Relaxed) || stdout.truncated || stderr.truncated,
        stdout: stdout.buf.clone(),
        stderr: stderr.buf.clone(),
        duration: ctx.started.elapsed(),
        trap: lock(&ctx.trap).clone(),
    }
}

/// What an input is read from, for deciding how to let go of a guest.
pub enum SourceKind {
    Pipe,
    Other,
}

enum Limit {
    Timeout,
    Fuel(u64),
    Memory(u64),
}
