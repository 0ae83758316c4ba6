//! Cluster-level commands: `status`, `nodes` (ls, drain, remove), `token`, `keys`, `audit`.

use std::time::Duration;

use serde_json::Value;

use super::error::{exit_code, CliError, CliResult};
use super::progress::{wait_for, Progress};
use super::render::{cpu, items, number, print_json, size, text, timestamp, Table};
use super::units::parse_duration;
use super::ConnectionArgs;
use crate::api_types::{CreateKeyRequest, CreateTokenRequest};

/// `shoal status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: ConnectionArgs,
}

/// `shoal nodes [drain ID | remove ID]`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodesArgs {
    #[command(flatten)]
    conn: ConnectionArgs,
    #[command(subcommand)]
    action: Option<NodesAction>,
}

/// What `shoal nodes` does besides listing.
#[derive(Debug, clap::Subcommand)]
pub enum NodesAction {
    /// List the nodes (the default).
    Ls,
    /// Take no new placements on a node and move its workstations away, one by one.
    Drain {
        /// The node id.
        id: String,
        /// Return once the drain is accepted instead of waiting for the node to empty.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the node to empty.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        wait_timeout: Duration,
    },
    /// Remove a node from the cluster (its mesh peer is removed everywhere).
    Remove {
        /// The node id.
        id: String,
    },
}

/// `shoal token create|ls|revoke`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    conn: ConnectionArgs,
    #[command(subcommand)]
    action: TokenAction,
}

#[cfg(test)]
impl StatusArgs {
    /// The connection flags (for tests of the flag layout).
    pub fn conn(&self) -> &ConnectionArgs {
        &self.conn
    }
}

#[cfg(test)]
impl TokenArgs {
    /// The connection flags (for tests of the flag layout).
    pub fn conn(&self) -> &ConnectionArgs {
        &self.conn
    }
}

/// Join token actions.
#[derive(Debug, clap::Subcommand)]
pub enum TokenAction {
    /// Create a join token; its text is printed once.
    Create {
        /// How long the token is valid (e.g. 10m, 1h).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// How many joins it admits (default: unlimited until it expires).
        #[arg(long)]
        uses: Option<u32>,
        /// Roles of the node it admits: worker, server or server,worker.
        #[arg(long)]
        role: Option<String>,
    },
    /// List join tokens (never their text).
    Ls,
    /// Revoke a join token.
    Revoke {
        /// The token id.
        id: String,
    },
}

/// `shoal keys create|ls|revoke`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(flatten)]
    conn: ConnectionArgs,
    #[command(subcommand)]
    action: KeysAction,
}

/// API key actions.
#[derive(Debug, clap::Subcommand)]
pub enum KeysAction {
    /// Create an API key for a tenant; the full key is printed once and never again.
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// Make it an admin key (sees all tenants, manages nodes, tokens and keys).
        #[arg(long)]
        admin: bool,
    },
    /// List API keys (prefixes only).
    Ls,
    /// Revoke an API key.
    Revoke {
        /// The key id.
        id: String,
    },
}

/// `shoal audit [--since T]`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    conn: ConnectionArgs,
    /// Only entries since this long ago (e.g. 1h) or since this time (RFC 3339).
    #[arg(long, value_parser = parse_since)]
    since: Option<Since>,
    /// At most this many entries (newest last).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
}

/// A `--since` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This long before now.
    Ago(Duration),
    /// This instant, Unix ms.
    UnixMs(u64),
}

impl Since {
    /// The instant as Unix ms, given the current time.
    pub fn unix_ms(self, now_unix_ms: u64) -> u64 {
        match self {
            Since::Ago(duration) => {
                now_unix_ms.saturating_sub(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
            }
            Since::UnixMs(ms) => ms,
        }
    }
}

/// Parses `--since`: a duration ago (`1h`) or an RFC 3339 time (`2026-01-02T03:04:05Z`).
pub fn parse_since(text: &str) -> Result<Since, String> {
    if let Ok(duration) = parse_duration(text) {
        return Ok(Since::Ago(duration));
    }
    let time = humantime::parse_rfc3339_weak(text.trim()).map_err(|_| {
        format!("invalid time {text:?}: expected a duration ago (1h) or an RFC 3339 time")
    })?;
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("invalid time {text:?}: before 1970"))?
        .as_millis();
    Ok(Since::UnixMs(u64::try_from(ms).unwrap_or(u64::MAX)))
}

