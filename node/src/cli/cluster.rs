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
        }) => {
            let answer = client.post(
                &format!("/v1/nodes/{}/drain", path_segment(id)),
                &Value::Null,
            )?;
            if args.conn.json {
                print_json(&answer);
            }
            if *no_wait {
                if !args.conn.json {
                    println!("node {id} is draining");
                }
                return Ok(exit_code::OK);
            }
            let interval = Duration::from_secs(1);
            let attempts = u32::try_from(wait_timeout.as_secs().max(1)).unwrap_or(u32::MAX);
            let mut progress = Progress::new(format!("draining node {id}:"));
            let done = wait_for(&mut progress, attempts, interval, |detail| {
                let node = client.get(&format!("/v1/nodes/{}", path_segment(id)))?;
                let remaining = number(&node, &["n_workstations"]).unwrap_or(0);
                *detail = format!("{remaining} workstation(s) left");
                Ok((remaining == 0).then_some(()))
            })?;
            if done.is_none() {
                return Err(CliError::Other(format!(
                    "node {id} still hosts workstations after {}; it keeps draining",
                    humantime::format_duration(*wait_timeout)
                )));
            }
            if !args.conn.json {
                println!("node {id} is drained");
            }
            Ok(exit_code::OK)
        }
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

    #[test]
    fn ids_cannot_escape_their_path_segment() {
        assert_eq!(path_segment("ws-1_a.b"), "ws-1_a.b");
        assert_eq!(path_segment("../keys"), "..%2Fkeys");
        assert_eq!(path_segment("a b?c"), "a%20b%3Fc");
    }
}
