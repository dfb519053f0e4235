//! Health, liveness, readiness and the provider list.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{Caller, Viewer};
use crate::duration;
use crate::provider::{Capabilities, ProviderStatus};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/providers", get(providers))
        .route("/providers/{name}", get(provider))
        .route("/metrics/prometheus", get(metrics))
        .route("/openapi.json", get(openapi))
}

async fn health(State(state): State<AppState>) -> Response {
    let uptime = std::time::Duration::from_secs(state.started.elapsed().as_secs());
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": duration::format(uptime),
    }))
    .into_response()
}

async fn live() -> Response {
    (StatusCode::OK, Json(serde_json::json!({"status": "alive"}))).into_response()
}

async fn ready(State(state): State<AppState>) -> Result<Response, ApiError> {
    if state.service.any_provider_available() {
        Ok(Json(serde_json::json!({"status": "ready"})).into_response())
    } else {
        Err(ApiError::Unavailable("no provider is available".into()))
    }
}

#[derive(Serialize)]
struct ProviderView {
    name: String,
    available: bool,
    default: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    images: Vec<String>,
    capabilities: Capabilities,
}

/// Why a provider is unavailable can name the daemon's address (a socket
/// path, a host and port): only operators read it, others get a generic
/// reason.
fn view((status, default): (ProviderStatus, bool), viewer: &Viewer) -> ProviderView {
    let reason = match status.reason {
        Some(reason) if viewer.sees_whole_server() => Some(reason),
        Some(_) => Some(format!(
            "the {} provider is unavailable; an operator can see why",
            status.name
        )),
        None => None,
    };
    ProviderView {
        name: status.name,
        available: status.available,
        default,
        reason,
        images: status.images,
        capabilities: status.capabilities,
    }
}

async fn providers(State(state): State<AppState>, viewer: Viewer) -> Json<Vec<ProviderView>> {
    Json(
        state
            .service
            .provider_statuses()
            .into_iter()
            .map(|p| view(p, &viewer))
            .collect(),
    )
}

async fn provider(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Result<Json<ProviderView>, ApiError> {
    state
        .service
        .provider_statuses()
        .into_iter()
        .find(|(s, _)| s.name == name)
        .map(|p| Json(view(p, &viewer)))
        .ok_or_else(|| ApiError::NotFound(format!("provider {name} not found")))
}

/// Operators see the whole server; any other key sees its own tenant's
/// figures only.
async fn metrics(State(state): State<AppState>, caller: Caller) -> Response {
    let scope = (!caller.role.sees_whole_server()).then_some(&caller.tenant);
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.service.metrics_text(scope),
    )
        .into_response()
}

/// The machine-readable form of docs/API.md, kept beside it.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
