//! Black-box tests: the real server on port 0, real wasmtime running the
//! real CPython image, real HTTP over loopback.

mod contexts;
mod data;
mod docker;
mod events;
mod exec;
mod files;
mod hardening;
mod helpers;
mod limits;
mod packages;
mod python;
mod quickjs;
mod restart;
mod sandboxes;
mod schemathesis;
mod sdk;
mod shell;
mod utilities;
