//! The `stacyvm` command: `serve` runs the server, `images pull` fetches, builds and compiles the
//! wasm images ahead of time, `bench` measures a server, `sandbox` and `template` are a client of
//! a server's REST API, `mcp` serves the sandbox tools to an agent over stdio, and `doctor` checks
//! the host.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use stacyvm::App;
use stacyvm::cli::{Remote, SandboxCommand, TemplateCommand};
use stacyvm::runtime::Catalog;
use stacyvm::settings::{Overrides, Settings};

#[derive(Parser)]
#[command(
    name = "stacyvm",
    version,
    about = "A sandbox server for untrusted code: WebAssembly or Docker behind one REST API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Config file (TOML); `stacyvm.toml` in the current directory is read when present.
    #[arg(long, env = "STACYVM_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory: images, compile cache, sandboxes and registry.
    #[arg(long, env = "STACYVM_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the REST server.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on.
        #[arg(long, env = "STACYVM_BIND")]
        bind: Option<SocketAddr>,
    },
    /// Manage wasm images.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Measure latency, throughput and density over HTTP, and print them with their ratios.
    Bench(stacyvm::bench::Options),
    /// Manage sandboxes on a server: create, ls, get, exec, cp, rm, logs, extend.
    Sandbox {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// Manage templates on a server: save, ls, get, rm, spawn.
    Template {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Serve MCP (Model Context Protocol) on stdio for an agent, with an embedded server or `--url`.
    Mcp {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        options: stacyvm::mcp::StdioOptions,
    },
    /// Check that this host can run the server; one line per check, and the fix for each failure.
    Doctor {
        #[command(flatten)]
        common: Common,
        /// The address the server would listen on.
        #[arg(long, env = "STACYVM_BIND")]
        bind: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Fetch, build and compile every wasm image, failing rather than falling back.
    Pull {
        #[command(flatten)]
        common: Common,
    },
}

fn load(common: &Common, bind: Option<SocketAddr>) -> anyhow::Result<Settings> {
    Settings::load(&Overrides {
        config: common.config.clone(),
        bind,
        data_dir: common.data_dir.clone(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STACYVM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { common, bind } => {
            let settings = load(&common, bind)?;
            let app = App::build(settings).await?;
            app.run_until_stopped().await
        }
        Command::Images {
            command: ImagesCommand::Pull { common },
        } => {
            let settings = load(&common, None)?;
            let catalog = match &settings.wasm.catalog_dir {
                Some(dir) => Catalog::from_dir(dir)?,
                None => Catalog::built_in()?,
            };
            // Fetch, build and compile exactly as the server would, but
            // fail instead of falling back.
            for line in stacyvm::provider::wasm::prepare_images(&settings, &catalog).await? {
                println!("{line}");
            }
            println!("images ready in {}", settings.image_dir().display());
            Ok(())
        }
        Command::Bench(options) => stacyvm::bench::run(options).await,
        Command::Sandbox { remote, command } => {
            let code = stacyvm::cli::sandbox(&remote, command)
                .await
                .unwrap_or_else(|e| stacyvm::cli::report_failure(&e));
            std::process::exit(code)
        }
        Command::Template { remote, command } => {
            let code = stacyvm::cli::template(&remote, command)
                .await
                .unwrap_or_else(|e| stacyvm::cli::report_failure(&e));
            std::process::exit(code)
        }
        Command::Mcp { common, options } => {
            // With --url no server runs here, so no settings are read.
            let settings = match options.url {
                Some(_) => Settings::default(),
                None => load(&common, Some(stacyvm::mcp::EMBEDDED_BIND.parse()?))?,
            };
            stacyvm::mcp::serve_stdio(options, settings).await
        }
        Command::Doctor { common, bind } => {
            let overrides = Overrides {
                config: common.config.clone(),
                bind,
                data_dir: common.data_dir.clone(),
            };
            std::process::exit(stacyvm::cli::doctor::run(&overrides).await)
        }
    }
}
