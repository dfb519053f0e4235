//! The HTTP API: one router per resource, the error type and the extractors.
//! Handlers parse and check input, call the sandbox service, and map the
//! result; they never touch wasmtime or Docker.

pub mod error;
mod events;
mod exec;
pub mod extract;
mod files;
mod preview;
mod sandboxes;
mod system;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use self::error::ApiError;
use crate::sandbox::SandboxService;
use crate::sandbox::id::TenantId;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<SandboxService>,
    /// API key → tenant; empty when auth is off.
    pub keys: Arc<Vec<(String, TenantId)>>,
    pub started: Instant,
    /// Forwards preview traffic into sandboxes.
    pub proxy: reqwest::Client,
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.service.settings().http.body_limit_bytes;
    let api = Router::new()
        .merge(sandboxes::router())
        .merge(exec::router())
        .merge(events::router())
        .merge(files::router(state.service.settings().http.file_limit_bytes))
        .merge(system::router());
    Router::new()
        .nest("/api/v1", api)
        .fallback(|req: Request| async move {
            ApiError::NotFound(format!("no route for {} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.uri().path()))
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), preview::by_host))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// One log line per request: method, route, status, latency. Headers (and
/// so API keys) are never logged.
async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(req).await;
    tracing::info!(
        %method,
        route,
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// `{"status": "..."}`, the body of simple acknowledgements.
pub fn status(s: &'static str) -> Response {
    axum::Json(serde_json::json!({ "status": s })).into_response()
}
