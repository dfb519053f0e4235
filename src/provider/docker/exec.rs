//! Running commands in a container through `docker exec`, and stopping
//! them for good when they run past their deadline.
//!
//! Killing the client side of an exec leaves the process running, and the
//! Engine API has no call to kill one exec. So every exec carries a unique
//! tag as its `$0`; on timeout, or when its client goes away, a second exec
//! ([`KILLER`], run as root) finds the tagged process, and freezes with
//! SIGSTOP and then kills with SIGKILL every process of the container that
//! started since, except PID 1, the processes of other execs still running
//! and their descendants, and the descendants of processes that were
//! already there. So a child that left with `setsid` or was re-parented to
//! init by a double fork dies too, while a server that an earlier exec left
//! in the background survives. It waits until none is left.
//!
//! Output is demultiplexed as it arrives; with a tee, every kept byte is
//! also sent at once, except a possible wrapper sentinel at the end of
//! stderr, which is held back until it is known not to be one.

use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::RestartContainerOptions;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::provider::{ExecMode, ExecOutput, ExecSpec, OutputChunk, StreamKind};

/// Runs the user's command (`$2...`) in the workdir (`$1`). A workdir that
/// cannot be entered is reported with a sentinel on stderr and exit 125,
/// before any user code runs. When the command dies of SIGKILL (137) and
/// the container's memory cgroup counted a new OOM kill meanwhile, the
/// wrapper appends [`OOM_SENTINEL`] to stderr. `$0` is the tag.
pub const WRAPPER: &str = r#"if ! cd -- "$1" 2>/dev/null; then
  if [ -e "$1" ]; then printf '\0stacyvm:workdir-not-dir' >&2; else printf '\0stacyvm:workdir-missing' >&2; fi
  exit 125
fi
shift
oom_kills() {
  n=
  for f in /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events; do
    [ -r "$f" ] || continue
    while read -r k v; do [ "$k" = oom_kill ] && n=$v; done < "$f"
    return 0
  done
}
oom_kills; before=$n
"$@"
rc=$?
if [ "$rc" = 137 ]; then oom_kills; [ -n "$n" ] && [ "$n" != "$before" ] && printf '\0stacyvm:oom' >&2; fi
exit "$rc"
"#;

/// Every exec's tag starts with this; the killer spares the processes of
/// tagged execs other than its victim (and itself).
const TAG_PREFIX: &str = "stacyvm-exec-";

