//! Black-box tests: the real server on port 0, real wasmtime running the
//! real CPython image, real HTTP over loopback.

mod admission;
mod audit;
mod cli;
mod contexts;
mod data;
mod docker;
mod doctor;
mod events;
mod exec;
mod files;
mod hardening;
mod helpers;
mod limits;
mod mcp;
mod ops;
mod packages;
mod pool;
mod provider_test;
mod prune;
mod python;
mod python_contexts;
mod quickjs;
mod quotas;
mod restart;
mod sandboxes;
mod schemathesis;
mod sdk;
mod shell;
mod shell_compat;
mod templates;
mod utilities;
