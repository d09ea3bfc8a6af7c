//! The `kubehub` command line.
//!
//! Subcommands are added as the pieces they start land (`hub`, `agent`, `meta`, `sim`, `demo`,
//! `ctl`); `kubehub --help` lists what this build has.

use clap::{Parser, Subcommand};

/// KubeHub: a cloud-edge gateway that carries Kubernetes API traffic between a control plane and
/// many edge clusters through one multiplexed tunnel per cluster.
#[derive(Debug, Parser)]
#[command(name = "kubehub", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the tunnel protocol version and limits this build speaks.
    Protocol,
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        None => {
            use clap::CommandFactory;
            // No subcommand: show what there is, and fail like any usage error.
            let _ = Cli::command().print_help();
            2
        }
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
