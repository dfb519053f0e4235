//! The MCP server itself: the tools a model calls and the sandbox files it
//! reads as resources. Each tool is one or two REST calls (see
//! [`super::rest`]); a REST error becomes a tool error (`is_error: true`)
//! whose text is the REST API's one-sentence message.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Extensions, Implementation, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::rest::{Backend, Call, Credentials, Failure, decode_path, encode_path, query_value};
use crate::sandbox::lock;

/// Resource URIs: `stacyvm://sandbox/{id}/files/{path}`, where `path` is the
/// absolute sandbox path without its leading `/`, percent-encoded.
const RESOURCE_PREFIX: &str = "stacyvm://sandbox/";

/// Bounds of a resource listing, which walks every sandbox of the tenant:
/// enough for a model to find its files, and a bounded cost per listing.
const MAX_LISTED_RESOURCES: usize = 500;
const MAX_LISTED_DIRECTORIES: usize = 100;

/// What an MCP session knows: where the REST API is, who it acts for, and
/// the sandboxes it made. A session is one stdio connection, or one
/// streamable-HTTP session; a stateless HTTP request has none to keep.
pub struct Session {
    backend: Backend,
    /// The credentials of every call (stdio); `None` takes them from each
    /// HTTP request's headers instead.
    fixed: Option<Credentials>,
    state: Mutex<SessionState>,
    /// Held while the default sandbox is made, so two concurrent calls
    /// without a `sandbox_id` share one sandbox.
    creating_default: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct SessionState {
    /// Sandboxes this session made without a TTL, destroyed when it ends.
    owned: Vec<(String, Credentials)>,
    /// The sandbox calls without a `sandbox_id` use.
    default_sandbox: Option<String>,
    /// `(sandbox, language)` whose contexts answered 422 `unsupported`, so
    /// later cells go straight to a plain exec.
    no_contexts: HashSet<(String, String)>,
}

impl Session {
    pub fn new(backend: Backend, fixed: Option<Credentials>) -> Arc<Session> {
        Arc::new(Session {
            backend,
            fixed,
            state: Mutex::new(SessionState::default()),
            creating_default: tokio::sync::Mutex::new(()),
        })
    }

