//! `kubehub meta --config meta.toml`: the metaserver.

use std::path::PathBuf;

use clap::Args;
use kubehub_meta::config::MetaConfig;

/// Options of `kubehub meta`.
#[derive(Debug, Args)]
pub struct MetaArgs {
    /// The TOML configuration file (meta/src/config.rs documents every option).
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs the metaserver until SIGINT or SIGTERM.
pub fn run(args: MetaArgs) -> i32 {
    let cfg = match MetaConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubehub meta: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubehub meta: starting the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let admin = cfg.admin_token_file.clone();
        let meta = match kubehub_meta::service::Meta::start(cfg).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("kubehub meta: {e}");
                return 1;
            }
        };
        let server = match kubehub_meta::server::start(meta).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("kubehub meta: {e}");
                return 1;
            }
        };
        println!(
            "metaserver on https://{} (admin token in {})",
            server.addr,
            admin.display()
        );
        crate::sim::wait_for_signal().await;
        server.stop().await;
        0
    })
}
