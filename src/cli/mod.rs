//! The command-line client: `stacyvm sandbox ...` and `stacyvm template ...`
//! talk to a server over its REST API (`--url`/`STACYVM_URL`,
//! `--api-key`/`STACYVM_API_KEY`), and print a table, or the server's JSON
//! with `--json`. `stacyvm doctor` checks the host (see [`doctor`]).

pub mod doctor;
mod files;

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use base64::Engine as _;
use futures_util::StreamExt as _;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;

/// Where the server is and who is asking; shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Server URL.
    #[arg(long, env = "STACYVM_URL", default_value = "http://127.0.0.1:7423", global = true)]
    pub url: String,
    /// API key, sent as X-API-Key.
    #[arg(long, env = "STACYVM_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// User the requests act for, sent as X-User-ID.
    #[arg(long, env = "STACYVM_USER_ID", global = true)]
    pub user_id: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and print its id.
    Create {
        /// wasm runtime image or docker image.
        #[arg(long)]
        image: Option<String>,
        /// wasm or docker (default: the server's).
        #[arg(long)]
        provider: Option<String>,
        /// Memory limit in MiB.
        #[arg(long = "memory")]
        memory_mb: Option<u64>,
        #[arg(long)]
        vcpus: Option<u32>,
        /// Time to live, Go syntax: 30m, 2h.
        #[arg(long)]
        ttl: Option<String>,
        /// A label, KEY=VALUE (repeatable).
        #[arg(long = "meta", value_parser = key_value)]
        metadata: Vec<(String, String)>,
        #[arg(long)]
        owner: Option<String>,
        /// Spawn from this template.
        #[arg(long)]
        template: Option<String>,
    },
    /// List sandboxes.
    Ls {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        provider: Option<String>,
    },
    /// Show one sandbox.
    Get { id: String },
    /// Run a command, streaming its output; exits with its exit code (124
    /// when it ran past its timeout, 137 when a limit stopped it).
    Exec {
        id: String,
        /// Timeout, Go syntax (default: the server's).
        #[arg(long)]
        timeout: Option<String>,
        /// Working directory in the sandbox.
        #[arg(long, short = 'w')]
        workdir: Option<String>,
        /// An environment variable, KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e', value_parser = key_value)]
        env: Vec<(String, String)>,
        /// Run the program with exact arguments and no shell.
        #[arg(long)]
        argv: bool,
        /// Send this command's standard input to the command.
        #[arg(long, short = 'i')]
        stdin: bool,
        /// A shell command line, or a program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Copy files or directories, binary-safe: `cp ./a SB:/workspace/a` or
    /// `cp SB:/workspace/out ./out`; `-` is standard input or output.
    Cp { source: String, destination: String },
    /// Destroy sandboxes.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Print a sandbox's exec history.
    Logs {
        id: String,
        #[arg(long, short = 'n')]
        lines: Option<usize>,
    },
    /// Set a sandbox to expire TTL from now.
    Extend { id: String, ttl: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum TemplateCommand {
    /// Create or replace a template from a JSON file (`-`: standard input).
    Save { file: String },
    /// List templates.
    Ls,
    /// Show one template.
    Get { name: String },
    /// Delete a template.
    Rm { name: String },
    /// Spawn a sandbox from a template and print its id.
    Spawn {
        name: String,
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        owner: Option<String>,
    },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// An error answer of the server.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({status} {code})")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// The REST client the commands share.
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
    user_id: Option<String>,
    pub json: bool,
}

impl Client {
    pub fn new(remote: &Remote) -> anyhow::Result<Client> {
        let url = remote.url.trim_end_matches('/');
        if !url.starts_with("http://") && !url.starts_with("https://") {
            bail!("--url must start with http:// or https://, not {url:?}");
        }
        Ok(Client {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()?,
            base: format!("{url}/api/v1"),
            api_key: remote.api_key.clone().filter(|k| !k.is_empty()),
            user_id: remote.user_id.clone().filter(|u| !u.is_empty()),
            json: remote.json,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = &self.api_key {
            rb = rb.header("X-API-Key", k);
        }
        if let Some(u) = &self.user_id {
            rb = rb.header("X-User-ID", u);
        }
        rb
    }

    /// Sends and checks the answer: an error answer becomes [`ApiFailure`].
    async fn send(&self, rb: RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = rb
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Err(ApiFailure {
            status,
            code: body["code"].as_str().unwrap_or("error").to_string(),
            message: body["message"]
                .as_str()
                .unwrap_or("the server gave no reason")
                .to_string(),
        }
        .into())
    }

    async fn value(&self, rb: RequestBuilder) -> anyhow::Result<Value> {
        Ok(self.send(rb).await?.json().await?)
    }

    fn print_json(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

/// Runs a sandbox command; returns the process's exit code.
pub async fn sandbox(remote: &Remote, command: SandboxCommand) -> anyhow::Result<i32> {
    let c = Client::new(remote)?;
    match command {
        SandboxCommand::Create {
            image,
            provider,
            memory_mb,
            vcpus,
            ttl,
            metadata,
            owner,
            template,
        } => {
            let mut body = serde_json::Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    body.insert(k.to_string(), v);
                }
            };
            put("image", image.map(Value::from));
            put("provider", provider.map(Value::from));
            put("memory_mb", memory_mb.map(Value::from));
            put("vcpus", vcpus.map(Value::from));
            put("ttl", ttl.map(Value::from));
            put("owner_id", owner.map(Value::from));
            put("template", template.map(Value::from));
            if !metadata.is_empty() {
                put(
                    "metadata",
                    Some(json!(metadata.into_iter().collect::<BTreeMap<_, _>>())),
                );
            }
            let sb = c.value(c.request(Method::POST, "/sandboxes").json(&body)).await?;
            if c.json {
                c.print_json(&sb);
            } else {
                println!("{}", sb["id"].as_str().unwrap_or_default());
            }
        }
        SandboxCommand::Ls { owner, provider } => {
            let mut query = vec![];
            query.extend(owner.map(|o| ("owner_id", o)));
            query.extend(provider.map(|p| ("provider", p)));
            let list = c.value(c.request(Method::GET, "/sandboxes").query(&query)).await?;
            if c.json {
                c.print_json(&list);
            } else {
                let rows = list.as_array().map(Vec::as_slice).unwrap_or_default();
                print_table(
                    &["ID", "PROVIDER", "IMAGE", "STATE", "OWNER", "EXPIRES"],
                    rows.iter()
                        .map(|s| {
                            ["id", "provider", "image", "state", "owner_id", "expires_at"]
                                .map(|k| text(&s[k]))
                                .to_vec()
                        })
                        .collect(),
                );
            }
        }
        SandboxCommand::Get { id } => {
            let sb = c.value(c.request(Method::GET, &format!("/sandboxes/{id}"))).await?;
            if c.json {
                c.print_json(&sb);
            } else {
                print_fields(&sb);
            }
        }
        SandboxCommand::Exec {
            id,
            timeout,
            workdir,
            env,
            argv,
            stdin,
            command,
        } => return exec(&c, &id, timeout, workdir, env, argv, stdin, command).await,
        SandboxCommand::Cp { source, destination } => files::copy(&c, &source, &destination).await?,
        SandboxCommand::Rm { ids } => {
            for id in ids {
                let body = c.value(c.request(Method::DELETE, &format!("/sandboxes/{id}"))).await?;
                if c.json {
                    c.print_json(&json!({"id": id, "status": body["status"]}));
                } else {
                    println!("{id} destroyed");
                }
            }
        }
        SandboxCommand::Logs { id, lines } => {
            let mut rb = c.request(Method::GET, &format!("/sandboxes/{id}/logs"));
            if let Some(n) = lines {
                rb = rb.query(&[("lines", n)]);
            }
            let logs = c.value(rb).await?;
            if c.json {
                c.print_json(&logs);
            } else {
                for line in logs.as_array().map(Vec::as_slice).unwrap_or_default() {
                    println!("{}", text(line));
                }
            }
        }
        SandboxCommand::Extend { id, ttl } => {
            let sb = c
                .value(
                    c.request(Method::POST, &format!("/sandboxes/{id}/extend"))
                        .json(&json!({"ttl": ttl})),
                )
                .await?;
            if c.json {
                c.print_json(&sb);
            } else {
                println!("{id} now expires at {}", text(&sb["expires_at"]));
            }
        }
    }
    Ok(0)
}

/// The most standard input `exec -i` sends: the server's default body limit.
const MAX_STDIN: u64 = 16 << 20;

#[allow(clippy::too_many_arguments)]
async fn exec(
    c: &Client,
    id: &str,
    timeout: Option<String>,
    workdir: Option<String>,
    env: Vec<(String, String)>,
    argv: bool,
    stdin: bool,
    mut command: Vec<String>,
) -> anyhow::Result<i32> {
    let program = command.remove(0);
    let mut body = json!({
        "command": program,
        "args": command,
        "mode": if argv { "argv" } else { "shell" },
        "env": env.into_iter().collect::<BTreeMap<_, _>>(),
        "stream": true,
    });
    if let Some(t) = timeout {
        body["timeout"] = t.into();
    }
    if let Some(w) = workdir {
        body["workdir"] = w.into();
    }
    if stdin {
        let mut input = vec![];
        tokio::io::stdin()
            .take(MAX_STDIN + 1)
            .read_to_end(&mut input)
            .await
            .context("cannot read standard input")?;
        if input.len() as u64 > MAX_STDIN {
            bail!("standard input is over {MAX_STDIN} bytes; copy it in with `stacyvm sandbox cp` instead");
        }
        body["stdin"] = base64::engine::general_purpose::STANDARD.encode(&input).into();
        body["stdin_encoding"] = "base64".into();
    }
    let resp = c
        .send(c.request(Method::POST, &format!("/sandboxes/{id}/exec")).json(&body))
        .await?;
    let mut stream = resp.bytes_stream();
    let mut pending: Vec<u8> = vec![];
    let mut last = Value::Null;
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk.context("the output stream broke off")?);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if c.json {
                println!("{v}");
            } else if let Some(data) = v["data"].as_str() {
                let sink: &mut dyn std::io::Write = if v["stream"] == "stderr" { &mut err } else { &mut out };
                sink.write_all(data.as_bytes())?;
                sink.flush()?;
            }
            if v.get("exit_code").is_some() || v.get("error").is_some() {
                last = v;
            }
        }
    }
    if let Some(code) = last["exit_code"].as_i64() {
        return Ok(i32::try_from(code).unwrap_or(1));
    }
    let e = &last["error"];
    if !c.json {
        eprintln!(
            "stacyvm: {}",
            e["message"].as_str().unwrap_or("the exec ended without a result")
        );
    }
    Ok(match e["code"].as_str() {
        Some("timeout") => 124,
        Some("resource_limit") => 137,
        _ => 1,
    })
}

/// Runs a template command.
pub async fn template(remote: &Remote, command: TemplateCommand) -> anyhow::Result<i32> {
    let c = Client::new(remote)?;
    match command {
        TemplateCommand::Save { file } => {
            let source = if file == "-" {
                let mut s = String::new();
                tokio::io::stdin().read_to_string(&mut s).await?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?
            };
            let body: Value = serde_json::from_str(&source).with_context(|| format!("{file} is not JSON"))?;
            let resp = c.send(c.request(Method::POST, "/templates").json(&body)).await?;
            let created = resp.status() == StatusCode::CREATED;
            let t: Value = resp.json().await?;
            if c.json {
                c.print_json(&t);
            } else {
                let verb = if created { "created" } else { "replaced" };
                println!("template {} {verb}", text(&t["name"]));
            }
        }
        TemplateCommand::Ls => {
            let list = c.value(c.request(Method::GET, "/templates")).await?;
            if c.json {
                c.print_json(&list);
            } else {
                let rows = list.as_array().map(Vec::as_slice).unwrap_or_default();
                print_table(
                    &["NAME", "PROVIDER", "IMAGE", "MEMORY", "TTL", "FILES", "SETUP"],
                    rows.iter()
                        .map(|t| {
                            vec![
                                text(&t["name"]),
                                text(&t["provider"]),
                                text(&t["image"]),
                                text(&t["memory_mb"]),
                                text(&t["ttl"]),
                                t["files"].as_array().map_or(0, Vec::len).to_string(),
                                t["setup"].as_array().map_or(0, Vec::len).to_string(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        TemplateCommand::Get { name } => {
            let t = c.value(c.request(Method::GET, &format!("/templates/{name}"))).await?;
            if c.json {
                c.print_json(&t);
            } else {
                print_fields(&t);
            }
        }
        TemplateCommand::Rm { name } => {
            c.value(c.request(Method::DELETE, &format!("/templates/{name}")))
                .await?;
            if c.json {
                c.print_json(&json!({"name": name, "status": "deleted"}));
            } else {
                println!("template {name} deleted");
            }
        }
        TemplateCommand::Spawn { name, ttl, owner } => {
            let mut body = json!({});
            if let Some(t) = ttl {
                body["ttl"] = t.into();
            }
            if let Some(o) = owner {
                body["owner_id"] = o.into();
            }
            let sb = c
                .value(c.request(Method::POST, &format!("/templates/{name}/spawn")).json(&body))
                .await?;
            if c.json {
                c.print_json(&sb);
            } else {
                println!("{}", text(&sb["id"]));
            }
        }
    }
    Ok(0)
}

/// A JSON value as a table cell: strings bare, nothing as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `key: value` lines; objects and lists are shown as JSON (lists of more
/// than a few items by their length).
fn print_fields(v: &Value) {
    let Some(fields) = v.as_object() else {
        println!("{v}");
        return;
    };
    let width = fields.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in fields {
        let shown = match v {
            Value::Array(items) if items.len() > 3 => format!("{} items", items.len()),
            Value::Array(items) if items.iter().any(Value::is_object) => format!("{} items", items.len()),
            other => text(other),
        };
        println!("{k:width$}  {shown}");
    }
}

/// Columns padded to their widest cell.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:w$}  "));
            }
        }
        s
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}

/// How a client command's failure is reported: the server's message, or
/// why the server could not be asked; exit status 1.
pub fn report_failure(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<ApiFailure>() {
        Some(f) => eprintln!("stacyvm: {} ({} {})", f.message, f.status, f.code),
        None => eprintln!("stacyvm: {e:#}"),
    }
    1
}
