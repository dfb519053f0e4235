//! Exec: `POST /sandboxes/{id}/exec` (whole result, or NDJSON streamed as the
//! command writes) and `GET /sandboxes/{id}/exec/ws` (interactive).

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use crate::duration;
use crate::provider::{ExecIo, ExecMode, ExecOutput, OutputChunk, StreamKind};
use crate::sandbox::{ExecRequest, SandboxService, ServiceError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandboxes/{id}/exec", post(exec))
        .route("/sandboxes/{id}/exec/ws", get(exec_ws))
}

#[derive(Deserialize)]
pub struct ExecBody {
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

impl ExecBody {
    fn into_request(self) -> Result<ExecRequest, ApiError> {
        let stdin = match (self.stdin, self.stdin_encoding.as_deref()) {
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
        Ok(ExecRequest {
            command: self.command,
            args: self.args,
            mode: self.mode,
            env: self.env,
            workdir: self.workdir,
            timeout: self.timeout,
            stdin,
        })
    }
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
    let stream = body.stream;
    let prepared = state.service.prepare_exec(&caller.tenant, &id, body.into_request()?)?;
    if !stream {
        let out = state.service.run_exec(prepared, ExecIo::default()).await?;
        return Ok(Json(ExecView::from(out)).into_response());
    }
    let (chunk_tx, raw_rx) = mpsc::unbounded_channel();
    let mut chunk_rx = batch_output(raw_rx);
    // A small bound: a client that stops reading stops the forwarding, not
    // the guest; a client that leaves stops the guest.
    let (line_tx, line_rx) = mpsc::channel::<Bytes>(64);
    let service = state.service.clone();
    let run = tokio::spawn(async move {
        let io = ExecIo {
            output: Some(chunk_tx),
            ..ExecIo::default()
        };
        service.run_exec(prepared, io).await
    });
    tokio::spawn(async move {
        let mut decoder = Utf8Chunks::default();
        while let Some(chunk) = chunk_rx.recv().await {
            let data = decoder.decode(&chunk);
            if !data.is_empty() {
                let line = ndjson(&json!({"stream": chunk.stream, "data": data}));
                if line_tx.send(line).await.is_err() {
                    // The client left: dropping the receiver stops the guest.
                    return;
                }
            }
        }
        let last = match run.await {
            Ok(Ok(out)) => json!({"exit_code": out.exit_code, "duration": duration::format(out.duration)}),
            Ok(Err(e)) => error_json(e),
            Err(e) => error_json(ServiceError::Provider(crate::provider::ProviderError::Internal(
                e.into(),
            ))),
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

/// How long to wait for the rest of a line: `print` writes the text and
/// the newline separately, and a client should get them as one chunk.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(5);

/// Regroups raw output into chunks of whole lines where it can, forwarding
/// them as soon as a line is complete (or after [`COALESCE`]). When the
/// returned receiver is dropped, the raw receiver is dropped too, which stops
/// the guest.
pub(super) fn batch_output(mut raw: mpsc::UnboundedReceiver<OutputChunk>) -> mpsc::Receiver<OutputChunk> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Notice a consumer that left even while the guest is silent.
            let first = tokio::select! {
                chunk = raw.recv() => match chunk {
                    Some(chunk) => chunk,
                    None => return,
                },
                _ = tx.closed() => return,
            };
            let mut batch = vec![first];
            // Bounded so a flood still flows in pieces.
            while batch.len() < 256 {
                let ends_line = batch.last().is_some_and(|c| c.data.ends_with(b"\n"));
                let next = if ends_line {
                    raw.try_recv().ok()
                } else {
                    tokio::time::timeout(COALESCE, raw.recv()).await.ok().flatten()
                };
                match next {
                    Some(chunk) => batch.push(chunk),
                    None => break,
                }
            }
            for chunk in merge_adjacent(batch) {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn merge_adjacent(batch: Vec<OutputChunk>) -> Vec<OutputChunk> {
    let mut out: Vec<OutputChunk> = Vec::new();
    for chunk in batch {
        match out.last_mut() {
            Some(last) if last.stream == chunk.stream => last.data.extend_from_slice(&chunk.data),
            _ => out.push(chunk),
        }
    }
    out
}

pub(super) fn ndjson(v: &Value) -> Bytes {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

/// `{"error": {"code", "message"}}` for an exec that failed after starting.
pub(super) fn error_json(e: ServiceError) -> Value {
    let api = ApiError::from(e);
    let (code, message) = api.code_and_message();
    json!({"error": {"code": code, "message": message}})
}

/// Turns output chunks into UTF-8 text without splitting a character that
/// straddles two chunks; invalid bytes become U+FFFD.
#[derive(Default)]
pub(super) struct Utf8Chunks {
    pending: [Vec<u8>; 2],
}

impl Utf8Chunks {
    pub(super) fn decode(&mut self, chunk: &OutputChunk) -> String {
        let pending = &mut self.pending[match chunk.stream {
            StreamKind::Stdout => 0,
            StreamKind::Stderr => 1,
        }];
        pending.extend_from_slice(&chunk.data);
        let keep = match std::str::from_utf8(pending) {
            Ok(_) => 0,
            // An incomplete character at the end waits for the next chunk.
            Err(e) if e.error_len().is_none() => pending.len() - e.valid_up_to(),
            Err(_) => 0,
        };
        let tail = pending.split_off(pending.len() - keep);
        let text = String::from_utf8_lossy(pending).into_owned();
        *pending = tail;
        text
    }
}

/// Interactive exec: `{"type":"start", ...exec request...}`, then
/// `{"type":"stdin","data"}` and `{"type":"stdin_close"}` from the client;
/// `{"type":"stdout"|"stderr","data"}` and `{"type":"exit","exit_code"}` (or
/// `{"type":"error","code","message"}`) from the server.
async fn exec_ws(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // Fail before the upgrade when the sandbox cannot be seen.
    state.service.get(&caller.tenant, &id)?;
    // A message is held whole in memory: the body limit bounds it as it
    // bounds any other request.
    let limit = state.service.settings().http.body_limit_bytes;
    Ok(ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| interactive(socket, state.service.clone(), caller, id, limit)))
}

/// Ends the session after a failed read; a message over the limit is told
/// so with close code 1009 (message too big).
async fn close_after(socket: &mut WebSocket, e: axum::Error, limit: usize) {
    if e.to_string().contains("Message too long") {
        let frame = CloseFrame {
            code: close_code::SIZE,
            reason: format!("a message is over the limit of {limit} bytes").into(),
        };
        socket.send(Message::Close(Some(frame))).await.ok();
    }
}

async fn send_json(socket: &mut WebSocket, v: Value) -> bool {
    socket.send(Message::Text(v.to_string().into())).await.is_ok()
}

async fn interactive(
    mut socket: WebSocket,
    service: std::sync::Arc<SandboxService>,
    caller: Caller,
    id: String,
    limit: usize,
) {
    let start = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => break text,
            Some(Err(e)) => return close_after(&mut socket, e, limit).await,
            Some(Ok(Message::Close(_))) | None => return,
            Some(Ok(_)) => continue,
        }
    };
    let prepared = serde_json::from_str::<Value>(&start)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON message: {e}")))
        .and_then(|v| {
            if v["type"] != "start" {
                return Err(ApiError::BadRequest(
                    "the first message must be {\"type\":\"start\", ...}".into(),
                ));
            }
            serde_json::from_value::<ExecBody>(v)
                .map_err(|e| ApiError::BadRequest(format!("invalid start message: {e}")))
        })
        .and_then(ExecBody::into_request)
        .and_then(|req| service.prepare_exec(&caller.tenant, &id, req).map_err(ApiError::from));
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            let (code, message) = e.code_and_message();
            send_json(&mut socket, json!({"type": "error", "code": code, "message": message})).await;
            return;
        }
    };
    // stdin flows through an in-memory pipe; 64 KiB is plenty of slack for
    // typed or pasted input.
    let (mut stdin_writer, stdin_reader) = tokio::io::duplex(64 * 1024);
    let (chunk_tx, raw_rx) = mpsc::unbounded_channel();
    let mut chunk_rx = batch_output(raw_rx);
    let runner = service.clone();
    let mut run = tokio::spawn(async move {
        let io = ExecIo {
            output: Some(chunk_tx),
            stdin: Some(Box::new(stdin_reader)),
            ..ExecIo::default()
        };
        runner.run_exec(prepared, io).await
    });
    let mut stdin_open = true;
    let mut decoder = Utf8Chunks::default();
    let mut output_open = true;
    let result = loop {
        tokio::select! {
            chunk = chunk_rx.recv(), if output_open => match chunk {
                Some(chunk) => {
                    let data = decoder.decode(&chunk);
                    let kind = match chunk.stream { StreamKind::Stdout => "stdout", StreamKind::Stderr => "stderr" };
                    if !data.is_empty() && !send_json(&mut socket, json!({"type": kind, "data": data})).await {
                        return; // Dropping the receiver stops the guest.
                    }
                }
                None => output_open = false,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                    match v["type"].as_str() {
                        Some("stdin") if stdin_open => {
                            let data = v["data"].as_str().unwrap_or_default().as_bytes().to_vec();
                            if stdin_writer.write_all(&data).await.is_err() {
                                stdin_open = false;
                            }
                        }
                        Some("stdin_close") => {
                            stdin_writer.shutdown().await.ok();
                            stdin_open = false;
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    // The client left: stop the program.
                    drop(chunk_rx);
                    run.abort();
                    return;
                }
                Some(Err(e)) => {
                    // The client sent what cannot be read: stop the program.
                    drop(chunk_rx);
                    run.abort();
                    return close_after(&mut socket, e, limit).await;
                }
                Some(Ok(_)) => {}
            },
            result = &mut run => break result,
        }
    };
    // Flush what the program wrote just before it ended.
    while let Some(chunk) = chunk_rx.recv().await {
        let data = decoder.decode(&chunk);
        let kind = match chunk.stream {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        };
        if !data.is_empty() {
            send_json(&mut socket, json!({"type": kind, "data": data})).await;
        }
    }
    let last = match result {
        Ok(Ok(out)) => json!({"type": "exit", "exit_code": out.exit_code, "duration": duration::format(out.duration)}),
        Ok(Err(e)) => {
            let mut v = error_json(e)["error"].clone();
            v["type"] = json!("error");
            v
        }
        Err(_) => json!({"type": "error", "code": "internal", "message": "the exec task failed"}),
    };
    send_json(&mut socket, last).await;
    socket.send(Message::Close(None)).await.ok();
}
