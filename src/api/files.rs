//! `/sandboxes/{id}/files...`: upload, download, list, move, chmod, stat,
//! glob and delete, with the same path rules for every provider.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, body_error};
use super::{AppState, status};
use crate::provider::FileEntry;
use crate::sandbox::parse_mode;

pub fn router(file_limit: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/sandboxes/{id}/files",
            get(read)
                .post(write)
                .put(upload)
                .delete(delete)
                .layer(DefaultBodyLimit::max(file_limit)),
        )
        .route("/sandboxes/{id}/files/list", get(list))
        .route("/sandboxes/{id}/files/move", post(rename))
        .route("/sandboxes/{id}/files/chmod", post(chmod))
        .route("/sandboxes/{id}/files/stat", get(stat))
        .route("/sandboxes/{id}/files/glob", get(glob))
}

#[derive(Deserialize)]
struct PathQuery {
    path: Option<String>,
    #[serde(default)]
    recursive: Option<String>,
}

fn required(path: Option<String>, name: &str) -> Result<String, ApiError> {
    path.filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("the {name} parameter is required")))
}

#[derive(Deserialize)]
struct WriteBody {
    path: String,
    content: String,
    mode: Option<String>,
    encoding: Option<String>,
}

async fn write(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<WriteBody>,
) -> Result<Response, ApiError> {
    let data = match body.encoding.as_deref() {
        None | Some("") | Some("utf-8") | Some("utf8") => body.content.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(body.content.as_bytes())
            .map_err(|e| ApiError::BadRequest(format!("content is not valid base64: {e}")))?,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown encoding {other:?}; use \"base64\" or leave it out"
            )));
        }
    };
    let mode = parse_mode(body.mode.as_deref().unwrap_or("0644"))?;
    required(Some(body.path.clone()), "path")?;
    state
        .service
        .write_file(&caller.tenant, &id, &body.path, data, mode)
        .await?;
    Ok(status("written"))
}

async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let path = required(q.path, "path")?;
    // Find the sandbox before reading a possibly large body.
    state.service.get(&caller.tenant, &id)?;
    let data = Bytes::from_request(req, &()).await.map_err(body_error)?;
    state
        .service
        .write_file(&caller.tenant, &id, &path, data.to_vec(), 0o644)
        .await?;
    Ok(status("written"))
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Response, ApiError> {
    let path = required(q.path, "path")?;
    let data = state.service.read_file(&caller.tenant, &id, &path).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Response, ApiError> {
    let path = required(q.path, "path")?;
    let recursive = match q.recursive.as_deref() {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "recursive must be true or false, not {other:?}"
            )));
        }
    };
    state.service.delete_file(&caller.tenant, &id, &path, recursive).await?;
    Ok(status("deleted"))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Json<Vec<FileEntry>>, ApiError> {
    let path = required(q.path, "path")?;
    Ok(Json(state.service.list_files(&caller.tenant, &id, &path).await?))
}

async fn stat(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Json<FileEntry>, ApiError> {
    let path = required(q.path, "path")?;
    Ok(Json(state.service.stat_file(&caller.tenant, &id, &path).await?))
}

#[derive(Deserialize)]
struct MoveBody {
    old_path: String,
    new_path: String,
}

async fn rename(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MoveBody>,
) -> Result<Response, ApiError> {
    let from = required(Some(body.old_path), "old_path")?;
    let to = required(Some(body.new_path), "new_path")?;
    state.service.move_file(&caller.tenant, &id, &from, &to).await?;
    Ok(status("moved"))
}

#[derive(Deserialize)]
struct ChmodBody {
    path: String,
    mode: String,
}

async fn chmod(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ChmodBody>,
) -> Result<Response, ApiError> {
    let path = required(Some(body.path), "path")?;
    state.service.chmod_file(&caller.tenant, &id, &path, &body.mode).await?;
    Ok(status("chmod applied"))
}

#[derive(Deserialize)]
struct GlobQuery {
    pattern: Option<String>,
}

async fn glob(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<GlobQuery>,
) -> Result<Json<Vec<String>>, ApiError> {
    let pattern = required(q.pattern, "pattern")?;
    Ok(Json(state.service.glob(&caller.tenant, &id, &pattern).await?))
}
