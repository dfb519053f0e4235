//! `/templates`: stored creates of the caller's tenant, and spawning them.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, Caller, body_error};
use super::sandboxes::SandboxView;
use super::{AppState, status};
use crate::sandbox::templates::{SpawnOverrides, TemplateInput};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/templates", post(save).get(list))
        .route("/templates/{name}", get(get_one).put(replace).delete(remove))
        .route("/templates/{name}/spawn", post(spawn))
}

/// `POST /templates`: 201 with a new template, 200 when it replaced one of
/// the same name (the StacyVM SDK's `save` creates or updates).
async fn save(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<TemplateInput>,
) -> Result<Response, ApiError> {
    let (template, created) = state.service.save_template(&caller.tenant, input)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(template)).into_response())
}

/// `PUT /templates/{name}`: creates or replaces the template of that name;
/// a `name` in the body must be the same.
async fn replace(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(mut body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let Some(fields) = body.as_object_mut() else {
        return Err(ApiError::BadRequest(
            "invalid JSON body: a JSON object is required".into(),
        ));
    };
    match fields.get("name") {
        None => {
            fields.insert("name".into(), name.clone().into());
        }
        Some(given) if given.as_str() == Some(name.as_str()) => {}
        Some(given) => {
            return Err(ApiError::BadRequest(format!(
                "the body names template {given}, but the path names {name:?}"
            )));
        }
    }
    let input: TemplateInput =
        serde_json::from_value(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let (template, created) = state.service.save_template(&caller.tenant, input)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(template)).into_response())
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    Ok(Json(state.service.templates(&caller.tenant)?).into_response())
}

async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let template = state
        .service
        .template(&caller.tenant, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("template {name} not found")))?;
    Ok(Json(template).into_response())
}

async fn remove(State(state): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<Response, ApiError> {
    state.service.delete_template(&caller.tenant, &name)?;
    Ok(status("deleted"))
}

/// What a spawn may change; the body is optional (the SDK sends none).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SpawnBody {
    ttl: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    owner_id: Option<String>,
}

/// `POST /templates/{name}/spawn`: 201 with a sandbox whose files are
/// written and whose setup commands have run.
async fn spawn(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let overrides: SpawnBody = if body.iter().all(u8::is_ascii_whitespace) {
        SpawnBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let owner_id = super::control::owner_of(&caller, overrides.owner_id.as_deref())?;
    let sandbox = state
        .service
        .spawn_template(
            &caller.tenant,
            &name,
            SpawnOverrides {
                ttl: overrides.ttl,
                metadata: overrides.metadata,
                owner_id,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(SandboxView::new(sandbox, &state))).into_response())
}
