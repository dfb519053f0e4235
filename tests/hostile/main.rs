//! Hostile tests: every attack of the hardening review, and variants of
//! them, each sent to a live server. Every test asserts three things: the
//! server is still up, the answer is a 4xx or a 200 with a non-zero exit
//! (never a 5xx), and the limit held, checked on the host.

mod api;
mod contexts;
mod data;
mod docker;
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
mod packages;
mod random;
mod sdk;
#[allow(dead_code)]
mod support;
mod utilities;
mod wasm;
