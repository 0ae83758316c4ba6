//! Test harness: real `shoal agent` processes on loopback with free ports, each in its own
//! temporary data dir, killed (and its dir removed) on drop, also when a test fails.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// How long an agent may take to print its ready line.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs a tracing subscriber once, for the phase logs.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// A free TCP port on loopback (the listener is closed again; the race is acceptable here).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or(0)
}

/// A free UDP port on loopback.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map(|addr| addr.port())
        .unwrap_or(0)
}

/// Writes `toml` to `dir/shoal.toml` and returns that path, for `--config`.
pub fn write_config(dir: &Path, toml: impl AsRef<str>) -> anyhow::Result<String> {
    let path = dir.join("shoal.toml");
    std::fs::write(&path, toml.as_ref()).context("writing the config")?;
    Ok(path.to_string_lossy().to_string())
}

/// `shoal agent` on `data_dir` with its API on `127.0.0.1:api_port` and its userspace mesh
/// on UDP `127.0.0.1:listen_port`, logging warnings; the caller adds options and stdio.
pub fn agent_command(data_dir: &Path, api_port: u16, listen_port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shoal"));
    command
        .arg("agent")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--api")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{listen_port}"))
        .arg("--mesh")
        .arg("userspace")
        .env("RUST_LOG", "warn");
    command
}

/// One running `shoal agent`.
pub struct Agent {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The API port.
    pub api_port: u16,
    /// The WireGuard UDP port.
    pub listen_port: u16,
    /// The node's data dir.
    pub data_dir: PathBuf,
    /// The node id from its ready line.
    pub node_id: String,
    /// The cgroup tree of the node's sandboxes, from its ready line.
    pub cgroup_name: String,
    _temp: Option<tempfile::TempDir>,
}

impl Agent {
    /// Bootstraps a new single-node cluster in a fresh temporary data dir.
    pub fn bootstrap() -> anyhow::Result<Agent> {
        let temp = tempfile::tempdir().context("temp dir")?;
        let data_dir = temp.path().join("node");
        let mut agent = Agent::start(&data_dir, &["--bootstrap"], free_tcp_port())?;
        agent._temp = Some(temp);
        Ok(agent)
    }

    /// Bootstraps with a config file holding `toml`.
    pub fn bootstrap_with_config(toml: &str) -> anyhow::Result<Agent> {
        let temp = tempfile::tempdir().context("temp dir")?;
        let data_dir = temp.path().join("node");
        let config_text = write_config(temp.path(), toml)?;
        let mut agent = Agent::start(
            &data_dir,
            &["--bootstrap", "--config", &config_text],
            free_tcp_port(),
        )?;
        agent._temp = Some(temp);
        Ok(agent)
    }

    /// Starts an agent on `data_dir` with extra flags, serving the API on `api_port`.
    pub fn start(data_dir: &Path, extra: &[&str], api_port: u16) -> anyhow::Result<Agent> {
        Agent::start_with_env(data_dir, extra, api_port, &[])
    }

    /// [`Agent::start`] with extra environment variables for the agent process.
    pub fn start_with_env(
        data_dir: &Path,
        extra: &[&str],
        api_port: u16,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Agent> {
        let listen_port = free_udp_port();
        let mut child = agent_command(data_dir, api_port, listen_port)
            .args(extra)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning shoal agent")?;
        let stdout = child.stdout.take().context("agent stdout")?;
        let (sender, receiver) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let mut agent = Agent {
            child: Some(child),
            base_url: format!("http://127.0.0.1:{api_port}"),
            api_port,
            listen_port,
            data_dir: data_dir.to_path_buf(),
            node_id: String::new(),
            cgroup_name: String::new(),
            _temp: None,
        };
        loop {
            let line = match receiver.recv_timeout(AGENT_START_TIMEOUT) {
                Ok(line) => line,
                Err(_) => bail!("the agent did not print its ready line in time (or exited)"),
            };
            if let Some(rest) = line.strip_prefix("shoal-agent ready node=") {
                agent.node_id = rest.split_whitespace().next().unwrap_or("").to_string();
                agent.cgroup_name = rest
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("cgroup="))
                    .unwrap_or("")
                    .to_string();
                break;
            }
        }
        Ok(agent)
    }

