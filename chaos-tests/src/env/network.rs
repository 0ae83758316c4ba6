//! The test network: a hub namespace holding a bridge, and one namespace per node joined to the
//! bridge by a veth pair. Nothing is created in the host's network namespace: links, addresses
//! and firewall rules all live inside the run's own namespaces, which are deleted at the end.
//!
//! Addresses come from 198.18.0.0/24 (RFC 2544's benchmarking range): the hub (where the
//! harness's HTTP client runs) is .1, node `i` is .(10 + i).

use std::net::Ipv4Addr;

use tracing::{debug, info, warn};

use super::{cleanup, run, EnvError, RunTag};
use crate::history::NodeIdx;
use crate::partition::Grudge;

/// The firewall chain the harness owns inside each node namespace (partitions only touch it).
pub const CHAIN: &str = "SHOALCHAOS";

/// At most this many nodes (addresses .10 to .249).
pub const NODES_MAX: usize = 240;

/// A run's namespaces and links; removed on drop.
#[derive(Debug)]
pub struct TestNetwork {
    tag: RunTag,
    hub: String,
    nodes: Vec<String>,
}

impl TestNetwork {
    /// Creates the hub namespace with its bridge and `n_nodes` node namespaces. On error,
    /// whatever was created is removed.
    pub fn create(tag: &RunTag, n_nodes: usize) -> Result<Self, EnvError> {
        if !super::is_root() {
            return Err(EnvError::NotRoot);
        }
        assert!(n_nodes <= NODES_MAX, "at most {NODES_MAX} nodes");
        let mut network = Self {
            tag: tag.clone(),
            hub: format!("{}-hub", tag.prefix()),
            nodes: Vec::new(),
        };
        let hub = network.hub.clone();
        run("ip", &["netns", "add", &hub])?;
        run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        let hub_cidr = format!("{}/24", Self::hub_addr());
        run("ip", &["-n", &hub, "addr", "add", &hub_cidr, "dev", "br0"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        for idx in 0..n_nodes {
            let ns = format!("{}-n{idx}", tag.prefix());
            run("ip", &["netns", "add", &ns])?;
            network.nodes.push(ns.clone());
            let hub_end = format!("v{idx}");
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            run(
                "ip",
                &["-n", &hub, "link", "set", &hub_end, "master", "br0"],
            )?;
            run("ip", &["-n", &hub, "link", "set", &hub_end, "up"])?;
            let cidr = format!("{}/24", Self::node_addr(idx));
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["netns", "exec", &ns, "iptables", "-w", "-N", CHAIN])?;
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "iptables", "-w", "-I", "INPUT", "-j", CHAIN,
                ],
            )?;
        }
        info!(tag = tag.as_str(), n_nodes, "test network created");
        Ok(network)
    }

    /// The harness's own address, in the hub namespace.
    pub fn hub_addr() -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 1)
    }

    /// Node `idx`'s address, inside its namespace.
    pub fn node_addr(idx: NodeIdx) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 10 + idx as u8)
    }

    /// The hub namespace's name (run the harness's client there to reach every node).
    pub fn hub_ns(&self) -> &str {
        &self.hub
    }

    /// Node `idx`'s namespace name.
    pub fn node_ns(&self, idx: NodeIdx) -> &str {
        &self.nodes[idx]
    }

    /// How many nodes.
    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Replaces the current partition with `grudge` (an empty grudge heals).
    pub fn apply(&self, grudge: &Grudge) -> Result<(), EnvError> {
        self.heal()?;
        for node in grudge.nodes_with_rules() {
            let ns = self.node_ns(node);
            for from in grudge.drops_from(node) {
                let src = Self::node_addr(from).to_string();
                run(
                    "ip",
                    &[
                        "netns", "exec", ns, "iptables", "-w", "-A", CHAIN, "-s", &src, "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        debug!(?grudge, "partition applied");
        Ok(())
    }

    /// Removes every partition rule.
    pub fn heal(&self) -> Result<(), EnvError> {
        for ns in &self.nodes {
            run("ip", &["netns", "exec", ns, "iptables", "-w", "-F", CHAIN])?;
        }
        Ok(())
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        // Processes first (a namespace with processes in it does not go away), then namespaces.
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            cleanup::kill_namespace_processes(ns);
            if let Err(error) = run("ip", &["netns", "del", ns]) {
                warn!(ns = ns.as_str(), %error, "could not delete namespace");
            }
        }
        debug!(tag = self.tag.as_str(), "test network removed");
    }
}
