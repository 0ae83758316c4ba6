//! Workstation commands: `ws create|ls|show|resize|rm`, `exec`, `ps`, `kill`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::client::ApiClient;
use super::cluster::path_segment;
use super::error::{exit_code, CliError, CliResult};
use super::progress::{wait_for, Progress};
use super::render::{cpu, items, print_json, size, text, timestamp, Table};
use super::units::{parse_cpu_millis, parse_duration, parse_size};
use super::ConnectionArgs;
use crate::api_types::{
    CreateProcessRequest, CreateWorkstationRequest, NetworkPolicy, ResizeWorkstationRequest,
    RestartPolicy,
};

/// `shoal ws ...`.
#[derive(Debug, clap::Args)]
pub struct WsArgs {
    #[command(flatten)]
    conn: ConnectionArgs,
    #[command(subcommand)]
    action: WsAction,
}

/// Workstation actions.
#[derive(Debug, clap::Subcommand)]
pub enum WsAction {
    /// Create a workstation; prints its id and node once it is placed.
    Create {
        /// A display name.
        #[arg(long)]
        name: Option<String>,
        /// Reserved CPUs (e.g. 1, 0.5, 500m).
        #[arg(long, default_value = "1", value_parser = parse_cpu_millis)]
        cpu: u64,
        /// Reserved memory (e.g. 1GiB, 512MiB).
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        mem: u64,
        /// Burst CPU ceiling (default: the reservation).
        #[arg(long, value_parser = parse_cpu_millis)]
        cpu_limit: Option<u64>,
        /// Burst memory ceiling (default: the reservation).
        #[arg(long, value_parser = parse_size)]
        mem_limit: Option<u64>,
        /// Network policy.
        #[arg(long, value_enum)]
        network: Option<NetworkPolicy>,
        /// Return as soon as the workstation is accepted, without waiting for it to run.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the workstation to run.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        wait_timeout: Duration,
    },
    /// List workstations.
    Ls,
    /// Show one workstation.
    Show {
        /// The workstation id.
        id: String,
    },
    /// Change a workstation's reservation or limit (without moving it when its node has room).
    Resize {
        /// The workstation id.
        id: String,
        /// Reserved CPUs.
        #[arg(long, value_parser = parse_cpu_millis)]
        cpu: Option<u64>,
        /// Reserved memory.
        #[arg(long, value_parser = parse_size)]
        mem: Option<u64>,
        /// Burst CPU ceiling.
        #[arg(long, value_parser = parse_cpu_millis)]
        cpu_limit: Option<u64>,
        /// Burst memory ceiling.
        #[arg(long, value_parser = parse_size)]
        mem_limit: Option<u64>,
    },
    /// Delete a workstation: its processes, sandbox, home volume and log.
    Rm {
        /// The workstation id.
        id: String,
    },
}

/// `shoal exec WS [--restart P] [--env K=V]... -- CMD ARGS...`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    conn: ConnectionArgs,
    /// The workstation id.
    ws: String,
    /// Restart policy.
    #[arg(long, value_enum)]
    restart: Option<RestartPolicy>,
    /// An environment variable (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory inside the workstation.
    #[arg(long)]
    cwd: Option<String>,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    argv: Vec<String>,
}

/// `shoal ps WS`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    #[command(flatten)]
    conn: ConnectionArgs,
    /// The workstation id.
    ws: String,
}

/// `shoal kill WS PROC [--signal TERM]`.
#[derive(Debug, clap::Args)]
pub struct KillArgs {
    #[command(flatten)]
    conn: ConnectionArgs,
    /// The workstation id.
    ws: String,
    /// The process id.
    proc: String,
    /// The signal: TERM, KILL, INT, HUP, QUIT, USR1 or USR2.
    #[arg(long, default_value = "TERM")]
    signal: String,
}

/// Parses `K=V` for `--env`.
pub fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!(
            "invalid environment variable {text:?}: expected K=V"
        )),
    }
}

