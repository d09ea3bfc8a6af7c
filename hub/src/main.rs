//! `kubehub`: the one user-facing binary. See `kubehub --help`.

use clap::Parser;

fn main() {
    let cli = kubehub_hub::cli::Cli::parse();
    std::process::exit(kubehub_hub::cli::run(cli));
}
