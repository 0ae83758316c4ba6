//! Library half of the `shoal` binary: the types other crates and tests share with it.
//!
//! The API's JSON types live here so that the CLI client, the agent's handlers, the
//! integration tests and the chaos harness all speak the same structs.

pub mod api_types;
pub mod clock;
pub mod mesh_authz;
pub mod mesh_rpc;