/// `shoal ws ...`.
pub fn ws(args: &WsArgs) -> CliResult<u8> {
    let client = args.conn.client()?;
    match &args.action {
        WsAction::Create {
            name,
            cpu,
            mem,
            cpu_limit,
            mem_limit,
            network,
            no_wait,
            wait_timeout,
        } => {
            let request = CreateWorkstationRequest {
                name: name.clone(),
                cpu_millis: *cpu,
                memory_bytes: *mem,
                cpu_limit_millis: *cpu_limit,
                memory_limit_bytes: *mem_limit,
                network: *network,
            };
            let mut workstation = create_when_room(&client, &request, *no_wait, *wait_timeout)?;
            let id = text(&workstation, &["id"]);
            if !*no_wait && text(&workstation, &["state"]) == "pending" {
                let mut progress =
                    Progress::new(format!("waiting for workstation {id} to be placed:"));
                let attempts = u32::try_from(wait_timeout.as_millis() / 250)
                    .unwrap_or(u32::MAX)
                    .max(1);
                let path = format!("/v1/workstations/{}", path_segment(&id));
                let placed = wait_for(
                    &mut progress,
                    attempts,
                    Duration::from_millis(250),
                    |detail| {
                        let current = client.get(&path)?;
                        let state = text(&current, &["state"]);
                        *detail = pending_reason(&current)
                            .map_or_else(|| state.clone(), |reason| format!("{state}: {reason}"));
                        Ok((state != "pending").then_some(current))
                    },
                )?;
                match placed {
                    Some(current) => workstation = current,
                    None => {
                        return Err(CliError::Other(format!(
                            "workstation {id} is still pending after {}",
                            humantime::format_duration(*wait_timeout)
                        )))
                    }
                }
            }
            if args.conn.json {
                print_json(&workstation);
            } else {
                println!("{id}");
                eprintln!(
                    "workstation {id} is {} on node {} (generation {})",
                    text(&workstation, &["state"]),
                    text(&workstation, &["node"]),
                    text(&workstation, &["generation"])
                );
            }
            if text(&workstation, &["state"]) == "failed" {
                return Err(CliError::Other(format!(
                    "workstation {id} failed on node {}",
                    text(&workstation, &["node"])
                )));
            }
            Ok(exit_code::OK)
        }
        WsAction::Ls => {
            let answer = client.get("/v1/workstations")?;
            if args.conn.json {
                print_json(&answer);
                return Ok(exit_code::OK);
            }
            let mut table = Table::new(&[
                "ID", "NAME", "TENANT", "STATE", "NODE", "GEN", "CPU", "MEMORY", "NETWORK",
            ]);
            for workstation in items(&answer, "workstations") {
                table.row(vec![
                    text(workstation, &["id"]),
                    text(workstation, &["name"]),
                    text(workstation, &["tenant"]),
                    text(workstation, &["state"]),
                    text(workstation, &["node"]),
                    text(workstation, &["generation"]),
                    format!(
                        "{}/{}",
                        cpu(workstation, &["cpu_millis"]),
                        cpu(workstation, &["cpu_limit_millis"])
                    ),
                    format!(
                        "{}/{}",
                        size(workstation, &["memory_bytes"]),
                        size(workstation, &["memory_limit_bytes"])
                    ),
                    text(workstation, &["network"]),
                ]);
            }
            print!("{}", table.render());
            // Why each pending one waits, under the table (a column would be too wide).
            for workstation in items(&answer, "workstations") {
                if let Some(reason) = pending_reason(workstation) {
                    println!("{} is pending: {reason}", text(workstation, &["id"]));
                }
            }
            Ok(exit_code::OK)
        }
        WsAction::Show { id } => {
            let workstation = client.get(&format!("/v1/workstations/{}", path_segment(id)))?;
            if args.conn.json {
                print_json(&workstation);
            } else {
                print_workstation(&workstation);
            }
            Ok(exit_code::OK)
        }
        WsAction::Resize {
            id,
            cpu,
            mem,
            cpu_limit,
            mem_limit,
        } => {
            if cpu.is_none() && mem.is_none() && cpu_limit.is_none() && mem_limit.is_none() {
                return Err(CliError::Usage(
                    "ws resize needs at least one of --cpu, --mem, --cpu-limit, --mem-limit".into(),
                ));
            }
            let request = ResizeWorkstationRequest {
                cpu_millis: *cpu,
                memory_bytes: *mem,
                cpu_limit_millis: *cpu_limit,
                memory_limit_bytes: *mem_limit,
            };
            let workstation =
                client.patch(&format!("/v1/workstations/{}", path_segment(id)), &request)?;
            if args.conn.json {
                print_json(&workstation);
            } else {
                print_workstation(&workstation);
            }
            Ok(exit_code::OK)
        }
        WsAction::Rm { id } => {
            let answer = client.delete(&format!("/v1/workstations/{}", path_segment(id)), &[])?;
            if args.conn.json {
                print_json(&answer);
            } else {
                println!("workstation {id} deleted");
            }
            Ok(exit_code::OK)
        }
    }
}

