//! The one source of randomness of the mesh (DESIGN.md §2): key generation, token secrets,
//! join nonces. It is the operating system's CSPRNG, because these values are secrets.

use rand::rngs::OsRng;
use rand::RngCore;

/// Fills `buf` with cryptographically secure random bytes.
pub fn fill(buf: &mut [u8]) {
    OsRng.fill_bytes(buf);
}

/// Returns `N` cryptographically secure random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    fill(&mut buf);
    buf
}