    /// The admin key written at bootstrap.
    pub fn admin_key(&self) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(self.data_dir.join("admin.token"))
            .context("reading admin.token")?;
        Ok(text.trim().to_string())
    }

    /// The agent's process id, while it runs (to pause it with SIGSTOP, for example).
    pub fn pid(&self) -> Option<nix::unistd::Pid> {
        let child = self.child.as_ref()?;
        Some(nix::unistd::Pid::from_raw(i32::try_from(child.id()).ok()?))
    }

    /// Kills the agent with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (at most `timeout`) for a clean exit; returns its exit code.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            bail!("not running");
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let started = shoal_node::clock::monotonic_now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the agent did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client with `key` as its bearer token.
    pub fn client(&self, key: &str) -> Api {
        Api {
            base_url: self.base_url.clone(),
            key: Some(key.to_string()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(70))
                .build()
                .unwrap_or_default(),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        // A SIGKILLed agent cannot remove its cgroups; its sandboxes' processes die with it
        // (pdeathsig) or are killed here, and the `shoal-<node id>` trees go with them, so that
        // the tests leave the host as they found it.
        if self.cgroup_name.starts_with("shoal-") {
            remove_cgroup_trees(&self.cgroup_name);
        }
    }
}

/// Kills whatever is left in the cgroup trees called `cgroup_name` of every mounted controller
/// and removes them, deepest first. Bounded: a directory that will not go after a few tries is
/// left.
pub fn remove_cgroup_trees(cgroup_name: &str) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for controller in controllers.flatten() {
        let root = controller.path().join(cgroup_name);
        if root.is_dir() {
            remove_cgroup_tree(&root);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    // An agent killed while it held a v1 group frozen (its kill sequence is freeze, SIGKILL,
    // thaw) leaves the group frozen, and a frozen parent keeps its whole subtree frozen: thaw
    // top-down, before recursing, so that the SIGKILLs below take effect at every depth.
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    for _attempt in 0..50 {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs
                .lines()
                .filter_map(|line| line.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A thin JSON client for tests.
#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Bearer key, if any.
    pub key: Option<String>,
    /// The HTTP client.
    pub http: reqwest::Client,
}

/// An answer: status and JSON body (`Value::Null` if the body was not JSON).
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Parsed body.
    pub body: Value,
    /// Raw body text.
    pub text: String,
    /// `Retry-After`, if present.
    pub retry_after: Option<String>,
    /// `Content-Type`, if present.
    pub content_type: Option<String>,
}

impl Answer {
    /// The error code of an error answer.
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    /// Without a key.
    pub fn anonymous(&self) -> Api {
        Api {
            key: None,
            ..self.clone()
        }
    }

    /// With another key.
    pub fn with_key(&self, key: &str) -> Api {
        Api {
            key: Some(key.to_string()),
            ..self.clone()
        }
    }

    /// Sends a request with an optional raw body.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.context("sending request")?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after");
        let content_type = header("content-type");
        let text = response.text().await.context("reading body")?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            text,
            retry_after,
            content_type,
        })
    }

    /// GET.
    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.raw(reqwest::Method::GET, path, None).await
    }

    /// POST JSON.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        self.raw(reqwest::Method::POST, path, Some(serde_json::to_vec(body)?))
            .await
    }

    /// PATCH JSON.
    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        self.raw(
            reqwest::Method::PATCH,
            path,
            Some(serde_json::to_vec(body)?),
        )
        .await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        self.raw(reqwest::Method::DELETE, path, None).await
    }

    /// Creates a tenant key with the admin key this client holds.
    pub async fn create_tenant_key(&self, tenant: &str) -> anyhow::Result<String> {
        let answer = self
            .post("/v1/keys", &serde_json::json!({"tenant": tenant}))
            .await?;
        if answer.status != 201 {
            bail!("creating a key: {} {}", answer.status, answer.text);
        }
        answer.body["key"]
            .as_str()
            .map(str::to_string)
            .context("key in answer")
    }
}

/// One parsed Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (empty for the default `message`).
    pub event: String,
    /// `id:`, if the event had one.
    pub id: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// An incremental SSE parser over a byte stream (comments are skipped).
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    current: SseEvent,
    has_fields: bool,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(newline) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=newline).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
            let line = line.strip_suffix('\r').unwrap_or(&line).to_string();
            if line.is_empty() {
                if self.has_fields {
                    events.push(std::mem::take(&mut self.current));
                    self.has_fields = false;
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (
                    field.to_string(),
                    value.strip_prefix(' ').unwrap_or(value).to_string(),
                ),
                None => (line.clone(), String::new()),
            };
            self.has_fields = true;
            match field.as_str() {
                "event" => self.current.event = value,
                "id" => self.current.id = Some(value),
                "data" => {
                    if !self.current.data.is_empty() {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(&value);
                }
                _ => {}
            }
        }
        events
    }
}