/// `POST /v1/workstations`; while the answer is 503 (no room or no leader right now, SPEC.md)
/// and `--no-wait` is not given, tries again every second with progress shown, up to
/// `wait_timeout`.
fn create_when_room(
    client: &ApiClient,
    request: &CreateWorkstationRequest,
    no_wait: bool,
    wait_timeout: Duration,
) -> CliResult<Value> {
    let first = client.post("/v1/workstations", request);
    match first {
        Err(CliError::Api { status: 503, .. }) if !no_wait => {}
        other => return other,
    }
    let mut progress = Progress::new("waiting for room in the pool:");
    let attempts = u32::try_from(wait_timeout.as_secs())
        .unwrap_or(u32::MAX)
        .max(1);
    let mut last_error = None;
    let created = wait_for(
        &mut progress,
        attempts,
        Duration::from_secs(1),
        |detail| match client.post("/v1/workstations", request) {
            Ok(created) => Ok(Some(created)),
            Err(error @ CliError::Api { status: 503, .. }) => {
                *detail = error.to_string();
                last_error = Some(error);
                Ok(None)
            }
            Err(error) => Err(error),
        },
    )?;
    match (created, last_error) {
        (Some(created), _) => Ok(created),
        (None, Some(error)) => Err(error),
        (None, None) => Err(CliError::Other("no room in the pool".into())),
    }
}

/// Why a workstation is pending, when its answer says (`pending_reason`, only while
/// `pending`).
fn pending_reason(workstation: &Value) -> Option<String> {
    workstation
        .get("pending_reason")
        .and_then(Value::as_str)
        .filter(|reason| !reason.is_empty())
        .map(str::to_string)
}

/// A workstation as a key/value block.
fn print_workstation(workstation: &Value) {
    print!("{}", workstation_block(workstation));
}

/// The key/value block of a workstation; a `pending` one gets a `pending` row saying why.
fn workstation_block(workstation: &Value) -> String {
    let mut block = Table::new(&["", ""]);
    let mut rows: Vec<(&str, String)> = vec![
        ("id", text(workstation, &["id"])),
        ("name", text(workstation, &["name"])),
        ("tenant", text(workstation, &["tenant"])),
        ("state", text(workstation, &["state"])),
        ("node", text(workstation, &["node"])),
        ("generation", text(workstation, &["generation"])),
        (
            "cpu",
            format!(
                "{} reserved, {} limit",
                cpu(workstation, &["cpu_millis"]),
                cpu(workstation, &["cpu_limit_millis"])
            ),
        ),
        (
            "memory",
            format!(
                "{} reserved, {} limit",
                size(workstation, &["memory_bytes"]),
                size(workstation, &["memory_limit_bytes"])
            ),
        ),
        ("network", text(workstation, &["network"])),
        ("isolation", text(workstation, &["isolation"])),
        ("home volume", text(workstation, &["home_volume"])),
        ("created", timestamp(workstation, &["created_unix_ms"])),
    ];
    if let Some(reason) = pending_reason(workstation) {
        rows.insert(4, ("pending", reason));
    }
    for (label, value) in rows {
        block.row(vec![label.to_string(), value]);
    }
    let rendered = block.render();
    rendered
        .split_once('\n')
        .map_or("", |(_, rest)| rest)
        .to_string()
}

