//! `/sandboxes`: create, get, list, delete, extend, exec, logs and stats.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller};
use super::{AppState, status};
use crate::duration;
use crate::provider::{ExecMode, ExecOutput};
use crate::sandbox::{CreateSandbox, ExecRequest, ListFilter, Sandbox};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(get_one).delete(destroy))
        .route("/sandboxes/{id}/extend", post(extend))
        .route("/sandboxes/{id}/exec", post(exec))
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
    fn new(sb: Sandbox, state: &AppState) -> Self {
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
    /// Sent by some clients; templates are not offered, so it must be empty.
    template: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    if body.template.as_deref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::BadRequest(
            "templates are not supported by this server".into(),
        ));
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
    };
    let sb = state.service.create(&caller.tenant, req).await?;
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
struct ExecBody {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    mode: ExecMode,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    timeout: Option<String>,
    stdin: Option<String>,
    /// `"base64"` when `stdin` is base64-encoded binary data.
    stdin_encoding: Option<String>,
    #[serde(default)]
    stream: bool,
}

/// The exec result of API.md.
#[derive(Serialize)]
struct ExecView {
    exit_code: i32,
    stdout: String,
    stderr: String,
    duration: String,
    duration_ms: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    trap: Option<String>,
}

impl From<ExecOutput> for ExecView {
    fn from(o: ExecOutput) -> Self {
        ExecView {
            exit_code: o.exit_code,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            duration: duration::format(o.duration),
            duration_ms: (o.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0,
            truncated: o.truncated,
            trap: o.trap,
        }
    }
}

async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ExecBody>,
) -> Result<Response, ApiError> {
    let stdin = match (body.stdin, body.stdin_encoding.as_deref()) {
        (None, _) => None,
        (Some(s), None | Some("utf-8") | Some("utf8")) => Some(s.into_bytes()),
        (Some(s), Some("base64")) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| ApiError::BadRequest(format!("stdin is not valid base64: {e}")))?,
        ),
        (Some(_), Some(other)) => {
            return Err(ApiError::BadRequest(format!(
                "unknown stdin_encoding {other:?}; use \"base64\""
            )));
        }
    };
    let req = ExecRequest {
        command: body.command,
        args: body.args,
        mode: body.mode,
        env: body.env,
        workdir: body.workdir,
        timeout: body.timeout,
        stdin,
    };
    let result = state.service.exec(&caller.tenant, &id, req).await;
    if !body.stream {
        return Ok(Json(ExecView::from(result?)).into_response());
    }
    // NDJSON framing of a finished run: output lines, then the exit code or
    // the error as the last line.
    let mut lines = vec![];
    let mut push_output = |out: &ExecOutput| {
        for (stream, data) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            if !data.is_empty() {
                lines.push(serde_json::json!({"stream": stream, "data": String::from_utf8_lossy(data)}));
            }
        }
    };
    match result {
        Ok(out) => {
            push_output(&out);
            lines.push(serde_json::json!({"exit_code": out.exit_code, "duration": duration::format(out.duration)}));
        }
        Err(e) => {
            let api: ApiError = e.into();
            let (code, message) = match &api {
                ApiError::Timeout(m, out) => {
                    push_output(out);
                    ("timeout", m.clone())
                }
                ApiError::ResourceLimit(m, Some(out)) => {
                    push_output(out);
                    ("resource_limit", m.clone())
                }
                // Errors before the command ran keep their status code.
                _ => return Err(api),
            };
            lines.push(serde_json::json!({"error": {"code": code, "message": message}}));
        }
    }
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
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