/// `shoal status`.
pub fn status(args: &StatusArgs) -> CliResult<u8> {
    let client = args.conn.client()?;
    let cluster = client.get("/v1/cluster")?;
    if args.conn.json {
        print_json(&cluster);
        return Ok(exit_code::OK);
    }
    let mut block = Table::new(&["", ""]);
    for (label, paths) in [
        ("cluster", &["cluster_id"][..]),
        ("leader", &["leader"]),
        ("term", &["term"]),
        ("servers", &["servers"]),
        ("answered by", &["answered_by"]),
    ] {
        block.row(vec![label.to_string(), text(&cluster, paths)]);
    }
    print!("{}", skip_header(&block.render()));
    println!();
    let mut pool = Table::new(&["POOL", "CAPACITY", "RESERVED", "USED"]);
    pool.row(vec![
        "cpu".into(),
        cpu(&cluster, &["pool.cpu_millis.capacity"]),
        cpu(&cluster, &["pool.cpu_millis.reserved"]),
        cpu(&cluster, &["pool.cpu_millis.used"]),
    ]);
    pool.row(vec![
        "memory".into(),
        size(&cluster, &["pool.memory_bytes.capacity"]),
        size(&cluster, &["pool.memory_bytes.reserved"]),
        size(&cluster, &["pool.memory_bytes.used"]),
    ]);
    print!("{}", pool.render());
    Ok(exit_code::OK)
}

/// A table rendered without its header line (for key/value blocks).
fn skip_header(rendered: &str) -> &str {
    rendered.split_once('\n').map_or("", |(_, rest)| rest)
}

/// `shoal nodes ...`.
pub fn nodes(args: &NodesArgs) -> CliResult<u8> {
    let client = args.conn.client()?;
    match &args.action {
        None | Some(NodesAction::Ls) => {
            let answer = client.get("/v1/nodes")?;
            if args.conn.json {
                print_json(&answer);
                return Ok(exit_code::OK);
            }
            let mut table = Table::new(&[
                "ID",
                "ROLE",
                "STATE",
                "MESH",
                "API",
                "CPU CAP/RES/USED",
                "MEMORY CAP/RES/USED",
                "WS",
                "ISOLATION",
            ]);
            for node in items(&answer, "nodes") {
                table.row(vec![
                    text(node, &["id"]),
                    text(node, &["role", "roles"]),
                    text(node, &["state"]),
                    text(node, &["mesh_addr", "mesh_address"]),
                    text(node, &["api_addr"]),
                    format!(
                        "{}/{}/{}",
                        cpu(node, &["capacity.cpu_millis"]),
                        cpu(node, &["reserved.cpu_millis"]),
                        cpu(node, &["used.cpu_millis"])
                    ),
                    format!(
                        "{}/{}/{}",
                        size(node, &["capacity.memory_bytes"]),
                        size(node, &["reserved.memory_bytes"]),
                        size(node, &["used.memory_bytes"])
                    ),
                    text(node, &["n_workstations"]),
                    text(node, &["isolation"]),
                ]);
            }
            print!("{}", table.render());
            Ok(exit_code::OK)
        }
        Some(NodesAction::Drain {
            id,
            no_wait,
            wait_timeout,
        }) => drain(&client, args.conn.json, id, *no_wait, *wait_timeout),
        Some(NodesAction::Remove { id }) => {
            let answer = client.delete(&format!("/v1/nodes/{}", path_segment(id)), &[])?;
            if args.conn.json {
                print_json(&answer);
            } else {
                println!("node {id} removed");
            }
            Ok(exit_code::OK)
        }
    }
}

