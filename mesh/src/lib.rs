//! Shoal's mesh: node identity, the WireGuard data planes, QUIC transport and join admission.