    /// Destroys the sandboxes this session made without a TTL.
    pub async fn close(&self) {
        let owned = std::mem::take(&mut lock(&self.state).owned);
        for (id, who) in owned {
            if let Err(f) = self.backend.send(&who, Call::delete(format!("/sandboxes/{id}"))).await {
                tracing::warn!(sandbox = %id, error = %f.message(), "cannot destroy a sandbox of a closed MCP session");
            }
        }
    }
}

impl Drop for Session {
    /// A session that ends without [`Session::close`] (an HTTP session
    /// that was deleted or timed out) destroys its sandboxes in the
    /// background.
    fn drop(&mut self) {
        let owned = std::mem::take(&mut lock(&self.state).owned);
        if owned.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = self.backend.clone();
        runtime.spawn(async move {
            for (id, who) in owned {
                backend.send(&who, Call::delete(format!("/sandboxes/{id}"))).await.ok();
            }
        });
    }
}

/// Who a tool call acts for, and whether it belongs to a session that can
/// keep a default sandbox and clean up after itself.
struct Caller {
    who: Credentials,
    in_session: bool,
}

/// The MCP handler: one per session (stdio connection, HTTP session, or
/// stateless HTTP request).
pub struct SandboxTools {
    session: Arc<Session>,
    tool_router: ToolRouter<SandboxTools>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateSandboxArgs {
    /// `wasm` (WebAssembly, starts in microseconds; the server's default) or `docker` (a container, when the server has Docker).
    pub provider: Option<String>,
    /// The image. wasm: `python:3.14` (default), `python:3.15` (numpy, pandas), `python:3.12`, `javascript`. docker: a Docker image such as `python:3.12-slim`.
    pub image: Option<String>,
    /// How long the sandbox lives, Go duration syntax (`30m`, `2h`). With a TTL the sandbox outlives this MCP session until it expires; without one it is destroyed when the session ends.
    pub ttl: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Javascript,
}

impl Language {
    fn as_str(&self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunCodeArgs {
    /// `python` or `javascript`.
    pub language: Language,
    /// The code to run. The value of the last expression is returned as `result`, as in a notebook cell.
    pub code: String,
    /// The sandbox to run in; omitted, this session's own sandbox is used (made on first use).
    pub sandbox_id: Option<String>,
    /// A context (a kept interpreter) of that sandbox; omitted, the sandbox's default context for the language.
    pub context_id: Option<String>,
    /// Time limit, Go duration syntax (`10s`, `2m`); the server's default when omitted.
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunCommandArgs {
    /// A shell command line, for example `ls -la | wc -l` or `python3 script.py`.
    pub command: String,
    /// The sandbox to run in; omitted, this session's own sandbox is used (made on first use).
    pub sandbox_id: Option<String>,
    /// Working directory; `/workspace` when omitted.
    pub workdir: Option<String>,
    /// Time limit, Go duration syntax (`10s`, `2m`); the server's default when omitted.
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WriteFileArgs {
    /// Path in the sandbox; a relative path is below `/workspace`. Parent directories are created.
    pub path: String,
    /// The file's content: UTF-8 text, or base64 when `encoding` is `base64`.
    pub content: String,
    /// `base64` for binary content; text when omitted.
    pub encoding: Option<String>,
    /// The sandbox; omitted, this session's own sandbox.
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReadFileArgs {
    /// Path in the sandbox; a relative path is below `/workspace`.
    pub path: String,
    /// The sandbox; omitted, this session's own sandbox.
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ListFilesArgs {
    /// Directory in the sandbox; `/workspace` when omitted.
    pub path: Option<String>,
    /// The sandbox; omitted, this session's own sandbox.
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct InstallPackagesArgs {
    /// Pure-Python packages as pip requirements: `NAME`, `NAME==1.2`, `NAME>=1,<2`, `NAME[extra]`.
    pub packages: Vec<String>,
    /// The sandbox (a wasm sandbox with a Python); omitted, this session's own sandbox.
    pub sandbox_id: Option<String>,
    /// Time limit, Go duration syntax; the server's default when omitted.
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SandboxIdArgs {
    /// The sandbox's id (`sb_...`).
    pub sandbox_id: String,
}

/// A REST failure as an MCP tool error: the message first, then any partial
/// output the REST body carried, and the whole body as structured content.
fn tool_error(f: &Failure) -> CallToolResult {
    let mut content = vec![ContentBlock::text(f.message())];
    for stream in ["stdout", "stderr"] {
        if let Some(s) = f.body[stream].as_str().filter(|s| !s.is_empty()) {
            content.push(ContentBlock::text(format!("{stream} before it stopped:\n{s}")));
        }
    }
    let mut result = CallToolResult::error(content);
    result.structured_content = Some(f.body.clone());
    result
}

fn success(text: String, structured: Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(structured);
    result
}

/// The readable text of a run: output, result, error and exit code.
fn describe_run(run: &Value) -> String {
    let mut parts = vec![];
    for (key, label) in [("stdout", "stdout"), ("stderr", "stderr")] {
        if let Some(s) = run[key].as_str().filter(|s| !s.is_empty()) {
            parts.push(format!("{label}:\n{s}"));
        }
    }
    if let Some(r) = run["result"]["text/plain"].as_str() {
        parts.push(format!("result: {r}"));
    }
    if let Some(e) = run["error"].as_object() {
        let name = e.get("name").and_then(Value::as_str).unwrap_or("Error");
        let value = e.get("value").and_then(Value::as_str).unwrap_or("");
        let traceback = e.get("traceback").and_then(Value::as_str).unwrap_or("");
        parts.push(format!("error: {name}: {value}\n{traceback}").trim_end().to_string());
    }
    if let Some(code) = run["exit_code"].as_i64() {
        parts.push(format!("exit code: {code}"));
    }
    if run["truncated"] == true {
        parts.push("(output was cut at the server's limit)".to_string());
    }
    parts.push(format!("(sandbox {})", run["sandbox_id"].as_str().unwrap_or("?")));
    parts.join("\n")
}

/// The elements of a JSON array; none for anything else.
fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A sandbox path from a resource URI, or None when `uri` is not one.
fn parse_resource_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix(RESOURCE_PREFIX)?;
    let (id, path) = rest.split_once("/files/")?;
    if id.is_empty() || id.contains('/') || path.is_empty() {
        return None;
    }
    Some((id.to_string(), format!("/{}", decode_path(path)?)))
}

fn resource_uri(id: &str, path: &str) -> String {
    format!(
        "{RESOURCE_PREFIX}{id}/files/{}",
        encode_path(path.trim_start_matches('/'))
    )
}

/// The MIME type a file's name suggests, for the types a model can use.
fn mime_of(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "html" => "text/html",
        "md" => "text/markdown",
        "csv" => "text/csv",
        _ => "text/plain",
    }
}

impl SandboxTools {
    pub fn new(session: Arc<Session>) -> SandboxTools {
        SandboxTools {
            session,
            tool_router: Self::tool_router(),
        }
    }

    fn caller(&self, extensions: &Extensions) -> Caller {
        if let Some(who) = &self.session.fixed {
            return Caller {
                who: who.clone(),
                in_session: true,
            };
        }
        let Some(parts) = extensions.get::<axum::http::request::Parts>() else {
            return Caller {
                who: Credentials::default(),
                in_session: true,
            };
        };
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Caller {
            who: Credentials {
                api_key: header("x-api-key"),
                user_id: header("x-user-id"),
            },
            // A streamable-HTTP session names itself on every request after
            // the handshake; a stateless request has nothing to come back to.
            in_session: parts.headers.contains_key("mcp-session-id"),
        }
    }

    async fn send(&self, caller: &Caller, call: Call) -> Result<super::rest::Answer, Failure> {
        self.session.backend.send(&caller.who, call).await
    }

    async fn create(&self, caller: &Caller, body: Value, keep: bool) -> Result<Value, Failure> {
        let sandbox = self.send(caller, Call::post("/sandboxes", body)).await?.json();
        let id = sandbox["id"].as_str().unwrap_or_default().to_string();
        if caller.in_session && !keep {
            lock(&self.session.state).owned.push((id, caller.who.clone()));
        }
        Ok(sandbox)
    }

    /// The sandbox a call runs in: the one it names, or the session's own,
    /// made on first use. Returns the id and whether it was named.
    async fn sandbox_for(&self, caller: &Caller, given: Option<String>) -> Result<(String, bool), Failure> {
        if let Some(id) = given {
            return Ok((id, true));
        }
        if !caller.in_session {
            let sandbox = self.create(caller, json!({}), true).await?;
            return Ok((sandbox["id"].as_str().unwrap_or_default().to_string(), false));
        }
        let _creating = self.session.creating_default.lock().await;
        if let Some(id) = lock(&self.session.state).default_sandbox.clone() {
            return Ok((id, false));
        }
        let sandbox = self.create(caller, json!({}), false).await?;
        let id = sandbox["id"].as_str().unwrap_or_default().to_string();
        lock(&self.session.state).default_sandbox = Some(id.clone());
        Ok((id, false))
    }

    /// Runs `work` in the call's sandbox. When the session's own sandbox is
    /// gone (its TTL ran out), a new one is made and `work` runs once more.
    async fn in_sandbox<F, Fut>(&self, caller: &Caller, given: Option<String>, work: F) -> CallToolResult
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<CallToolResult, Failure>>,
    {
        let (id, named) = match self.sandbox_for(caller, given.clone()).await {
            Ok(v) => v,
            Err(f) => return tool_error(&f),
        };
        match work(id.clone()).await {
            Ok(r) => r,
            Err(f) if !named && f.status == 404 && f.message() == format!("sandbox {id} not found") => {
                {
                    let mut state = lock(&self.session.state);
                    if state.default_sandbox.as_deref() == Some(id.as_str()) {
                        state.default_sandbox = None;
                    }
                }
                match self.sandbox_for(caller, None).await {
                    Ok((id, _)) => work(id).await.unwrap_or_else(|f| tool_error(&f)),
                    Err(f) => tool_error(&f),
                }
            }
            Err(f) => tool_error(&f),
        }
    }

    async fn exec(&self, caller: &Caller, id: &str, body: Value) -> Result<CallToolResult, Failure> {
        let mut run = self
            .send(caller, Call::post(format!("/sandboxes/{id}/exec"), body))
            .await?
            .json();
        run["sandbox_id"] = json!(id);
        Ok(success(describe_run(&run), run))
    }

    async fn run_cell(&self, caller: &Caller, id: &str, args: &RunCodeArgs) -> Result<CallToolResult, Failure> {
        let language = args.language.as_str();
        let key = (id.to_string(), language.to_string());
        let contexts = !lock(&self.session.state).no_contexts.contains(&key);
        if contexts || args.context_id.is_some() {
            let mut body = json!({"code": args.code, "language": language});
            if let Some(ctx) = &args.context_id {
                body["context_id"] = json!(ctx);
            }
            if let Some(t) = &args.timeout {
                body["timeout"] = json!(t);
            }
            match self
                .send(caller, Call::post(format!("/sandboxes/{id}/code"), body))
                .await
            {
                Ok(answer) => {
                    let mut run = answer.json();
                    let context = answer
                        .headers
                        .get("x-context-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    run["sandbox_id"] = json!(id);
                    run["context_id"] = json!(context);
                    run["exit_code"] = json!(if run["error"].is_null() { 0 } else { 1 });
                    let mut result = success(describe_run(&run), run.clone());
                    if let Some(png) = run["result"]["image/png"].as_str() {
                        result.content.push(ContentBlock::image(png, "image/png"));
                    }
                    return Ok(result);
                }
                Err(f) if f.status == 422 && f.code() == "unsupported" && args.context_id.is_none() => {
                    lock(&self.session.state).no_contexts.insert(key);
                }
                Err(f) => return Err(f),
            }
        }
        // No kept interpreter for this language here: a fresh one per run;
        // what persists between runs is the sandbox's files.
        let (program, flag) = match args.language {
            Language::Python => ("python3", "-c"),
            Language::Javascript => ("node", "-e"),
        };
        let mut body = json!({"command": program, "args": [flag, args.code], "mode": "argv"});
        if let Some(t) = &args.timeout {
            body["timeout"] = json!(t);
        }
        let mut result = self.exec(caller, id, body).await?;
        if let Some(run) = result.structured_content.as_mut() {
            run["context_id"] = Value::Null;
        }
        Ok(result)
    }
}

#[tool_router]
impl SandboxTools {
    #[tool(
        description = "Create a sandbox: an isolated machine where code runs. Returns the sandbox, whose `id` the other tools take as `sandbox_id`; it also becomes this session's default sandbox. You rarely need this: `run_code` and `run_command` make a sandbox on first use."
    )]
    async fn create_sandbox(
        &self,
        Parameters(args): Parameters<CreateSandboxArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&extensions);
        let mut body = json!({});
        for (key, value) in [("provider", &args.provider), ("image", &args.image), ("ttl", &args.ttl)] {
            if let Some(v) = value {
                body[key] = json!(v);
            }
        }
        Ok(match self.create(&caller, body, args.ttl.is_some()).await {
            Ok(sandbox) => {
                let id = sandbox["id"].as_str().unwrap_or_default().to_string();
                if caller.in_session {
                    lock(&self.session.state).default_sandbox = Some(id.clone());
                }
                let text = format!(
                    "created sandbox {id} ({} {}), expires at {}",
                    sandbox["provider"].as_str().unwrap_or("?"),
                    sandbox["image"].as_str().unwrap_or("?"),
                    sandbox["expires_at"].as_str().unwrap_or("?")
                );
                success(text, sandbox)
            }
            Err(f) => tool_error(&f),
        })
    }

    #[tool(
        description = "Run Python or JavaScript code in a sandbox and return its stdout, stderr, exit code, error (name, value, traceback) and the value of the last expression as a MIME bundle (`text/plain`, `image/png`, ...). JavaScript runs in a kept interpreter: variables and functions defined by one call are there in the next call of the same sandbox. Python runs in a kept interpreter where the server offers one, otherwise in a fresh interpreter each call; files written to the sandbox always stay. Without `sandbox_id` the session's own sandbox is used."
    )]
    async fn run_code(
        &self,
        Parameters(args): Parameters<RunCodeArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&extensions);
        let given = args.sandbox_id.clone();
        Ok(self
            .in_sandbox(&caller, given, |id| {
                let (caller, args) = (&caller, &args);
                async move { self.run_cell(caller, &id, args).await }
            })
            .await)
    }

    #[tool(
        description = "Run a shell command line in a sandbox (pipes, redirections, `&&`, globbing; coreutils, grep, sed, awk, jq, python3 and pip on wasm) and return its stdout, stderr and exit code. A non-zero exit code is a normal result. Without `sandbox_id` the session's own sandbox is used."
    )]
    async fn run_command(
        &self,
        Parameters(args): Parameters<RunCommandArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&extensions);
        let mut body = json!({"command": args.command});
        if let Some(w) = &args.workdir {
            body["workdir"] = json!(w);
        }
        if let Some(t) = &args.timeout {
            body["timeout"] = json!(t);
        }
        Ok(self
            .in_sandbox(&caller, args.sandbox_id.clone(), |id| {
                let (caller, body) = (&caller, body.clone());
                async move { self.exec(caller, &id, body).await }
            })
            .await)
    }

