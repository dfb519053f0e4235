//! `/sandboxes`: create, get, list, delete, extend, exec, logs and stats.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller};
use super::{AppState, status};
use crate::sandbox::{CreateSandbox, ListFilter, Sandbox};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandboxes", post(create).get(list).delete(super::control::prune))
        .route("/sandboxes/{id}", get(get_one).delete(destroy))
        .route("/sandboxes/{id}/extend", post(extend))
        .route("/sandboxes/{id}/logs", get(logs))
        .route("/sandboxes/{id}/stats", get(stats))
        .route("/sandboxes/{id}/preview/{port}", any(super::preview::by_path))
        .route("/sandboxes/{id}/preview/{port}/{*rest}", any(super::preview::by_path))
}

/// The Sandbox object of API.md.
#[derive(Serialize)]
pub struct SandboxView {
    id: String,
    state: crate::sandbox::SandboxState,
    provider: String,
    image: String,
    memory_mb: u64,
    vcpus: u32,
    created_at: String,
    expires_at: String,
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preview_domain: Option<String>,
}

impl SandboxView {
    pub(super) fn new(sb: Sandbox, state: &AppState) -> Self {
        let mut view = SandboxView::from(sb);
        view.preview_domain = state.service.settings().preview_domain.clone();
        view
    }
}

impl From<Sandbox> for SandboxView {
    fn from(sb: Sandbox) -> Self {
        SandboxView {
            preview_domain: None,
            id: sb.id.to_string(),
            state: sb.state,
            provider: sb.provider,
            image: sb.image,
            memory_mb: sb.memory_mb,
            vcpus: sb.vcpus,
            created_at: humantime::format_rfc3339_seconds(sb.created_at).to_string(),
            expires_at: humantime::format_rfc3339_seconds(sb.expires_at).to_string(),
            metadata: sb.metadata,
            owner_id: sb.owner_id,
        }
    }
}

#[derive(Deserialize)]
struct CreateBody {
    image: Option<String>,
    provider: Option<String>,
    memory_mb: Option<u64>,
    vcpus: Option<u32>,
    ttl: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    owner_id: Option<String>,
    /// Spawn from this template (see `create`).
    template: Option<String>,
    /// Pure-Python packages to install before the create answers (wasm).
    #[serde(default)]
    packages: Vec<String>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    if let Some(name) = body.template.clone().filter(|t| !t.is_empty()) {
        return create_from_template(state, caller, name, body).await;
    }
    let owner = match caller.owner {
        Some(o) => Some(o),
        None => match body.owner_id.as_deref() {
            Some(raw) => crate::sandbox::id::OwnerId::parse(raw)
                .map_err(|m| ApiError::BadRequest(format!("invalid owner_id: {m}")))?,
            None => None,
        },
    };
    let req = CreateSandbox {
        image: body.image,
        provider: body.provider,
        memory_mb: body.memory_mb,
        vcpus: body.vcpus,
        ttl: body.ttl,
        metadata: body.metadata,
        owner_id: owner,
        packages: body.packages,
    };
    let sb = state.service.create(&caller.tenant, req).await?;
    Ok((StatusCode::CREATED, Json(SandboxView::new(sb, &state))).into_response())
}

/// A create that names a template spawns it: the template fixes the
/// provider, image, memory and vcpus, and the body may set `ttl`,
/// `metadata` (added to the template's) and `owner_id`. A `provider`,
/// `memory_mb` or `vcpus` that differs from the template's is refused; an
/// `image` is not looked at, because the StacyVM SDK's `spawn()` sends one
/// (`alpine:latest`) whether or not the caller chose it.
async fn create_from_template(
    state: AppState,
    caller: Caller,
    name: String,
    body: CreateBody,
) -> Result<Response, ApiError> {
    let template = state
        .service
        .template(&caller.tenant, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("template {name} not found")))?;
    let clashes = [
        (
            "provider",
            body.provider.as_ref().is_some_and(|p| *p != template.provider),
        ),
        ("memory_mb", body.memory_mb.is_some_and(|m| m != template.memory_mb)),
        ("vcpus", body.vcpus.is_some_and(|v| v != template.vcpus)),
    ];
    if let Some((field, _)) = clashes.iter().find(|(_, clash)| *clash) {
        return Err(ApiError::BadRequest(format!(
            "{field} is fixed by template {name}; leave it out or spawn without the template"
        )));
    }
    let owner_id = super::control::owner_of(&caller, body.owner_id.as_deref())?;
    let overrides = crate::sandbox::templates::SpawnOverrides {
        ttl: body.ttl,
        metadata: body.metadata,
        owner_id,
    };
    let sb = state.service.spawn_template(&caller.tenant, &name, overrides).await?;
    Ok((StatusCode::CREATED, Json(SandboxView::new(sb, &state))).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    owner_id: Option<String>,
    provider: Option<String>,
    state: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Json<Vec<SandboxView>> {
    let filter = ListFilter {
        owner_id: q.owner_id,
        provider: q.provider,
        state: q.state,
    };
    Json(
        state
            .service
            .list(&caller.tenant, &filter)
            .into_iter()
            .map(SandboxView::from)
            .collect(),
    )
}

async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    Ok(Json(SandboxView::new(state.service.get(&caller.tenant, &id)?, &state)))
}

async fn destroy(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    state.service.destroy(&caller.tenant, &id).await?;
    Ok(status("destroyed"))
}

#[derive(Deserialize)]
struct ExtendBody {
    ttl: String,
}

async fn extend(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ExtendBody>,
) -> Result<Json<SandboxView>, ApiError> {
    Ok(Json(SandboxView::new(
        state.service.extend(&caller.tenant, &id, &body.ttl)?,
        &state,
    )))
}

#[derive(Deserialize)]
struct LogsQuery {
    lines: Option<usize>,
}

async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(state.service.logs(&caller.tenant, &id, q.lines.unwrap_or(100))?))
}

async fn stats(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(state.service.stats(&caller.tenant, &id).await?).into_response())
}