/// Waits until `check` answers `Some`, polling every 20 ms, at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let polling = async {
        loop {
            if let Some(value) = check().await? {
                return Ok(value);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(timeout, polling).await {
        Ok(result) => result,
        Err(_) => bail!("condition not met within {timeout:?}"),
    }
}

/// How many processes on the host run exactly `argv` (read from /proc; processes in other
/// PID namespaces are visible here too).
pub fn count_processes_with_argv(argv: &[&str]) -> usize {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|arg| arg.bytes().chain([0u8]))
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .filter(|cmdline| *cmdline == wanted)
        .count()
}

/// A three-server cluster started by a test: node 0 bootstraps, nodes 1 and 2 join with one
/// token; every node heartbeats every 200 ms with the given grace.
pub struct ThreeNodes {
    /// The agents, node 0 first.
    pub agents: Vec<Agent>,
    /// The admin key node 0 wrote at bootstrap.
    pub admin_key: String,
    /// The path of the config file every agent was started with (for restarts).
    pub config: String,
}

/// Starts [`ThreeNodes`] under `root` and returns once all three are voters and `ready` with
/// their capacity committed (within `wait`).
pub async fn start_three_nodes(
    root: &Path,
    heartbeat_grace_ms: u64,
    wait: Duration,
) -> anyhow::Result<ThreeNodes> {
    start_three_nodes_with_env(root, heartbeat_grace_ms, wait, &[]).await
}

/// [`start_three_nodes`] with extra environment variables for every agent process (test
/// seams such as `SHOAL_TEST_TEARDOWN_DELAY_MS`).
pub async fn start_three_nodes_with_env(
    root: &Path,
    heartbeat_grace_ms: u64,
    wait: Duration,
    envs: &[(&str, &str)],
) -> anyhow::Result<ThreeNodes> {
    start_three_nodes_configured(root, heartbeat_grace_ms, "", wait, envs).await
}

/// [`start_three_nodes`] with extra agent options (`toml`) in every node's config file.
pub async fn start_three_nodes_with_config(
    root: &Path,
    heartbeat_grace_ms: u64,
    toml: &str,
    wait: Duration,
) -> anyhow::Result<ThreeNodes> {
    start_three_nodes_configured(root, heartbeat_grace_ms, toml, wait, &[]).await
}

async fn start_three_nodes_configured(
    root: &Path,
    heartbeat_grace_ms: u64,
    toml: &str,
    wait: Duration,
    envs: &[(&str, &str)],
) -> anyhow::Result<ThreeNodes> {
    let config = write_config(
        root,
        format!("heartbeat_interval_ms = 200\nheartbeat_grace_ms = {heartbeat_grace_ms}\n{toml}"),
    )?;
    let node0 = Agent::start_with_env(
        &root.join("node-0"),
        &["--bootstrap", "--config", &config],
        free_tcp_port(),
        envs,
    )?;
    let admin_key = node0.admin_key()?;
    let api0 = node0.client(&admin_key);
    let token = api0
        .post(
            "/v1/tokens",
            &serde_json::json!({"uses": 2, "role": "server,worker"}),
        )
        .await?;
    anyhow::ensure!(token.status == 201, "{}", token.text);
    let token = token.body["token"].as_str().unwrap_or_default().to_string();
    let mut agents = vec![node0];
    for i in 1..3 {
        agents.push(Agent::start_with_env(
            &root.join(format!("node-{i}")),
            &["--join", &token, "--config", &config],
            free_tcp_port(),
            envs,
        )?);
    }
    eventually(wait, || async {
        let (Ok(cluster), Ok(nodes)) = (api0.get("/v1/cluster").await, api0.get("/v1/nodes").await)
        else {
            return Ok(None);
        };
        let voters = cluster.body["servers"].as_array().map_or(0, Vec::len) == 3;
        let ready = nodes.body.as_array().is_some_and(|nodes| {
            nodes.len() == 3
                && nodes.iter().all(|node| {
                    node["state"] == "ready" && node["capacity"]["cpu_millis"].as_u64() > Some(0)
                })
        });
        Ok((voters && ready).then_some(()))
    })
    .await?;
    Ok(ThreeNodes {
        agents,
        admin_key,
        config,
    })
}