/// How often `shoal nodes drain` looks at the node.
const DRAIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a `POST /v1/nodes/{id}/drain` answer means for the waiting CLI: accepted (`None`), or
/// a 503 (no room for the node's workstations elsewhere yet, or no leader right now): progress
/// to wait through, with the API's message (`Some`). Any other error ends the command.
fn drain_answer(answer: CliResult<Value>) -> CliResult<Option<String>> {
    match answer {
        Ok(_) => Ok(None),
        Err(CliError::Api {
            status: 503,
            message,
            ..
        }) => Ok(Some(message)),
        Err(other) => Err(other),
    }
}

/// Where a drain stands, from the node as `GET /v1/nodes/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DrainLook {
    /// Not draining (yet): the drain request was not committed; it is asked again.
    NotDraining(String),
    /// Draining (or left) with this many workstations still on it.
    Moving(u64),
}

fn look_at(node: &Value) -> DrainLook {
    let state = text(node, &["state"]);
    match state.as_str() {
        "draining" | "left" => DrainLook::Moving(number(node, &["n_workstations"]).unwrap_or(0)),
        _ => DrainLook::NotDraining(state),
    }
}

/// The progress detail shown while waiting: how many workstations are left and, after a 503,
/// what the cluster said it waits for.
fn drain_detail(look: &DrainLook, waiting: Option<&str>) -> String {
    let mut detail = match look {
        DrainLook::NotDraining(state) => format!("node is {state}, asking again"),
        DrainLook::Moving(remaining) => format!("{remaining} workstation(s) left"),
    };
    if let Some(why) = waiting {
        detail.push_str(&format!("; waiting: {why}"));
    }
    detail
}

/// `shoal nodes drain ID`: commits the drain, then waits (at most `wait_timeout`) until the
/// node hosts nothing. A 503 from the drain request or while looking (no room elsewhere yet,
/// no leader for a moment) is progress, not failure: the command keeps looking and says what
/// it waits for, on a terminal as a spinner, otherwise as one stderr line per change.
fn drain(
    client: &super::client::ApiClient,
    json: bool,
    id: &str,
    no_wait: bool,
    wait_timeout: Duration,
) -> CliResult<u8> {
    use std::io::IsTerminal as _;
    let drain_path = format!("/v1/nodes/{}/drain", path_segment(id));
    let node_path = format!("/v1/nodes/{}", path_segment(id));
    let first = client.post(&drain_path, &Value::Null);
    if json {
        if let Ok(answer) = &first {
            print_json(answer);
        }
    }
    let mut waiting = drain_answer(first)?;
    if no_wait {
        if let Some(why) = &waiting {
            // Accepted only if the node shows it: a 503 may also mean nothing was committed.
            match client.get(&node_path).map(|node| look_at(&node)) {
                Ok(DrainLook::Moving(_)) => {}
                _ => {
                    return Err(CliError::Other(format!(
                        "node {id}: the drain was not accepted yet: {why}"
                    )))
                }
            }
        }
        if !json {
            match &waiting {
                Some(why) => println!("node {id} is draining (waiting: {why})"),
                None => println!("node {id} is draining"),
            }
        }
        return Ok(exit_code::OK);
    }
    let lines = !std::io::stderr().is_terminal();
    let attempts = u32::try_from(wait_timeout.as_secs().max(1)).unwrap_or(u32::MAX);
    let mut progress = Progress::new(format!("draining node {id}:"));
    let mut last_detail = String::new();
    let mut last_remaining: Option<u64> = None;
    let done = wait_for(&mut progress, attempts, DRAIN_POLL_INTERVAL, |detail| {
        let look = match client.get(&node_path) {
            Ok(node) => Some(look_at(&node)),
            Err(CliError::Api {
                status: 503,
                message,
                ..
            }) => {
                waiting = Some(message);
                None
            }
            Err(other) => return Err(other),
        };
        match &look {
            Some(DrainLook::NotDraining(_)) => {
                waiting = drain_answer(client.post(&drain_path, &Value::Null))?;
            }
            // A workstation moved: what the cluster said it waited for is old news.
            Some(DrainLook::Moving(remaining)) => {
                if last_remaining.is_some_and(|last| *remaining < last) {
                    waiting = None;
                }
                last_remaining = Some(*remaining);
            }
            None => {}
        }
        *detail = match &look {
            Some(look) => drain_detail(look, waiting.as_deref()),
            None => format!("waiting: {}", waiting.as_deref().unwrap_or("no answer")),
        };
        let finished = look == Some(DrainLook::Moving(0));
        if lines && !finished && *detail != last_detail {
            eprintln!("draining node {id}: {detail}");
        }
        last_detail.clone_from(detail);
        Ok(finished.then_some(()))
    })?;
    if done.is_none() {
        return Err(CliError::Other(format!(
            "node {id} is not drained after {} ({}); it keeps draining",
            humantime::format_duration(wait_timeout),
            if last_detail.is_empty() {
                "no answer".to_string()
            } else {
                last_detail
            }
        )));
    }
    if !json {
        println!("node {id} is drained");
    }
    Ok(exit_code::OK)
}

