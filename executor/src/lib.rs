//! Shoal's executor: everything that happens on one node to run other people's code.
//!
//! It is local by design: it knows nothing of consensus or peers. It takes specs and limits and
//! reports what happened.
//!
//! * [`clock`]: the one source of time.
//! * [`log_buffer`]: the pure rolling 5 MiB log of a workstation.
//! * [`restart_policy`]: the pure restart/backoff/crash-loop decisions.
//! * [`spawner`]: the process seam ([`spawner::Spawner`]; `HostSpawner`, an unsandboxed one for
//!   tests and benchmarks, only with the `test-support` feature).
//! * [`workstation`]: the actor that owns a workstation's processes and log.

pub mod clock;
pub mod log_buffer;
pub mod network_policy;
pub mod process_id;
pub mod restart_policy;
pub mod spawner;
pub mod workstation;

mod workstation_follower;
mod workstation_limits;
mod workstation_messages;

// The unsandboxed spawner is for tests and benchmarks only (the node always spawns through
// the sandbox); integration tests and benches turn the feature on through a dev-dependency.
#[cfg(any(test, feature = "test-support"))]
mod host_process_tree;
#[cfg(any(test, feature = "test-support"))]
mod host_spawner;

pub mod run;
pub mod sandbox;
