//! Code contexts: `/sandboxes/{id}/contexts...` (create, list, get, delete,
//! run, fork), the `/sandboxes/{id}/code` shorthand, and sandbox fork
//! (`/sandboxes/{id}/fork`).

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::exec::{Utf8Chunks, batch_output, error_json, ndjson};
use super::extract::{ApiJson, Caller};
use super::sandboxes::SandboxView;
use super::{AppState, status};
use crate::provider::contexts::CellOutput;
use crate::provider::{ExecIo, ProviderError};
use crate::sandbox::ServiceError;
use crate::sandbox::contexts::{CreateContext, RunCell};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandboxes/{id}/contexts", post(create).get(list))
        .route("/sandboxes/{id}/contexts/{ctx}", get(get_one).delete(delete))
        .route("/sandboxes/{id}/contexts/{ctx}/run", post(run))
        .route("/sandboxes/{id}/contexts/{ctx}/fork", post(fork_context))
        .route("/sandboxes/{id}/code", post(code))
        .route("/sandboxes/{id}/fork", post(fork_sandbox))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    language: String,
    image: Option<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let req = CreateContext {
        language: body.language,
        image: body.image,
        cwd: body.cwd,
        env: body.env,
    };
    let info = state.service.context_create(&caller.tenant, &id, req).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(state.service.context_list(&caller.tenant, &id).await?).into_response())
}

async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, ctx)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(state.service.context_get(&caller.tenant, &id, &ctx).await?).into_response())
}

async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, ctx)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state.service.context_delete(&caller.tenant, &id, &ctx).await?;
    Ok(status("deleted"))
}

async fn fork_context(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, ctx)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let info = state.service.context_fork(&caller.tenant, &id, &ctx).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    code: String,
    timeout: Option<String>,
    stdin: Option<String>,
    #[serde(default)]
    stream: bool,
}

async fn run(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, ctx)): Path<(String, String)>,
    ApiJson(body): ApiJson<RunBody>,
) -> Result<Response, ApiError> {
    run_in(state, caller, id, ctx, body).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
    language: Option<String>,
    context_id: Option<String>,
    timeout: Option<String>,
    stdin: Option<String>,
    #[serde(default)]
    stream: bool,
}

async fn code(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CodeBody>,
) -> Result<Response, ApiError> {
    let ctx = state
        .service
        .code_context(
            &caller.tenant,
            &id,
            body.language.as_deref(),
            body.context_id.as_deref(),
        )
        .await?;
    let run = RunBody {
        code: body.code,
        timeout: body.timeout,
        stdin: body.stdin,
        stream: body.stream,
    };
    let mut response = run_in(state, caller, id, ctx.clone(), run).await?;
    if let Ok(value) = ctx.parse() {
        response.headers_mut().insert("x-context-id", value);
    }
    Ok(response)
}

/// The answer of a run: 200 with the cell's output, result and error.
fn cell_json(out: &CellOutput) -> Value {
    json!({
        "stdout": String::from_utf8_lossy(&out.stdout),
        "stderr": String::from_utf8_lossy(&out.stderr),
        "result": out.result,
        "error": out.error,
        "duration_ms": (out.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0,
        "rolled_back": out.rolled_back,
        "truncated": out.truncated,
    })
}

/// Every cell stopped by a limit was rolled back: its error answer says so.
fn rolled_back(e: ServiceError) -> Response {
    let limited = matches!(
        e,
        ServiceError::Provider(
            ProviderError::Timeout { .. } | ProviderError::FuelExhausted { .. } | ProviderError::MemoryLimit { .. }
        )
    );
    let response = ApiError::from(e).into_response();
    if !limited {
        return response;
    }
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let extensions = parts.extensions.clone();
    let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(body, 16 << 20))
        .and_then(Result::ok)
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let Some(mut value) = body else {
        return (status, "").into_response();
    };
    value["rolled_back"] = json!(true);
    let mut response = (status, Json(value)).into_response();
    *response.extensions_mut() = extensions;
    response
}

async fn run_in(state: AppState, caller: Caller, id: String, ctx: String, body: RunBody) -> Result<Response, ApiError> {
    let req = RunCell {
        code: body.code,
        timeout: body.timeout,
        stdin: body.stdin.map(String::into_bytes),
    };
    let (sb, cell) = state.service.prepare_cell(&caller.tenant, &id, req)?;
    if !body.stream {
        return Ok(
            match state.service.context_run(sb, &ctx, cell, ExecIo::default()).await {
                Ok(out) => Json(cell_json(&out)).into_response(),
                Err(e) => rolled_back(e),
            },
        );
    }
    let (chunk_tx, raw_rx) = mpsc::unbounded_channel();
    let mut chunk_rx = batch_output(raw_rx);
    let (line_tx, line_rx) = mpsc::channel::<Bytes>(64);
    let service = state.service.clone();
    let task = tokio::spawn(async move {
        let io = ExecIo {
            output: Some(chunk_tx),
            ..ExecIo::default()
        };
        service.context_run(sb, &ctx, cell, io).await
    });
    tokio::spawn(async move {
        let mut decoder = Utf8Chunks::default();
        while let Some(chunk) = chunk_rx.recv().await {
            let data = decoder.decode(&chunk);
            if !data.is_empty() {
                let line = ndjson(&json!({"stream": chunk.stream, "data": data}));
                if line_tx.send(line).await.is_err() {
                    return;
                }
            }
        }
        let last = match task.await {
            Ok(Ok(out)) => json!({
                "result": out.result,
                "error": out.error,
                "duration_ms": (out.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0,
                "rolled_back": out.rolled_back,
            }),
            Ok(Err(e)) => {
                let limited = matches!(
                    e,
                    ServiceError::Provider(
                        ProviderError::Timeout { .. }
                            | ProviderError::FuelExhausted { .. }
                            | ProviderError::MemoryLimit { .. }
                    )
                );
                let mut v = error_json(e);
                v["rolled_back"] = json!(limited);
                v
            }
            Err(e) => error_json(ServiceError::Provider(ProviderError::Internal(e.into()))),
        };
        line_tx.send(ndjson(&last)).await.ok();
    });
    let body = futures_util::stream::unfold(line_rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ForkBody {
    ttl: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
}

async fn fork_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: `POST /fork` with none forks with the defaults.
    let body: ForkBody = if body.iter().all(u8::is_ascii_whitespace) {
        ForkBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?
    };
    let child = state
        .service
        .fork(&caller.tenant, &id, body.ttl.as_deref(), body.metadata)
        .await?;
    Ok((StatusCode::CREATED, Json(SandboxView::new(child, &state))).into_response())
}
