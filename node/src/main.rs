//! `shoal`: the one binary. `shoal agent` runs a node (agent daemon and control API); every
//! other subcommand is a client of the control API (see `cli`).

mod agent;
mod api;
mod cli;
mod config;

// The shared modules live in the library half so that tests and other crates can use them;
// re-exported here so that binary modules say `crate::api_types` either way.
pub use shoal_node::{api_types, clock, mesh_rpc};

use clap::{Parser, Subcommand};

/// Shoal: an actor-based, Raft-coordinated scheduler cluster for running other people's code.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node of a cluster (the agent daemon and its HTTP control API).
    Agent(config::AgentArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() {
    // `shoal --addr X status` means `shoal status --addr X` (see `hoist_connection_flags`).
    let cli = Cli::parse_from(cli::hoist_connection_flags(std::env::args_os().collect()));
    let code = match cli.command {
        Command::Agent(args) => match agent::run(args) {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("shoal agent: {err:#}");
                1
            }
        },
        Command::Client(cmd) => match cli::run(cmd) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("shoal: {err:#}");
                1
            }
        },
    };
    std::process::exit(code);
}
