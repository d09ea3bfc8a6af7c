//! # kubehub-cli: the `kubehub` command
//!
//! The one user-facing binary. Each subcommand starts a piece that lives in its own crate:
//! `hub` (kubehub-hub), `agent` (kubehub-agent), `sim` (kubehub-sim), `certs` (kubehub-pki),
//! and `demo`, all of them on loopback from configuration files it writes. `meta` (kubehub-meta) and
//! `ctl`, its command line; `kubehub --help` lists them. Nothing else
//! depends on this crate: the libraries never depend on the command line.

mod ctl;
mod ctl_limit;
mod meta;
mod plugins;
mod run;
mod sim;

use clap::{Parser, Subcommand};

/// KubeHub: a cloud-edge gateway that carries Kubernetes API traffic between a control plane and
/// many edge clusters through one multiplexed tunnel per cluster.
#[derive(Debug, Parser)]
#[command(name = "kubehub", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `kubehub_hub=debug`); the
    /// `RUST_LOG` environment variable overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,

    /// What to run.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// All in one on loopback: a simulated cluster, an agent and a hub, plus a kubeconfig.
    Demo(run::DemoArgs),
    /// Run the hub (cloud side) from a TOML configuration; with `[meta] state_dir`, enroll it
    /// with the metaserver first (`--join`) and renew its certificate.
    Hub(run::HubArgs),
    /// Run the agent (edge side) from a TOML configuration, or enroll it with the metaserver
    /// (`--join`) and run it from its state directory.
    Agent(run::AgentArgs),
    /// Generate a development CA with hub, agent and user certificates.
    Certs(run::CertsArgs),
    /// Run a simulated Kubernetes API server (edge cluster) for demos, tests and load.
    Sim(sim::SimArgs),
    /// Run the metaserver (tenants, users, clusters, grants, tokens, the CA, the registry).
    Meta(meta::MetaArgs),
    /// The metaserver's command line: tenants, users, clusters, grants, tokens, kubeconfigs.
    Ctl(ctl::CtlArgs),
    /// Print the tunnel protocol version and limits this build speaks.
    Protocol,
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; plain text for a log file or a collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    init_logging(&cli.log);
    match cli.command {
        None => {
            use clap::CommandFactory;
            // No subcommand: show what there is, and fail like any usage error.
            let _ = Cli::command().print_help();
            2
        }
        Some(Command::Sim(args)) => sim::run(args),
        Some(Command::Demo(args)) => run::demo(args),
        Some(Command::Hub(args)) => run::hub(args),
        Some(Command::Agent(args)) => run::agent(args),
        Some(Command::Certs(args)) => run::certs(args),
        Some(Command::Meta(args)) => meta::run(args),
        Some(Command::Ctl(args)) => ctl::run(args),
        Some(Command::Protocol) => {
            let s = kubehub_wire::Settings::default();
            println!("protocol version: {}", kubehub_wire::PROTOCOL_VERSION);
            println!("default max frame size: {} bytes", s.max_frame_size);
            println!(
                "frame size limit: {} bytes",
                kubehub_wire::MAX_FRAME_SIZE_LIMIT
            );
            println!(
                "default request stream window: {} bytes",
                s.initial_stream_window
            );
            println!(
                "default sync stream window: {} bytes",
                s.initial_sync_window
            );
            println!(
                "default connection window: {} bytes",
                s.initial_connection_window
            );
            0
        }
    }
}
