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

/// The connection flags that take a value, as they may appear before the subcommand.
const CONNECTION_FLAGS_WITH_VALUE: [&str; 2] = ["--addr", "--token"];
/// The connection flags without a value.
const CONNECTION_SWITCHES: [&str; 1] = ["--json"];

/// Moves connection flags written before the subcommand (`shoal --addr X --token K status`)
/// to just after it (`shoal status --addr X --token K`), where the subcommand's own
/// [`ConnectionArgs`] parse them, so that both orders mean the same. Only done when the
/// subcommand takes connection flags (not `agent` or `dev`: there clap reports the flag as
/// unexpected, as it should); anything else is returned unchanged for clap to judge.
pub fn hoist_connection_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut leading = Vec::new();
    let mut index = 1;
    while let Some(arg) = args.get(index).and_then(|arg| arg.to_str()) {
        if CONNECTION_FLAGS_WITH_VALUE.contains(&arg) && index + 1 < args.len() {
            leading.extend_from_slice(&args[index..index + 2]);
            index += 2;
        } else if CONNECTION_SWITCHES.contains(&arg)
            || CONNECTION_FLAGS_WITH_VALUE.iter().any(|flag| {
                arg.strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='))
            })
        {
            leading.push(args[index].clone());
            index += 1;
        } else {
            break;
        }
    }
    let takes_flags = args
        .get(index)
        .and_then(|name| name.to_str())
        .is_some_and(takes_connection_flags);
    if leading.is_empty() || !takes_flags {
        return args;
    }
    let mut hoisted = Vec::with_capacity(args.len());
    hoisted.push(args[0].clone());
    hoisted.push(args[index].clone());
    hoisted.extend(leading);
    hoisted.extend_from_slice(&args[index + 1..]);
    hoisted
}

/// Whether the client subcommand called `name` takes the connection flags.
fn takes_connection_flags(name: &str) -> bool {
    use clap::Subcommand as _;
    let commands = ClientCommand::augment_subcommands(clap::Command::new("shoal"));
    commands.find_subcommand(name).is_some_and(|command| {
        command
            .get_arguments()
            .any(|arg| arg.get_id().as_str() == "addr")
    })
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

    fn parse_hoisted(line: &str) -> Result<ClientCommand, clap::Error> {
        let args = line
            .split_whitespace()
            .map(std::ffi::OsString::from)
            .collect();
        TestCli::try_parse_from(hoist_connection_flags(args)).map(|cli| cli.command)
    }

    #[test]
    fn connection_flags_before_the_subcommand_mean_the_same_as_after_it() {
        let Ok(ClientCommand::Status(args)) =
            parse_hoisted("shoal --addr h:1 --token k --json status")
        else {
            panic!("global flags before status did not parse");
        };
        assert_eq!(args.conn().addr, "h:1");
        assert_eq!(args.conn().token.as_deref(), Some("k"));
        assert!(args.conn().json);
        let Ok(ClientCommand::Token(args)) =
            parse_hoisted("shoal --addr=h:2 token create --ttl 1m")
        else {
            panic!("global flags before a nested subcommand did not parse");
        };
        assert_eq!(args.conn().addr, "h:2");
        let Ok(ClientCommand::Status(args)) = parse_hoisted("shoal status --addr h:3") else {
            panic!("flags after the subcommand still parse");
        };
        assert_eq!(args.conn().addr, "h:3");
        // `dev` takes no connection flags: the flag stays where it was and clap refuses it.
        let refused = parse_hoisted("shoal --addr h:1 dev").expect_err("dev has no --addr");
        assert_eq!(refused.exit_code(), 2);
        // A flag without its value is left for clap to report.
        assert!(parse_hoisted("shoal --addr").is_err());
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