/// `shoal token ...`.
pub fn token(args: &TokenArgs) -> CliResult<u8> {
    let client = args.conn.client()?;
    match &args.action {
        TokenAction::Create { ttl, uses, role } => {
            let request = CreateTokenRequest {
                ttl_ms: ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                uses: *uses,
                role: role.clone(),
            };
            let answer = client.post("/v1/tokens", &request)?;
            if args.conn.json {
                print_json(&answer);
            } else {
                println!("{}", text(&answer, &["token"]));
                eprintln!(
                    "join token {} (role {}, expires {}); it is shown only now",
                    text(&answer, &["id"]),
                    text(&answer, &["role"]),
                    timestamp(&answer, &["expires_unix_ms"])
                );
            }
            Ok(exit_code::OK)
        }
        TokenAction::Ls => {
            let answer = client.get("/v1/tokens")?;
            if args.conn.json {
                print_json(&answer);
                return Ok(exit_code::OK);
            }
            let mut table = Table::new(&[
                "ID", "PREFIX", "ROLE", "CREATED", "EXPIRES", "USES", "REVOKED",
            ]);
            for token in items(&answer, "tokens") {
                table.row(vec![
                    text(token, &["id"]),
                    text(token, &["prefix"]),
                    text(token, &["role"]),
                    timestamp(token, &["created_unix_ms"]),
                    timestamp(token, &["expires_unix_ms"]),
                    format!(
                        "{}/{}",
                        text(token, &["uses"]),
                        number(token, &["uses_max"]).map_or("∞".to_string(), |n| n.to_string())
                    ),
                    text(token, &["revoked"]),
                ]);
            }
            print!("{}", table.render());
            Ok(exit_code::OK)
        }
        TokenAction::Revoke { id } => {
            let answer = client.delete(&format!("/v1/tokens/{}", path_segment(id)), &[])?;
            if args.conn.json {
                print_json(&answer);
            } else {
                println!("token {id} revoked");
            }
            Ok(exit_code::OK)
        }
    }
}

/// `shoal keys ...`.
pub fn keys(args: &KeysArgs) -> CliResult<u8> {
    let client = args.conn.client()?;
    match &args.action {
        KeysAction::Create { tenant, admin } => {
            let request = CreateKeyRequest {
                tenant: tenant.clone(),
                admin: *admin,
            };
            let answer = client.post("/v1/keys", &request)?;
            if args.conn.json {
                print_json(&answer);
            } else {
                println!("{}", text(&answer, &["key"]));
                eprintln!(
                    "API key {} for tenant {}{}; it is shown only now",
                    text(&answer, &["id"]),
                    text(&answer, &["tenant"]),
                    if *admin { " (admin)" } else { "" }
                );
            }
            Ok(exit_code::OK)
        }
        KeysAction::Ls => {
            let answer = client.get("/v1/keys")?;
            if args.conn.json {
                print_json(&answer);
                return Ok(exit_code::OK);
            }
            let mut table = Table::new(&["ID", "PREFIX", "TENANT", "ADMIN", "CREATED", "REVOKED"]);
            for key in items(&answer, "keys") {
                table.row(vec![
                    text(key, &["id"]),
                    text(key, &["prefix"]),
                    text(key, &["tenant"]),
                    text(key, &["admin"]),
                    timestamp(key, &["created_unix_ms"]),
                    text(key, &["revoked"]),
                ]);
            }
            print!("{}", table.render());
            Ok(exit_code::OK)
        }
        KeysAction::Revoke { id } => {
            let answer = client.delete(&format!("/v1/keys/{}", path_segment(id)), &[])?;
            if args.conn.json {
                print_json(&answer);
            } else {
                println!("key {id} revoked");
            }
            Ok(exit_code::OK)
        }
    }
}