/// Kills what one exec started. `$1` is a regex matching the victim's tag
/// but not itself (`[s]tacyvm-exec-...`), `$2` the prefix of every tag.
/// The victim's start is the earliest start time (field 22 of
/// `/proc/PID/stat`) of a process carrying its tag. Spared: PID 1, this
/// script, processes that started before the victim, processes of other
/// tagged execs, and every descendant of those. Everything else is frozen,
/// collected again (it may have forked meanwhile), frozen, and killed.
/// Prints `none` (the victim is gone), `killed`, or `alive`.
const KILLER: &str = r#"victim=$1 prefix=$2
pids() { for f in "$@"; do p=${f#/proc/}; printf '%s ' "${p%/cmdline}"; done; }
roots=$(pids $(grep -l -e "$victim" /proc/[0-9]*/cmdline 2>/dev/null))
tagged=$(pids $(grep -l -F -e "$prefix" /proc/[0-9]*/cmdline 2>/dev/null))
start=
for p in $roots; do
  read -r line < "/proc/$p/stat" 2>/dev/null || continue
  set -- ${line##*') '}
  if [ -z "$start" ] || [ "${20}" -lt "$start" ]; then start=${20}; fi
done
[ -z "$start" ] && { echo none; exit 0; }
keep=" $$ "
for p in $tagged; do
  case " $roots " in *" $p "*) ;; *) keep="$keep$p " ;; esac
done
found=" "
collect() {
  table=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = 1 ] && continue
    case "$keep$found" in *" $p "*) continue ;; esac
    read -r line < "$d/stat" 2>/dev/null || continue
    set -- ${line##*') '}
    if [ "${20}" -lt "$start" ]; then keep="$keep$p "; else table="$table $p:$2"; fi
  done
  changed=1
  while [ "$changed" = 1 ]; do
    changed=0
    rest=
    for e in $table; do
      case "$keep" in
        *" ${e#*:} "*) keep="$keep${e%%:*} "; changed=1 ;;
        *) rest="$rest $e" ;;
      esac
    done
    table=$rest
  done
  for e in $table; do found="$found${e%%:*} "; done
}
collect; [ "$found" = " " ] || kill -STOP $found 2>/dev/null
collect; [ "$found" = " " ] || kill -STOP $found 2>/dev/null
collect; [ "$found" = " " ] || kill -KILL $found 2>/dev/null
i=0
while [ $i -lt 200 ]; do
  alive=
  for p in $found; do
    read -r line < "/proc/$p/stat" 2>/dev/null || continue
    set -- ${line##*') '}
    [ "$1" = Z ] || alive=1
  done
  [ -z "$alive" ] && { echo killed; exit 0; }
  sleep 0.01; i=$((i+1))
done
echo alive
"#;

pub const OOM_SENTINEL: &[u8] = b"\0stacyvm:oom";
pub const WORKDIR_MISSING: &[u8] = b"\0stacyvm:workdir-missing";
pub const WORKDIR_NOT_DIR: &[u8] = b"\0stacyvm:workdir-not-dir";
/// Exit code of the wrapper when the workdir cannot be entered.
pub const WORKDIR_EXIT: i32 = 125;

/// Every sentinel the wrapper may print at the end of stderr.
const SENTINELS: [&[u8]; 3] = [OOM_SENTINEL, WORKDIR_MISSING, WORKDIR_NOT_DIR];
/// Bytes of stderr kept past the cap to spot a sentinel at its very end.
const TAIL_BYTES: usize = 64;
/// Rounds of the killer before restarting the container instead. Each
/// round is one exec and a 50 ms pause; ten cover a process that was still
/// being started.
const KILL_ROUNDS: usize = 10;
/// After the output stream ends the daemon records the exit code a moment
/// later; poll this often, this many times (half a second in all).
const EXIT_POLL: Duration = Duration::from_millis(10);
const EXIT_POLLS: usize = 50;

/// Live standard input of an exec.
pub type StdinStream = Box<dyn AsyncRead + Send + Sync + Unpin>;

/// Output gathered so far; kept outside the running future so a timeout
/// still has the partial output.
#[derive(Default)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    /// The last bytes of stderr, kept even past the cap.
    pub stderr_tail: Vec<u8>,
    /// Where kept bytes are also sent as they arrive; a closed receiver
    /// means the client left.
    tee: Option<UnboundedSender<OutputChunk>>,
    /// How much of `stderr` went to the tee already.
    stderr_sent: usize,
}

impl Collected {
    /// Also sends every kept byte to `tee` as it arrives.
    pub fn with_tee(tee: Option<UnboundedSender<OutputChunk>>) -> Self {
        Collected {
            tee,
            ..Default::default()
        }
    }

    /// Forgets the output, keeping the tee (an exec started over).
    pub fn reset(&mut self) {
        *self = Collected::with_tee(self.tee.take());
    }

    fn push(&mut self, output: LogOutput, limit: usize) {
        let (buf, data, is_err) = match output {
            LogOutput::StdOut { message } | LogOutput::Console { message } => (&mut self.stdout, message, false),
            LogOutput::StdErr { message } => (&mut self.stderr, message, true),
            LogOutput::StdIn { .. } => return,
        };
        let room = limit.saturating_sub(buf.len());
        if data.len() > room {
            self.truncated = true;
        }
        let kept = &data[..data.len().min(room)];
        buf.extend_from_slice(kept);
        if is_err {
            self.stderr_tail.extend_from_slice(&data);
            let excess = self.stderr_tail.len().saturating_sub(TAIL_BYTES);
            self.stderr_tail.drain(..excess);
            self.send_stderr(false);
        } else if let Some(tx) = &self.tee
            && !kept.is_empty()
        {
            // A closed receiver is noticed by `run`, which stops the command.
            tx.send(OutputChunk {
                stream: StreamKind::Stdout,
                data: kept.to_vec(),
            })
            .ok();
        }
    }

