//! The client side of the `shoal` binary: every command except `shoal agent`.
//!
//! Each command parses its flags (clap, with sizes and durations checked before any request),
//! talks to one node's control API through [`client::ApiClient`] and prints a table, a
//! key/value block, or with `--json` the API's answer. Errors are one line on stderr and an
//! exit code from [`error::exit_code`]. `shoal dev` ([`dev`]) supervises local agents instead.
//!
//! Code map: `client` (HTTP, error mapping), `error` (exit codes), `units` (sizes, CPU,
//! durations), `render` (tables, JSON accessors), `progress` (spinner), `sse` (pure
//! Server-Sent Events parser), `follow` (reconnecting log follower), `cluster` (status, nodes,
//! tokens, keys, audit), `workstations` (ws, exec, ps, kill), `logs`, `runs`, `dev`.

pub mod client;
pub mod cluster;
pub mod dev;
pub mod error;
pub mod follow;
pub mod logs;
pub mod progress;
pub mod render;
pub mod runs;
pub mod sse;
pub mod units;
pub mod workstations;

use std::time::Duration;

use client::{ApiClient, DEFAULT_ADDR, REQUEST_TIMEOUT_MS};
use error::{CliResult, EXIT_CODES_HELP};

/// Where and as whom a client command talks, and how it prints. Every client command takes
/// these flags (before or after its own).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// The node's control API address.
    #[arg(long, env = "SHOAL_ADDR", default_value = DEFAULT_ADDR, global = true, value_name = "URL")]
    pub addr: String,
    /// The API key to send as `Authorization: Bearer`.
    #[arg(
        long,
        env = "SHOAL_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub token: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ConnectionArgs {
    /// A client with the default request timeout.
    pub fn client(&self) -> CliResult<ApiClient> {
        self.client_with_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
    }

    /// A client that waits at most `timeout` for an answer (and for each read of a body).
    pub fn client_with_timeout(&self, timeout: Duration) -> CliResult<ApiClient> {
        ApiClient::new(&self.addr, self.token.clone(), timeout)
    }
}

/// The client subcommands (everything except `shoal agent`).
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Cluster id, leader, term, servers, pool totals.
    #[command(after_help = EXIT_CODES_HELP)]
    Status(cluster::StatusArgs),
    /// Nodes with role, state, mesh address, CPU/RAM capacity, reserved, used; drain, remove.
    #[command(after_help = EXIT_CODES_HELP)]
    Nodes(cluster::NodesArgs),
    /// Join tokens: create, ls, revoke (admin).
    #[command(after_help = EXIT_CODES_HELP)]
    Token(cluster::TokenArgs),
    /// Workstations: create, ls, show, resize, rm.
    #[command(after_help = EXIT_CODES_HELP)]
    Ws(workstations::WsArgs),
    /// Start a background process in a workstation and print its id.
    #[command(after_help = EXIT_CODES_HELP)]
    Exec(workstations::ExecArgs),
    /// The processes of a workstation with state, exit status, restarts.
    #[command(after_help = EXIT_CODES_HELP)]
    Ps(workstations::PsArgs),
    /// Send a signal to a workstation process (default TERM).
    #[command(after_help = EXIT_CODES_HELP)]
    Kill(workstations::KillArgs),
    /// Print a workstation's retained output; -f follows and resumes by itself.
    #[command(after_help = EXIT_CODES_HELP)]
    Logs(logs::LogsArgs),
    /// One ephemeral run: prints its stdout and stderr, then a summary; exits with its code.
    #[command(after_help = EXIT_CODES_HELP)]
    Run(runs::RunArgs),
    /// API keys: create, ls, revoke (admin). The full key is printed once.
    #[command(after_help = EXIT_CODES_HELP)]
    Keys(cluster::KeysArgs),
    /// The audit log.
    #[command(after_help = EXIT_CODES_HELP)]
    Audit(cluster::AuditArgs),
    /// Start a local N-node cluster on loopback (no root needed); Ctrl-C stops it.
    #[command(after_help = dev::DEV_HELP)]
    Dev(dev::DevArgs),
}

/// Runs one client command and returns the process exit code. Errors have already been
/// printed (one line on stderr) when this returns; it never returns `Err` for them, so that
/// the caller does not print them twice.
pub fn run(command: ClientCommand) -> anyhow::Result<i32> {
    if !matches!(command, ClientCommand::Dev(_)) {
        // Like every Unix filter: when the reader of our stdout goes away (`shoal ws ls |
        // head`), end quietly instead of failing a write (Rust ignores SIGPIPE, and `print!`
        // would then panic). `shoal dev` keeps ignoring it: it must stop its nodes in order.
        // SAFETY: setting a signal disposition to the default is always sound.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match command {
        ClientCommand::Status(args) => cluster::status(&args),
        ClientCommand::Nodes(args) => cluster::nodes(&args),
        ClientCommand::Token(args) => cluster::token(&args),
        ClientCommand::Ws(args) => workstations::ws(&args),
        ClientCommand::Exec(args) => workstations::exec(&args),
        ClientCommand::Ps(args) => workstations::ps(&args),
        ClientCommand::Kill(args) => workstations::kill(&args),
        ClientCommand::Logs(args) => logs::logs(&args),
        ClientCommand::Run(args) => runs::run(&args),
        ClientCommand::Keys(args) => cluster::keys(&args),
        ClientCommand::Audit(args) => cluster::audit(&args),
        ClientCommand::Dev(args) => dev::dev(&args),
    };
    Ok(match result {
        Ok(code) => i32::from(code),
        Err(error) => {
            error.report();
            i32::from(error.exit_code())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// The same shape as `main.rs`'s parser: the client commands flattened into the top level.
    #[derive(Debug, Parser)]
    #[command(name = "shoal")]
    struct TestCli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(line: &str) -> Result<ClientCommand, clap::Error> {
        TestCli::try_parse_from(line.split_whitespace()).map(|cli| cli.command)
    }

    #[test]
    fn the_command_definitions_are_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn connection_flags_are_accepted_before_and_after_nested_subcommands() {
        let Ok(ClientCommand::Token(args)) = parse("shoal token --addr h:1 create --ttl 10m")
        else {
            panic!("token create did not parse");
        };
        assert_eq!(args.conn().addr, "h:1");
        let Ok(ClientCommand::Token(args)) = parse("shoal token create --token k --json") else {
            panic!("token create did not parse");
        };
        assert_eq!(args.conn().token.as_deref(), Some("k"));
        assert!(args.conn().json);
    }

    #[test]
    fn commands_after_double_dash_are_kept_verbatim() {
        assert!(matches!(
            parse("shoal exec ws-1 --restart always -- sleep --help"),
            Ok(ClientCommand::Exec(_))
        ));
        assert!(parse("shoal exec ws-1").is_err());
        assert!(matches!(
            parse("shoal run -- python3 -c 1"),
            Ok(ClientCommand::Run(_))
        ));
        assert!(matches!(
            parse("shoal run --lang python -"),
            Ok(ClientCommand::Run(_))
        ));
        assert!(matches!(
            parse("shoal logs ws-1 -f --tail 4KiB --proc p-1"),
            Ok(ClientCommand::Logs(_))
        ));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for line in [
            "shoal ws create --mem lots",
            "shoal ws create --cpu -1",
            "shoal ws create --network wide",
            "shoal run --timeout forever x.py",
            "shoal logs ws-1 --from 3 --tail 5",
            "shoal dev --nodes 0",
            "shoal keys create",
            "shoal kill ws-1",
        ] {
            let error = parse(line).expect_err(line);
            assert_eq!(error.exit_code(), 2, "{line}");
        }
    }
}