/// `shoal audit`.
pub fn audit(args: &AuditArgs) -> CliResult<u8> {
    let client = args.conn.client()?;
    let mut query = Vec::new();
    if let Some(since) = args.since {
        query.push((
            "since_unix_ms",
            since.unix_ms(crate::clock::now_unix_ms()).to_string(),
        ));
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    let answer = client.get_query("/v1/audit", &query)?;
    if args.conn.json {
        print_json(&answer);
        return Ok(exit_code::OK);
    }
    let mut table = Table::new(&[
        "SEQ", "TIME", "ACTOR", "TENANT", "ACTION", "RESOURCE", "OUTCOME",
    ]);
    for entry in items(&answer, "entries") {
        table.row(vec![
            text(entry, &["seq"]),
            timestamp(entry, &["time_unix_ms", "time"]),
            text(entry, &["actor"]),
            text(entry, &["tenant"]),
            text(entry, &["action"]),
            text(entry, &["resource"]),
            text(entry, &["outcome"]),
        ]);
    }
    print!("{}", table.render());
    Ok(exit_code::OK)
}

/// An id as one URL path segment: characters that would change the path are escaped.
pub fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_duration_ago_or_a_time() {
        assert_eq!(parse_since("1h"), Ok(Since::Ago(Duration::from_secs(3600))));
        assert_eq!(
            parse_since("1970-01-01T00:00:10Z"),
            Ok(Since::UnixMs(10_000))
        );
        assert!(parse_since("yesterday").is_err());
        assert_eq!(Since::Ago(Duration::from_secs(1)).unix_ms(5_000), 4_000);
        assert_eq!(Since::Ago(Duration::from_secs(10)).unix_ms(5_000), 0);
    }

    fn api_error(status: u16, message: &str) -> CliError {
        CliError::Api {
            status,
            code: "x".to_string(),
            message: message.to_string(),
        }
    }

    #[test]
    fn a_503_from_the_drain_request_is_progress_and_any_other_error_ends_the_command() {
        assert_eq!(drain_answer(Ok(Value::Null)).ok(), Some(None));
        assert_eq!(
            drain_answer(Err(api_error(503, "waiting for room"))).ok(),
            Some(Some("waiting for room".to_string()))
        );
        for status in [400, 404, 409, 500] {
            assert!(
                drain_answer(Err(api_error(status, "no"))).is_err(),
                "{status}"
            );
        }
        assert!(drain_answer(Err(CliError::Unreachable {
            addr: "a".into(),
            reason: "b".into()
        }))
        .is_err());
    }

    #[test]
    fn a_drain_is_done_when_the_node_hosts_nothing_and_says_what_it_waits_for() {
        let node = |state: &str, n: u64| serde_json::json!({"state": state, "n_workstations": n});
        assert_eq!(look_at(&node("draining", 0)), DrainLook::Moving(0));
        assert_eq!(look_at(&node("left", 0)), DrainLook::Moving(0));
        assert_eq!(look_at(&node("draining", 2)), DrainLook::Moving(2));
        assert_eq!(
            look_at(&node("ready", 2)),
            DrainLook::NotDraining("ready".to_string())
        );
        assert_eq!(
            drain_detail(&DrainLook::Moving(2), Some("no room for ws-3")),
            "2 workstation(s) left; waiting: no room for ws-3"
        );
        assert_eq!(
            drain_detail(&DrainLook::Moving(1), None),
            "1 workstation(s) left"
        );
    }

    #[test]
    fn ids_cannot_escape_their_path_segment() {
        assert_eq!(path_segment("ws-1_a.b"), "ws-1_a.b");
        assert_eq!(path_segment("../keys"), "..%2Fkeys");
        assert_eq!(path_segment("a b?c"), "a%20b%3Fc");
    }
}
