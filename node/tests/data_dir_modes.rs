//! Files at rest: the data dir holds the node's private key, the Raft store (key and token
//! hashes) and the admin token, so it is 0700 and everything the agent writes is its user's
//! only, whatever umask the agent was started with; an admin token file that exists is made
//! 0600, and a symbolic link in its place is refused rather than followed.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::Agent;
use tracing::info;

/// Every path under `dir` (not following links), with the sandbox's own tree left out: it
/// holds what sandboxed programs must read (their `/etc`) and their homes, owned by their uids.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|name| name == "sandbox") {
            continue;
        }
        out.push(path.clone());
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            walk(&path, out);
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).map_or(0, |meta| meta.mode() & 0o7777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_0700_and_its_files_0600_and_the_admin_token_is_never_followed_through_a_link(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;

    info!("--- an admin token file that exists, world-readable: the bootstrap makes it 0600");
    let token_dir = temp.path().join("tokens");
    std::fs::create_dir_all(&token_dir)?;
    let token_file = token_dir.join("admin.token");
    std::fs::write(&token_file, "old\n")?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644))?;
    let data_dir = temp.path().join("node");
    // A data dir that exists with a loose mode is tightened too.
    std::fs::create_dir_all(&data_dir)?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755))?;
    let token_arg = token_file.display().to_string();
    let mut agent = Agent::start(
        &data_dir,
        &["--bootstrap", "--admin-token-file", &token_arg],
        common::free_tcp_port(),
    )?;
    let key = std::fs::read_to_string(&token_file)?.trim().to_string();
    let api = agent.client(&key);
    let created = api
        .post(
            "/v1/workstations",
            &serde_json::json!({"cpu_millis": 10, "memory_bytes": 8 << 20}),
        )
        .await?;
    anyhow::ensure!(created.status == 201, "{}", created.text);
    assert_eq!(mode(&token_file), 0o600, "{}", token_file.display());
    assert_eq!(mode(&data_dir), 0o700, "{}", data_dir.display());
    let mut paths = Vec::new();
    walk(&data_dir, &mut paths);
    assert!(
        paths.len() > 3,
        "the data dir holds almost nothing: {paths:?}"
    );
    let loose: Vec<String> = paths
        .iter()
        .filter(|path| {
            let meta = std::fs::symlink_metadata(path);
            let is_dir = meta.as_ref().is_ok_and(|meta| meta.is_dir());
            let is_link = meta
                .as_ref()
                .is_ok_and(|meta| meta.file_type().is_symlink());
            let wanted = if is_dir { 0o700 } else { 0o600 };
            !is_link && mode(path) & 0o077 != 0 && mode(path) != wanted
        })
        .map(|path| format!("{} {:o}", path.display(), mode(path)))
        .collect();
    assert!(loose.is_empty(), "readable by others: {loose:?}");
    agent.terminate(Duration::from_secs(10))?;

    info!(
        "--- a symbolic link where the admin token goes: the bootstrap refuses and writes nothing"
    );
    let victim = temp.path().join("victim");
    std::fs::write(&victim, "untouched\n")?;
    let link = temp.path().join("link.token");
    std::os::unix::fs::symlink(&victim, &link)?;
    let other = temp.path().join("node-2");
    let output = common::agent_command(&other, common::free_tcp_port(), common::free_udp_port())
        .args(["--bootstrap", "--admin-token-file"])
        .arg(&link)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    assert!(
        !output.status.success(),
        "the agent started with a linked token file"
    );
    assert_eq!(std::fs::read_to_string(&victim)?, "untouched\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("symbolic link"), "{stderr}");
    Ok(())
}
