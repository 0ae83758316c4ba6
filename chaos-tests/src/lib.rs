//! Shoal's chaos harness: drives real `shoal agent` processes in network namespaces, injects
//! faults from a seeded nemesis schedule, records every operation in a history, and checks the
//! history against Shoal's invariants.
//!
//! The pure parts ([`history`], [`nemesis`], [`workload`], [`checkers`], [`report`],
//! [`partition`]) take all inputs as arguments and are tested with synthetic histories; the
//! [`env`](mod@env) module is the thin driver around the kernel (namespaces, firewall, processes, mounts).

// The harness drives processes and the API; it needs no unsafe code.
#![forbid(unsafe_code)]

pub mod checkers;
pub mod clock;
pub mod env;
pub mod history;
pub mod nemesis;
pub mod partition;
pub mod report;
pub mod sse;
pub mod stats;
pub mod workload;
