//! `shoal`: the one binary. `shoal agent` runs a node (agent daemon and control API); every
//! other subcommand is a client of the control API (see `cli`).

mod agent;
mod api;
mod cli;
mod config;
mod convert;
mod metrics;
mod relay;
mod service;

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
    #[command(after_help = AGENT_EXIT_CODES_HELP)]
    Agent(config::AgentArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// What `shoal agent` exits with; a supervisor should restart it on 1, never on 10.
const AGENT_EXIT_CODES_HELP: &str = "\
Exit codes:
  0    stopped on SIGTERM or SIGINT (after handing work over)
  1    could not start or failed (the reason is printed in one line)
  10   this node was removed from its cluster (DELETE /v1/nodes/{id}); it never comes back
       under this identity: empty the data dir and join with a new token";

fn main() {
    // `shoal --addr X status` means `shoal status --addr X` (see `hoist_connection_flags`).
    let cli = Cli::parse_from(cli::hoist_connection_flags(std::env::args_os().collect()));
    let code = match cli.command {
        Command::Agent(args) => match agent::run(
            args,
            agent::Adapters {
                http: api::server,
                relay: relay::server,
            },
        ) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_help_names_the_removed_exit_code_the_agent_uses() {
        let line = format!(
            "  {}   this node was removed",
            agent::cluster::REMOVED_EXIT_CODE
        );
        assert!(
            AGENT_EXIT_CODES_HELP.contains(&line),
            "{AGENT_EXIT_CODES_HELP}"
        );
    }
}