/// `shoal exec`.
pub fn exec(args: &ExecArgs) -> CliResult<u8> {
    let client = args.conn.client()?;
    let env: BTreeMap<String, String> = args.env.iter().cloned().collect();
    let request = CreateProcessRequest {
        argv: args.argv.clone(),
        env: (!env.is_empty()).then_some(env),
        cwd: args.cwd.clone(),
        restart: args.restart,
    };
    let process = client.post(
        &format!("/v1/workstations/{}/processes", path_segment(&args.ws)),
        &request,
    )?;
    if args.conn.json {
        print_json(&process);
    } else {
        println!("{}", text(&process, &["id"]));
    }
    Ok(exit_code::OK)
}

/// `shoal ps`.
pub fn ps(args: &PsArgs) -> CliResult<u8> {
    let client = args.conn.client()?;
    let answer = client.get(&format!(
        "/v1/workstations/{}/processes",
        path_segment(&args.ws)
    ))?;
    if args.conn.json {
        print_json(&answer);
        return Ok(exit_code::OK);
    }
    let mut table = Table::new(&[
        "ID", "STATE", "EXIT", "SIGNAL", "RESTARTS", "POLICY", "COMMAND", "REASON",
    ]);
    for process in items(&answer, "processes") {
        let command = process
            .get("argv")
            .and_then(Value::as_array)
            .map(|argv| {
                argv.iter()
                    .map(|a| a.as_str().unwrap_or("?").to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "-".to_string());
        table.row(vec![
            text(process, &["id"]),
            text(process, &["state"]),
            text(process, &["exit_code"]),
            text(process, &["signal"]),
            text(process, &["restarts"]),
            text(process, &["restart"]),
            command.chars().take(60).collect(),
            text(process, &["reason"]),
        ]);
    }
    print!("{}", table.render());
    Ok(exit_code::OK)
}

/// `shoal kill`.
pub fn kill(args: &KillArgs) -> CliResult<u8> {
    let client = args.conn.client()?;
    let signal = args.signal.trim_start_matches("SIG").to_ascii_uppercase();
    let answer = client.delete(
        &format!(
            "/v1/workstations/{}/processes/{}",
            path_segment(&args.ws),
            path_segment(&args.proc)
        ),
        &[("signal", signal.clone())],
    )?;
    if args.conn.json {
        print_json(&answer);
    } else {
        println!("sent {signal} to process {} of {}", args.proc, args.ws);
    }
    Ok(exit_code::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_need_a_key() {
        assert_eq!(parse_env("A=1"), Ok(("A".into(), "1".into())));
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert!(parse_env("=1").is_err());
        assert!(parse_env("A").is_err());
    }

    #[test]
    fn a_pending_workstation_shows_why_under_its_state_and_a_running_one_does_not() {
        let reason = "no ready worker node has 500 millicores and 64 MiB free";
        let pending = serde_json::json!({
            "id": "ws-2", "state": "pending", "node": null, "pending_reason": reason,
        });
        let block = workstation_block(&pending);
        let lines: Vec<&str> = block.lines().collect();
        let state_line = lines.iter().position(|line| line.starts_with("state"));
        let reason_line = lines.iter().position(|line| line.starts_with("pending"));
        assert!(state_line.is_some(), "{block}");
        assert_eq!(reason_line, state_line.map(|at| at + 1), "{block}");
        assert!(block.contains(reason), "{block}");
        let running = serde_json::json!({"id": "ws-3", "state": "running", "node": "node-1"});
        assert!(!workstation_block(&running).contains("pending"));
        assert_eq!(pending_reason(&running), None);
    }
}