    /// Sends the stderr not sent yet; unless `all`, holds back an end that
    /// may be the start of a sentinel.
    fn send_stderr(&mut self, all: bool) {
        let Some(tx) = &self.tee else { return };
        let unsent = &self.stderr[self.stderr_sent.min(self.stderr.len())..];
        let held = if all { 0 } else { sentinel_start_len(unsent) };
        let ready = &unsent[..unsent.len() - held];
        if !ready.is_empty() {
            tx.send(OutputChunk {
                stream: StreamKind::Stderr,
                data: ready.to_vec(),
            })
            .ok();
        }
        self.stderr_sent = self.stderr_sent.min(self.stderr.len()) + ready.len();
    }

    /// Removes `sentinel` if stderr ends with it; says whether it did.
    pub fn take_sentinel(&mut self, sentinel: &[u8]) -> bool {
        if !self.stderr_tail.ends_with(sentinel) {
            return false;
        }
        if self.stderr.ends_with(sentinel) {
            self.stderr.truncate(self.stderr.len() - sentinel.len());
        }
        true
    }

    /// The result; stderr held back for a sentinel is sent now (call this
    /// after taking the sentinels).
    pub fn into_output(mut self, exit_code: i32, duration: Duration) -> ExecOutput {
        self.send_stderr(true);
        ExecOutput {
            exit_code,
            stdout: self.stdout,
            stderr: self.stderr,
            truncated: self.truncated,
            duration,
            trap: None,
        }
    }

    /// Resolves when the tee's receiver is closed; never without a tee.
    fn left(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tee = self.tee.clone();
        async move {
            match tee {
                Some(tx) => tx.closed().await,
                None => std::future::pending().await,
            }
        }
    }
}

/// The length of the longest end of `bytes` that a sentinel starts with.
fn sentinel_start_len(bytes: &[u8]) -> usize {
    let longest = SENTINELS.iter().map(|s| s.len()).max().unwrap_or(0);
    (bytes.len().saturating_sub(longest)..bytes.len())
        .find(|&i| bytes[i] == 0 && SENTINELS.iter().any(|s| s.starts_with(&bytes[i..])))
        .map_or(0, |i| bytes.len() - i)
}

/// A finished user command, or one stopped at its deadline.
pub enum Finished {
    Exited(i32),
    TimedOut,
    /// The output receiver was closed, and the command killed.
    Cancelled,
}

/// POSIX single-quoting, safe for any byte string.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The arguments of [`WRAPPER`] for a user exec: the workdir, then the
/// command.
pub fn user_args(spec: &ExecSpec) -> Vec<String> {
    let mut args = vec![spec.workdir.to_string()];
    match spec.mode {
        ExecMode::Argv => {
            args.push(spec.command.clone());
            args.extend(spec.args.iter().cloned());
        }
        ExecMode::Shell => {
            let mut line = spec.command.clone();
            for arg in &spec.args {
                line.push(' ');
                line.push_str(&shell_quote(arg));
            }
            args.extend(["/bin/sh".into(), "-c".into(), line]);
        }
    }
    args
}

/// A tag no other exec has: 96 random bits.
fn new_tag() -> String {
    format!("{TAG_PREFIX}{}", hex::encode(rand::random::<[u8; 12]>()))
}

type OutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Creates and starts an exec. Its stdin (the bytes, then the live stream)
/// is written and closed by a task of its own, so a program that writes
/// before reading cannot deadlock; the task ends with the returned guard.
async fn start(
    docker: &Docker,
    container: &str,
    options: CreateExecOptions<String>,
    stdin: Option<Vec<u8>>,
    live_stdin: &mut Option<StdinStream>,
    exec_id: &mut Option<String>,
) -> Result<(OutputStream, Option<AbortOnDrop>), DockerError> {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdin: Some(stdin.is_some() || live_stdin.is_some()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..options
            },
        )
        .await?;
    *exec_id = Some(created.id.clone());
    match docker.start_exec(&created.id, None).await? {
        StartExecResults::Attached { output, mut input } => {
            // Taken only now: an exec that failed to start (and is started
            // again) still has its live input.
            let live = live_stdin.take();
            if stdin.is_none() && live.is_none() {
                return Ok((output, None));
            }
            let feeder = tokio::spawn(async move {
                // A program that exits without reading its input closes
                // the pipe; that is not an error.
                if let Some(data) = stdin
                    && input.write_all(&data).await.is_err()
                {
                    return;
                }
                if let Some(mut live) = live {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match live.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if input.write_all(&buf[..n]).await.is_err() || input.flush().await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                input.shutdown().await.ok();
            });
            Ok((output, Some(AbortOnDrop(feeder))))
        }
        StartExecResults::Detached => Err(DockerError::DockerStreamError {
            error: "exec started detached".into(),
        }),
    }
}

async fn drain(mut output: OutputStream, limit: usize, out: &mut Collected) -> Result<(), DockerError> {
    while let Some(item) = output.next().await {
        out.push(item?, limit);
    }
    Ok(())
}

