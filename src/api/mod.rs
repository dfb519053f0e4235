//! The HTTP API: one router per resource, the error type and the extractors.
//! Handlers parse and check input, call the sandbox service, and map the
//! result; they never touch wasmtime or Docker.

mod audit;
mod contexts;
mod control;
pub mod error;
mod events;
mod exec;
pub mod extract;
mod files;
mod preview;
mod sandboxes;
mod system;
mod templates;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;

use self::error::ApiError;
use crate::sandbox::SandboxService;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<SandboxService>,
    /// The configured API keys; empty when auth is off.
    pub keys: Arc<Vec<extract::KeyEntry>>,
    pub started: Instant,
    /// Forwards preview traffic into sandboxes.
    pub proxy: reqwest::Client,
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.service.settings().http.body_limit_bytes;
    let api = Router::new()
        .merge(sandboxes::router())
        .merge(exec::router())
        .merge(contexts::router())
        .merge(events::router())
        .merge(files::router(state.service.settings().http.file_limit_bytes))
        .merge(system::router())
        .merge(control::router())
        .merge(templates::router())
        .merge(audit::router());
    let rest = Router::new()
        .nest("/api/v1", api)
        .fallback(|req: Request| async move {
            ApiError::NotFound(format!("no route for {} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.uri().path()))
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), preview::by_host))
        .layer(axum::middleware::from_fn_with_state(state.clone(), redact_details))
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(axum::middleware::from_fn(catch_panic))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state.clone());
    // MCP's tools call the REST routes above in-process, as the caller.
    rest.clone().merge(crate::mcp::http_route(rest, state))
}

/// Error answers whose details only operators may read (a provider's
/// reason can name the Docker daemon's address) get their redacted form
/// for every other caller.
async fn redact_details(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let operator = extract::sees_whole_server(&parts, &state);
    let response = next.run(Request::from_parts(parts, body)).await;
    if operator {
        return response;
    }
    match response.extensions().get::<error::Redacted>() {
        Some(redacted) => ApiError::Unavailable(redacted.0.clone()).into_response(),
        None => response,
    }
}

/// A handler that panics answers 500 `internal` for its own request; the
/// connection, the other requests and the server go on. The service's
/// locks tolerate poisoning, so nothing stays locked by the panic.
async fn catch_panic(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".to_string());
            ApiError::Internal(anyhow::anyhow!("the handler of {method} {path} panicked: {what}")).into_response()
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    fn app() -> Router {
        Router::new()
            .route(
                "/boom",
                get(|| async {
                    if std::hint::black_box(true) {
                        panic!("a bug in a handler");
                    }
                    "never"
                }),
            )
            .route(
                "/boom-string",
                get(|| async {
                    let n = std::hint::black_box(3);
                    if n == 3 {
                        panic!("{n} bugs");
                    }
                    "never"
                }),
            )
            .route("/fine", get(|| async { "fine" }))
            .layer(axum::middleware::from_fn(catch_panic))
    }

    async fn call(app: &Router, path: &str) -> (u16, String) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_internal_and_the_router_keeps_serving() {
        let app = app();
        let internal = serde_json::json!({
            "code": "internal",
            "message": "an internal error occurred; the details are in the server log",
        });
        for path in ["/boom", "/boom-string"] {
            let (status, body) = call(&app, path).await;
            assert_eq!(status, 500, "{path}");
            assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), internal);
        }
        assert_eq!(call(&app, "/fine").await, (200, "fine".to_string()));
    }

    #[test]
    fn a_lock_poisoned_by_a_panic_still_locks() {
        let m = std::sync::Arc::new(std::sync::Mutex::new(1));
        let held = m.clone();
        std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("poisons the lock");
        })
        .join()
        .unwrap_err();
        assert!(m.is_poisoned());
        *crate::sandbox::lock(&m) += 1;
        assert_eq!(*crate::sandbox::lock(&m), 2);
    }
}
