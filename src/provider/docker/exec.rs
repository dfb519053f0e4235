//! Running commands in a container through `docker exec`, and stopping
//! them for good when they run past their deadline.
//!
//! Killing the client side of an exec leaves the process running, and the
//! Engine API has no call to kill one exec. So every user command runs under
//! [`WRAPPER`], a tiny `sh` whose argv carries a unique tag; on timeout a
//! second exec ([`KILLER`]) finds the wrapper by that tag, freezes it and
//! every descendant and group member with SIGSTOP, kills them all with
//! SIGKILL, and waits until none is left.

use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::RestartContainerOptions;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::provider::{ExecMode, ExecOutput, ExecSpec};

/// Runs the user's command (`$2...`) in the workdir (`$1`). A workdir that
/// cannot be entered is reported with a sentinel on stderr and exit 125,
/// before any user code runs. When the command dies of SIGKILL (137) and
/// the container's memory cgroup counted a new OOM kill meanwhile, the
/// wrapper appends [`OOM_SENTINEL`] to stderr. `$0` is the tag.
const WRAPPER: &str = r#"if ! cd -- "$1" 2>/dev/null; then
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

/// Kills every process of one exec: `$1` is a regex matching the wrapper's
/// tag but not itself (`[s]tacyvm-exec-...`), so neither this script nor
/// its grep is a match. Prints `none`, `killed`, or `alive`.
const KILLER: &str = r#"pat=$1
roots=
for f in $(grep -l -e "$pat" /proc/[0-9]*/cmdline 2>/dev/null); do p=${f#/proc/}; roots="$roots ${p%/cmdline}"; done
[ -z "$roots" ] && { echo none; exit 0; }
found=" $roots "
collect() {
  changed=1
  while [ "$changed" = 1 ]; do
    changed=0
    for d in /proc/[0-9]*; do
      p=${d#/proc/}
      case "$found" in *" $p "*) continue ;; esac
      read -r line < "$d/stat" 2>/dev/null || continue
      set -- ${line##*') '}
      case "$found" in *" $2 "*) found="$found$p "; changed=1; continue ;; esac
      case " $roots " in *" $3 "*) found="$found$p "; changed=1 ;; esac
    done
  done
}
collect; kill -STOP $found 2>/dev/null
collect; kill -STOP $found 2>/dev/null
collect; kill -KILL $found 2>/dev/null
i=0
while [ $i -lt 200 ]; do
  alive=
  for p in $found; do
    read -r line < /proc/$p/stat 2>/dev/null || continue
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

/// Output gathered so far; kept outside the running future so a timeout
/// still has the partial output.
#[derive(Default)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    /// The last bytes of stderr, kept even past the cap.
    pub stderr_tail: Vec<u8>,
}

impl Collected {
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
        buf.extend_from_slice(&data[..data.len().min(room)]);
        if is_err {
            self.stderr_tail.extend_from_slice(&data);
            let excess = self.stderr_tail.len().saturating_sub(TAIL_BYTES);
            self.stderr_tail.drain(..excess);
        }
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

    pub fn into_output(self, exit_code: i32, duration: Duration) -> ExecOutput {
        ExecOutput {
            exit_code,
            stdout: self.stdout,
            stderr: self.stderr,
            truncated: self.truncated,
            duration,
            trap: None,
        }
    }
}

/// A finished user command, or one stopped at its deadline.
pub enum Finished {
    Exited(i32),
    TimedOut,
}

/// POSIX single-quoting, safe for any byte string.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The argv a user exec runs in the container, and its tag.
pub fn user_argv(spec: &ExecSpec) -> (Vec<String>, String) {
    let tag = format!("stacyvm-exec-{}", hex::encode(rand::random::<[u8; 12]>()));
    let mut argv = vec![
        "/bin/sh".into(),
        "-c".into(),
        WRAPPER.into(),
        tag.clone(),
        spec.workdir.to_string(),
    ];
    match spec.mode {
        ExecMode::Argv => {
            argv.push(spec.command.clone());
            argv.extend(spec.args.iter().cloned());
        }
        ExecMode::Shell => {
            let mut line = spec.command.clone();
            for arg in &spec.args {
                line.push(' ');
                line.push_str(&shell_quote(arg));
            }
            argv.extend(["/bin/sh".into(), "-c".into(), line]);
        }
    }
    (argv, tag)
}

type OutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;

/// Creates and starts an exec; stdin, if any, is written and closed by a
/// task of its own so a program that writes before reading cannot deadlock.
async fn start(
    docker: &Docker,
    container: &str,
    argv: Vec<String>,
    env: Vec<String>,
    stdin: Option<Vec<u8>>,
    exec_id: &mut Option<String>,
) -> Result<OutputStream, DockerError> {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdin: Some(stdin.is_some()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(argv),
                env: Some(env),
                ..Default::default()
            },
        )
        .await?;
    *exec_id = Some(created.id.clone());
    match docker.start_exec(&created.id, None).await? {
        StartExecResults::Attached { output, mut input } => {
            if let Some(data) = stdin {
                tokio::spawn(async move {
                    // A program that exits without reading its input closes
                    // the pipe; that is not an error.
                    input.write_all(&data).await.ok();
                    input.shutdown().await.ok();
                });
            }
            Ok(output)
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

/// One command to run.
pub struct Job {
    pub argv: Vec<String>,
    /// The wrapper's tag; without one a timed-out command is not killed.
    pub tag: Option<String>,
    pub env: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Bytes kept of each of stdout and stderr.
    pub limit: usize,
}

/// Runs the job to completion or until its timeout; on timeout every
/// process of the exec is killed before this returns.
pub async fn run(docker: &Docker, container: &str, job: Job, out: &mut Collected) -> Result<Finished, DockerError> {
    let mut guard = KillOnDrop {
        docker: docker.clone(),
        container: container.to_string(),
        tag: job.tag.clone(),
        exec_id: None,
    };
    let Job {
        argv,
        tag,
        env,
        stdin,
        timeout,
        limit,
    } = job;
    let attempt = tokio::time::timeout(timeout, async {
        let output = start(docker, container, argv, env, stdin, &mut guard.exec_id).await?;
        drain(output, limit, out).await
    })
    .await;
    let exec_id = guard.disarm();
    match attempt {
        Ok(result) => {
            result?;
            let id = exec_id.expect("a started exec has an id");
            Ok(Finished::Exited(exit_code(docker, &id).await?))
        }
        Err(_) => {
            if let Some(tag) = tag {
                kill(docker, container, &tag, exec_id.as_deref()).await?;
            }
            Ok(Finished::TimedOut)
        }
    }
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

/// Kills every process of the exec tagged `tag` and waits until the daemon
/// sees it ended.
async fn kill(docker: &Docker, container: &str, tag: &str, exec_id: Option<&str>) -> Result<(), DockerError> {
    let (first, rest) = tag.split_at(1);
    let pattern = format!("[{first}]{rest}");
    for round in 0..KILL_ROUNDS {
        let mut report = Collected::default();
        let job = Job {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                KILLER.into(),
                "stacyvm-kill".into(),
                pattern.clone(),
            ],
            tag: None,
            env: vec![],
            stdin: None,
            // The killer is quick; ten seconds only guards against a daemon
            // that accepts the exec but never runs it.
            timeout: Duration::from_secs(10),
            limit: 4096,
        };
        if let Err(e) = Box::pin(run(docker, container, job, &mut report)).await {
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

/// Runs a small internal script (file operations) with its arguments as
/// argv, never interpolated.
pub async fn script(
    docker: &Docker,
    container: &str,
    body: &str,
    args: &[&str],
    limit: usize,
) -> Result<(i32, Collected), DockerError> {
    let mut argv = vec!["/bin/sh".to_string(), "-c".into(), body.into(), "stacyvm".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut out = Collected::default();
    let job = Job {
        argv,
        tag: None,
        env: vec![],
        stdin: None,
        // File operations finish in milliseconds; a minute covers deleting
        // a very large tree.
        timeout: Duration::from_secs(60),
        limit,
    };
    match run(docker, container, job, &mut out).await? {
        Finished::Exited(code) => Ok((code, out)),
        Finished::TimedOut => Err(DockerError::DockerStreamError {
            error: "a file operation ran past one minute".into(),
        }),
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
}