/// The exit code, once the daemon has recorded it.
async fn exit_code(docker: &Docker, exec_id: &str) -> Result<i32, DockerError> {
    for _ in 0..EXIT_POLLS {
        let inspect = docker.inspect_exec(exec_id).await?;
        if inspect.running != Some(true)
            && let Some(code) = inspect.exit_code
        {
            return Ok(code as i32);
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
    Err(DockerError::DockerStreamError {
        error: format!("exec {exec_id} ended its output but reports no exit code"),
    })
}

/// One command to run: `sh -c script TAG args...`.
#[derive(Clone)]
pub struct Job {
    pub script: &'static str,
    pub args: Vec<String>,
    /// `UID:GID` to run as.
    pub user: String,
    pub env: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Bytes kept of each of stdout and stderr.
    pub limit: usize,
    /// Whether a job stopped early is killed; not for the killer itself.
    pub killable: bool,
}

/// Runs the job to completion, until its timeout, or until the client
/// leaves (`out`'s tee is closed, or `cancel` is cancelled); on timeout or
/// departure every process the exec started is killed before this returns.
/// `live_stdin` is taken once the exec has started.
pub async fn run(
    docker: &Docker,
    container: &str,
    job: Job,
    live_stdin: &mut Option<StdinStream>,
    out: &mut Collected,
    cancel: &CancellationToken,
) -> Result<Finished, DockerError> {
    let tag = new_tag();
    let mut guard = KillOnDrop {
        docker: docker.clone(),
        container: container.to_string(),
        tag: job.killable.then(|| tag.clone()),
        exec_id: None,
    };
    let Job {
        script,
        args,
        user,
        env,
        stdin,
        timeout,
        limit,
        killable,
    } = job;
    let mut argv = vec!["/bin/sh".to_string(), "-c".into(), script.into(), tag.clone()];
    argv.extend(args);
    let options = CreateExecOptions {
        cmd: Some(argv),
        env: Some(env),
        user: Some(user),
        ..Default::default()
    };
    let left = out.left();
    let attempt = tokio::time::timeout(timeout, async {
        let (output, _feeder) = start(docker, container, options, stdin, live_stdin, &mut guard.exec_id).await?;
        tokio::select! {
            drained = drain(output, limit, out) => drained.map(|()| true),
            () = left => Ok(false),
            () = cancel.cancelled() => Ok(false),
        }
    })
    .await;
    let exec_id = guard.disarm();
    let finished = match attempt {
        Ok(Ok(true)) => {
            let id = exec_id.expect("a started exec has an id");
            return Ok(Finished::Exited(exit_code(docker, &id).await?));
        }
        Ok(Ok(false)) => Finished::Cancelled,
        Ok(Err(e)) => return Err(e),
        Err(_) => Finished::TimedOut,
    };
    if killable {
        kill(docker, container, &tag, exec_id.as_deref()).await?;
    }
    Ok(finished)
}

/// Kills the exec when the future running it is dropped (the client went
/// away): the process would otherwise run on in the container.
struct KillOnDrop {
    docker: Docker,
    container: String,
    tag: Option<String>,
    exec_id: Option<String>,
}

impl KillOnDrop {
    fn disarm(&mut self) -> Option<String> {
        self.tag = None;
        self.exec_id.take()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Some(tag) = self.tag.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (docker, container, exec_id) = (self.docker.clone(), self.container.clone(), self.exec_id.take());
        runtime.spawn(async move {
            if let Err(e) = kill(&docker, &container, &tag, exec_id.as_deref()).await {
                tracing::warn!(container, "cannot kill an abandoned exec: {e}");
            }
        });
    }
}

/// Kills every process the exec tagged `tag` started (see [`KILLER`]) and
/// waits until the daemon sees it ended.
async fn kill(docker: &Docker, container: &str, tag: &str, exec_id: Option<&str>) -> Result<(), DockerError> {
    let (first, rest) = tag.split_at(1);
    let pattern = format!("[{first}]{rest}");
    let never = CancellationToken::new();
    for round in 0..KILL_ROUNDS {
        let mut report = Collected::default();
        let job = Job {
            script: KILLER,
            args: vec![pattern.clone(), TAG_PREFIX.into()],
            // Root, and the container keeps CAP_KILL when commands run as
            // another user: a command cannot kill the killer, and the killer
            // can kill any command.
            user: "0:0".into(),
            env: vec![],
            stdin: None,
            // The killer is quick; ten seconds only guards against a daemon
            // that accepts the exec but never runs it.
            timeout: Duration::from_secs(10),
            limit: 4096,
            killable: false,
        };
        if let Err(e) = Box::pin(run(docker, container, job, &mut None, &mut report, &never)).await {
            // Under a fork bomb the killer may find no PID to start with.
            tracing::debug!(round, "the killer could not run: {e}");
        }
        let verdict = String::from_utf8_lossy(&report.stdout).trim().to_string();
        let ended = match exec_id {
            Some(id) => {
                let inspect = docker.inspect_exec(id).await?;
                inspect.running != Some(true) && inspect.exit_code.is_some()
            }
            // Never created: nothing can be running once nothing is found.
            None => verdict == "none",
        };
        if ended && verdict != "alive" {
            return Ok(());
        }
        tracing::debug!(round, verdict, "exec still running after the killer; trying again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The killer could not run or not finish, typically because a fork bomb
    // holds every PID the container may have. Restarting the container
    // kills every process in it; its files stay.
    tracing::warn!(
        container,
        "cannot kill a timed-out exec from inside; restarting the container"
    );
    let options = RestartContainerOptions {
        t: Some(0),
        signal: Some("SIGKILL".into()),
    };
    docker.restart_container(container, Some(options)).await
}

/// How long an internal script (a file operation) may run: they finish in
/// milliseconds; a minute covers deleting a very large tree.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a small internal script (file operations) as `user`, with its
/// arguments as argv, never interpolated. None when it ran past
/// [`SCRIPT_TIMEOUT`] and was killed.
pub async fn script(
    docker: &Docker,
    container: &str,
    user: &str,
    body: &'static str,
    args: &[&str],
    limit: usize,
) -> Result<Option<(i32, Collected)>, DockerError> {
    let mut out = Collected::default();
    let job = Job {
        script: body,
        args: args.iter().map(|a| a.to_string()).collect(),
        user: user.to_string(),
        env: vec![],
        stdin: None,
        timeout: SCRIPT_TIMEOUT,
        limit,
        killable: true,
    };
    match run(docker, container, job, &mut None, &mut out, &CancellationToken::new()).await? {
        Finished::Exited(code) => Ok(Some((code, out))),
        Finished::TimedOut | Finished::Cancelled => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_any_argument() {
        let table = [
            ("plain", "'plain'"),
            ("it's", r"'it'\''s'"),
            ("$HOME `id` \"x\"", "'$HOME `id` \"x\"'"),
            ("", "''"),
        ];
        for (arg, want) in table {
            assert_eq!(shell_quote(arg), want);
        }
    }

    #[test]
    fn output_past_the_cap_is_dropped_and_flagged() {
        let mut c = Collected::default();
        c.push(
            LogOutput::StdOut {
                message: "hello".into(),
            },
            3,
        );
        c.push(LogOutput::StdErr { message: "ab".into() }, 3);
        assert_eq!(c.stdout, b"hel");
        assert_eq!(c.stderr, b"ab");
        assert!(c.truncated);
    }

    #[test]
    fn a_sentinel_is_seen_even_past_the_cap() {
        let mut c = Collected::default();
        c.push(LogOutput::StdErr { message: "xxxx".into() }, 4);
        c.push(
            LogOutput::StdErr {
                message: OOM_SENTINEL.to_vec().into(),
            },
            4,
        );
        assert!(c.take_sentinel(OOM_SENTINEL));
        assert_eq!(c.stderr, b"xxxx");
        let mut c = Collected::default();
        c.push(
            LogOutput::StdErr {
                message: [b"oops".as_slice(), OOM_SENTINEL].concat().into(),
            },
            100,
        );
        assert!(c.take_sentinel(OOM_SENTINEL));
        assert_eq!(c.stderr, b"oops");
    }

    fn err(data: &[u8]) -> LogOutput {
        LogOutput::StdErr {
            message: data.to_vec().into(),
        }
    }

    fn sent(rx: &mut tokio::sync::mpsc::UnboundedReceiver<OutputChunk>) -> Vec<(StreamKind, Vec<u8>)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| (c.stream, c.data))
            .collect()
    }

    #[test]
    fn kept_output_is_teed_at_once_but_a_possible_sentinel_waits() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut c = Collected::with_tee(Some(tx));
        c.push(
            LogOutput::StdOut {
                message: "hello".into(),
            },
            4,
        );
        assert_eq!(sent(&mut rx), [(StreamKind::Stdout, b"hell".to_vec())]);
        // A NUL that starts no sentinel goes; one that may start one waits.
        c.push(err(b"a\0b\0stacy"), 100);
        assert_eq!(sent(&mut rx), [(StreamKind::Stderr, b"a\0b".to_vec())]);
        c.push(err(b"vm:nope"), 100);
        assert_eq!(sent(&mut rx), [(StreamKind::Stderr, b"\0stacyvm:nope".to_vec())]);
        c.push(err(b"x"), 100);
        c.push(err(OOM_SENTINEL), 100);
        assert_eq!(sent(&mut rx), [(StreamKind::Stderr, b"x".to_vec())]);
        assert!(c.take_sentinel(OOM_SENTINEL));
        let out = c.into_output(137, Duration::ZERO);
        assert_eq!(out.stderr, b"a\0b\0stacyvm:nopex");
        assert!(sent(&mut rx).is_empty(), "the sentinel is never sent");
    }

    #[test]
    fn stderr_held_for_a_sentinel_that_never_came_is_sent_at_the_end() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut c = Collected::with_tee(Some(tx));
        c.push(err(b"oops\0stacyvm:o"), 100);
        assert_eq!(sent(&mut rx), [(StreamKind::Stderr, b"oops".to_vec())]);
        assert!(!c.take_sentinel(OOM_SENTINEL));
        c.into_output(1, Duration::ZERO);
        assert_eq!(sent(&mut rx), [(StreamKind::Stderr, b"\0stacyvm:o".to_vec())]);
    }
}
