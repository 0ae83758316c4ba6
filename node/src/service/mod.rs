//! The node as an application: one module per resource, each a set of functions that take the
//! caller and a typed request and return a typed result or one [`ServiceError`].
//!
//! Two adapters sit on top and only decode, call and encode: the HTTP control API (`api`) and
//! the mesh relay server (`relay`), which serves what another node asks of the node hosting a
//! workstation or executing a run. The choice "do it here, or ask the node that hosts it" is
//! made in one place, [`hosting::on_host`], and the hosting node runs the same function for a
//! relayed request as for its own; the error crosses the mesh intact, so every node answers
//! the same status and body for the same request.
//!
//! Architecture Invariant: nothing in `service` or `agent` imports the HTTP adapter (`api`)
//! or the relay server (`relay`); `tests::adapters_are_not_imported_below_them` checks it.

pub mod caller;
pub mod cluster;
pub mod error;
pub mod hosting;
pub mod logs;
pub mod processes;
pub mod runs;
pub mod workstations;

use std::sync::atomic::Ordering;

pub use caller::Caller;
pub use error::ServiceError;

use crate::agent::Agent;

/// Refuses new work with 503 while the node shuts down.
pub fn refuse_if_stopping(agent: &Agent) -> Result<(), ServiceError> {
    if agent.shutting_down.load(Ordering::SeqCst) {
        return Err(ServiceError::unavailable("this node is shutting down"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }

    /// The layering: the service layer and the agent never reach up into an adapter (the HTTP
    /// API or the mesh relay server). Read from the source, so a new `use crate::api::...`
    /// below the adapters fails here.
    #[test]
    fn adapters_are_not_imported_below_them() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src.join("service"), &mut files);
        rust_files(&src.join("agent"), &mut files);
        assert!(files.len() > 10, "found only {files:?}");
        let mut offenders = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                // Built at run time, so that this file does not name what it looks for.
                let adapters = ["crate::", "super::"]
                    .map(|root| ["api::", "api;", "relay"].map(|module| format!("{root}{module}")));
                let adapters = adapters.iter().flatten();
                for adapter in adapters.clone() {
                    if code.contains(adapter.as_str()) {
                        offenders.push(format!(
                            "{}:{}: {}",
                            file.display(),
                            number + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "adapters imported below them:\n{}",
            offenders.join("\n")
        );
    }
}
