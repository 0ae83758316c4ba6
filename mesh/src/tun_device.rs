//! The `tun` data plane's interface: a TUN device (boringtun's `TunSocket`) with the node's
//! mesh address and the overlay route, configured with iproute2. Needs CAP_NET_ADMIN. The
//! interface disappears when the device is dropped (it is not persistent).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;

use boringtun::device::tun::TunSocket;

use crate::error::MeshError;

/// Default interface name.
pub const DEFAULT_IFNAME: &str = "shoal0";
/// Interface MTU: 1500 minus WireGuard's 80 bytes of IPv6+UDP+WireGuard overhead, as `wg-quick`.
pub const TUN_MTU: u16 = 1420;

fn tun_error(ifname: &str, message: String) -> MeshError {
    MeshError::Tun {
        ifname: ifname.to_string(),
        message,
    }
}

fn ip(ifname: &str, args: &[&str]) -> Result<(), MeshError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| tun_error(ifname, format!("running ip {}: {e}", args.join(" "))))?;
    if !output.status.success() {
        return Err(tun_error(
            ifname,
            format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// Creates the interface, sets its address (`mesh_addr/prefix_len`, which also routes the
/// overlay range through it), MTU, and brings it up.
pub(crate) fn create_tun(
    ifname: &str,
    mesh_addr: Ipv4Addr,
    prefix_len: u8,
) -> Result<Arc<TunSocket>, MeshError> {
    let tun = TunSocket::new(ifname)
        .and_then(TunSocket::set_non_blocking)
        .map_err(|e| tun_error(ifname, format!("{e} (tun mode needs CAP_NET_ADMIN)")))?;
    ip(
        ifname,
        &["link", "set", "dev", ifname, "mtu", &TUN_MTU.to_string()],
    )?;
    ip(
        ifname,
        &[
            "addr",
            "replace",
            &format!("{mesh_addr}/{prefix_len}"),
            "dev",
            ifname,
        ],
    )?;
    ip(ifname, &["link", "set", "dev", ifname, "up"])?;
    tracing::info!(ifname, %mesh_addr, prefix_len, "tun interface up");
    Ok(Arc::new(tun))
}
