//! `host`: a prefork server whose protocol handlers are plugins.

#![deny(unsafe_code)]

mod cli;
mod config;
mod ctl;
mod master;
mod plugin;
mod sys;
mod worker;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogArgs, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        None => start(&cli.start),
        Some(Command::Start(ref args)) => start(args),
        Some(Command::CheckPlugin { ref path }) => check_plugin(path),
        Some(Command::Worker) => worker::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: &cli::StartArgs) -> anyhow::Result<()> {
    let service = args.service().map_err(anyhow::Error::msg)?;
    master::run(vec![service], args.plugin_dirs.clone())
}

/// Loads a plugin in this process and prints `name version (ABI n)`.
fn check_plugin(path: &std::path::Path) -> anyhow::Result<()> {
    if !path.is_file() {
        anyhow::bail!("no plugin file at {}", path.display());
    }
    let loaded = plugin::load(path)?;
    println!(
        "{} {} (ABI {})",
        loaded.name,
        loaded.version,
        plugin_api::ABI_VERSION
    );
    Ok(())
}

fn init_logging(args: &LogArgs) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|e| {
            eprintln!(
                "warning: bad --log-level {:?} ({e}); using info",
                args.log_level
            );
            EnvFilter::new("info")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