    #[tool(
        description = "Write a file into a sandbox (text, or base64 with `encoding: base64`), creating parent directories. Relative paths are below /workspace, where commands and code run."
    )]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&extensions);
        let mut body = json!({"path": args.path, "content": args.content});
        if let Some(e) = &args.encoding {
            body["encoding"] = json!(e);
        }
        Ok(self
            .in_sandbox(&caller, args.sandbox_id.clone(), |id| {
                let (caller, body, path) = (&caller, body.clone(), &args.path);
                async move {
                    self.send(caller, Call::post(format!("/sandboxes/{id}/files"), body))
                        .await?;
                    Ok(success(
                        format!("wrote {path} in sandbox {id}"),
                        json!({"sandbox_id": id, "path": path, "status": "written"}),
                    ))
                }
            })
            .await)
    }

    #[tool(
        description = "Read a file from a sandbox. Text comes back as text; images as image content; other binary files as base64."
    )]
    async fn read_file(
        &self,
        Parameters(args): Parameters<ReadFileArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&extensions);
        Ok(self
            .in_sandbox(&caller, args.sandbox_id.clone(), |id| {
                let (caller, path) = (&caller, &args.path);
                async move {
                    let answer = self
                        .send(
                            caller,
                            Call::get(format!("/sandboxes/{id}/files?path={}", query_value(path))),
                        )
                        .await?;
                    let mime = mime_of(path);
                    Ok(match std::str::from_utf8(&answer.body) {
                        Ok(text) => success(
                            text.to_string(),
                            json!({"sandbox_id": id, "path": path, "content": text, "encoding": "utf-8"}),
                        ),
                        Err(_) => {
                            let b64 = base64::engine::general_purpose::STANDARD.encode(&answer.body);
                            let structured =
                                json!({"sandbox_id": id, "path": path, "content": b64, "encoding": "base64"});
                            let mut result = if mime.starts_with("image/") {
                                CallToolResult::success(vec![ContentBlock::image(b64.clone(), mime)])
                            } else {
                                CallToolResult::success(vec![ContentBlock::text(format!(
                                    "{path} is binary ({} bytes); base64:\n{b64}",
                                    answer.body.len()
                                ))])
                            };
                            result.structured_content = Some(structured);
                            result
                        }
                    })
                }
            })
            .await)
    }

    #[tool(
        description = "List a directory of a sandbox (default /workspace): each entry's name, path, size, mode, whether it is a directory, and its modification time."
    )]
    async fn list_files(
        &self,
        Parameters(args): Parameters<ListFilesArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&extensions);
        let path = args.path.clone().unwrap_or_else(|| "/workspace".to_string());
        Ok(self
            .in_sandbox(&caller, args.sandbox_id.clone(), |id| {
                let (caller, path) = (&caller, &path);
                async move {
                    let entries = self
                        .send(
                            caller,
                            Call::get(format!("/sandboxes/{id}/files/list?path={}", query_value(path))),
                        )
                        .await?
                        .json();
                    let lines: Vec<String> = items(&entries)
                        .iter()
                        .map(|e| {
                            let dir = if e["is_dir"] == true { "/" } else { "" };
                            format!("{}{dir}\t{} bytes", e["path"].as_str().unwrap_or("?"), e["size"])
                        })
                        .collect();
                    let text = if lines.is_empty() {
                        format!("{path} is empty")
                    } else {
                        lines.join("\n")
                    };
                    Ok(success(
                        text,
                        json!({"sandbox_id": id, "path": path, "entries": entries}),
                    ))
                }
            })
            .await)
    }

    #[tool(
        description = "Install pure-Python packages from the package index into a sandbox with `pip install`, for later `run_code` and `run_command` calls of that sandbox. Packages with compiled code cannot be installed on wasm; `python:3.15` sandboxes already have numpy and pandas."
    )]
    async fn install_packages(
        &self,
        Parameters(args): Parameters<InstallPackagesArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&extensions);
        let mut body = json!({"command": "pip install", "args": args.packages});
        if let Some(t) = &args.timeout {
            body["timeout"] = json!(t);
        }
        Ok(self
            .in_sandbox(&caller, args.sandbox_id.clone(), |id| {
                let (caller, body) = (&caller, body.clone());
                async move { self.exec(caller, &id, body).await }
            })
            .await)
    }

    #[tool(description = "Destroy a sandbox and everything in it. Destroying one that is already gone succeeds.")]
    async fn destroy_sandbox(
        &self,
        Parameters(args): Parameters<SandboxIdArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&extensions);
        let id = args.sandbox_id;
        Ok(
            match self.send(&caller, Call::delete(format!("/sandboxes/{id}"))).await {
                Ok(answer) => {
                    let mut state = lock(&self.session.state);
                    state.owned.retain(|(owned, _)| *owned != id);
                    if state.default_sandbox.as_deref() == Some(id.as_str()) {
                        state.default_sandbox = None;
                    }
                    let mut body = answer.json();
                    body["sandbox_id"] = json!(id);
                    success(format!("destroyed sandbox {id}"), body)
                }
                Err(f) => tool_error(&f),
            },
        )
    }

    #[tool(description = "List the live sandboxes you can use, newest first, with their provider, image and expiry.")]
    async fn list_sandboxes(&self, extensions: Extensions) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&extensions);
        Ok(match self.send(&caller, Call::get("/sandboxes")).await {
            Ok(answer) => {
                let list = answer.json();
                let rows: Vec<String> = items(&list)
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {} {} expires {}",
                            s["id"].as_str().unwrap_or("?"),
                            s["provider"].as_str().unwrap_or("?"),
                            s["image"].as_str().unwrap_or("?"),
                            s["expires_at"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                let text = if rows.is_empty() {
                    "no sandboxes".to_string()
                } else {
                    rows.join("\n")
                };
                success(text, json!({"sandboxes": list}))
            }
            Err(f) => tool_error(&f),
        })
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandboxTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_resources().enable_tools().build())
            .with_server_info(Implementation::new("stacyvm", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "stacyvm runs untrusted code in isolated sandboxes (WebAssembly, or Docker where the server has it). \
                 Use run_code for Python or JavaScript and run_command for shell command lines; both make a sandbox \
                 on first use and keep using it for this session. Files in a sandbox are also resources \
                 stacyvm://sandbox/{id}/files/{path}.",
            )
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{RESOURCE_PREFIX}{{id}}/files/{{path}}"), "sandbox file")
                .with_description("A file of a sandbox; `path` is its absolute path without the leading `/`."),
        ]))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let caller = self.caller(&context.extensions);
        let internal = |f: Failure| McpError::internal_error(f.message(), Some(f.body));
        let sandboxes = self
            .send(&caller, Call::get("/sandboxes"))
            .await
            .map_err(internal)?
            .json();
        let mut resources = vec![];
        // Bounds the whole listing, however many sandboxes the caller has.
        let mut walked = 0;
        'sandboxes: for sandbox in items(&sandboxes) {
            let Some(id) = sandbox["id"].as_str() else { continue };
            let mut dirs = vec!["/workspace".to_string()];
            while let Some(dir) = dirs.pop() {
                walked += 1;
                if walked > MAX_LISTED_DIRECTORIES {
                    break 'sandboxes;
                }
                let path = format!("/sandboxes/{id}/files/list?path={}", query_value(&dir));
                // A sandbox that went away meanwhile lists nothing.
                let Ok(answer) = self.send(&caller, Call::get(path)).await else {
                    break;
                };
                for entry in items(&answer.json()) {
                    let (Some(name), Some(path)) = (entry["name"].as_str(), entry["path"].as_str()) else {
                        continue;
                    };
                    if name.starts_with('.') {
                        continue;
                    }
                    if entry["is_dir"] == true {
                        dirs.push(path.to_string());
                        continue;
                    }
                    let mut resource =
                        Resource::new(resource_uri(id, path), format!("{id}:{path}")).with_mime_type(mime_of(path));
                    if let Some(size) = entry["size"].as_u64() {
                        resource = resource.with_size(size);
                    }
                    resources.push(resource);
                    if resources.len() >= MAX_LISTED_RESOURCES {
                        break 'sandboxes;
                    }
                }
            }
        }
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let caller = self.caller(&context.extensions);
        let Some((id, path)) = parse_resource_uri(&request.uri) else {
            return Err(McpError::resource_not_found(
                format!(
                    "{} is not a stacyvm://sandbox/{{id}}/files/{{path}} resource",
                    request.uri
                ),
                None,
            ));
        };
        let call = Call::get(format!("/sandboxes/{id}/files?path={}", query_value(&path)));
        let answer = self.send(&caller, call).await.map_err(|f| {
            if f.status == 404 {
                McpError::resource_not_found(f.message(), Some(f.body))
            } else {
                McpError::invalid_params(f.message(), Some(f.body))
            }
        })?;
        let mime = mime_of(&path);
        let contents = match String::from_utf8(answer.body.to_vec()) {
            Ok(text) => ResourceContents::text(text, request.uri.clone()).with_mime_type(mime),
            Err(_) => ResourceContents::blob(
                base64::engine::general_purpose::STANDARD.encode(&answer.body),
                request.uri.clone(),
            )
            .with_mime_type(if mime.starts_with("image/") {
                mime
            } else {
                "application/octet-stream"
            }),
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_uris_name_a_sandbox_and_an_absolute_path() {
        let uri = resource_uri("sb_0123", "/workspace/my notes.md");
        assert_eq!(uri, "stacyvm://sandbox/sb_0123/files/workspace/my%20notes.md");
        assert_eq!(
            parse_resource_uri(&uri),
            Some(("sb_0123".to_string(), "/workspace/my notes.md".to_string()))
        );
    }

    #[test]
    fn uris_of_other_shapes_name_no_file() {
        for bad in [
            "file:///workspace/a",
            "stacyvm://sandbox/sb_1",
            "stacyvm://sandbox//files/a",
            "stacyvm://sandbox/sb_1/files/",
            "stacyvm://sandbox/sb_1/x/files/a",
            "stacyvm://sandbox/sb_1/files/%zz",
        ] {
            assert_eq!(parse_resource_uri(bad), None, "{bad}");
        }
    }
}
