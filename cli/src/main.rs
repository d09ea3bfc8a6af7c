//! `kubehub`: the one user-facing binary. See `kubehub --help`.

use clap::Parser;

fn main() {
    let cli = kubehub_cli::Cli::parse();
    std::process::exit(kubehub_cli::run(cli));
}
