//! The agent's one source of randomness (DESIGN.md §2): ids, API keys and join tokens.
//!
//! Secrets need unpredictability, so the generator is seeded from the operating system once;
//! a test can build one from a fixed seed instead.

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// A shared random source.
#[derive(Debug)]
pub struct Random {
    rng: Mutex<StdRng>,
}

impl Random {
    /// Seeded from the operating system's entropy.
    pub fn from_entropy() -> Random {
        Random {
            rng: Mutex::new(StdRng::from_entropy()),
        }
    }

    /// Seeded from `seed`, for reproducible tests.
    #[cfg(test)]
    pub fn from_seed(seed: u64) -> Random {
        Random {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    /// `n_bytes` random bytes as lowercase hex.
    pub fn hex(&self, n_bytes: usize) -> String {
        let mut bytes = vec![0u8; n_bytes];
        self.rng.lock().fill_bytes(&mut bytes);
        hex::encode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_source_replays_and_hex_has_two_digits_per_byte() {
        let first = Random::from_seed(7);
        let second = Random::from_seed(7);
        assert_eq!(first.hex(8), second.hex(8));
        assert_eq!(first.hex(16).len(), 32);
    }
}
