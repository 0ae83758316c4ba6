//! Capped capture of a run's output: the head is kept, the rest is counted.

/// Bytes of stdout and of stderr kept in a run's answer (SPEC.md: 64 KiB each).
pub const OUTPUT_KEPT_BYTES_MAX: usize = 64 * 1024;
/// Total output (stdout + stderr) after which the run is killed with `output_limit`.
pub const OUTPUT_TOTAL_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// One stream's captured head and total length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CappedOutput {
    kept: Vec<u8>,
    total_bytes: u64,
    kept_bytes_max: usize,
}

impl CappedOutput {
    /// Keeps at most `kept_bytes_max` bytes.
    pub fn new(kept_bytes_max: usize) -> Self {
        CappedOutput {
            kept: Vec::new(),
            total_bytes: 0,
            kept_bytes_max,
        }
    }

    /// Appends a chunk; bytes past the cap are only counted.
    pub fn push(&mut self, chunk: &[u8]) {
        let room = self.kept_bytes_max.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.total_bytes = self.total_bytes.saturating_add(chunk.len() as u64);
    }

    /// Whether bytes were dropped.
    pub fn truncated(&self) -> bool {
        self.total_bytes > self.kept.len() as u64
    }

    /// Bytes seen in total.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The kept head.
    pub fn kept(&self) -> &[u8] {
        &self.kept
    }

    /// The kept head as text (invalid UTF-8 replaced).
    pub fn to_text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keeps_exactly_the_head_of_the_stream(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40),
            cap in 0usize..2000,
        ) {
            let mut capture = CappedOutput::new(cap);
            let mut model: Vec<u8> = Vec::new();
            for chunk in &chunks {
                capture.push(chunk);
                model.extend_from_slice(chunk);
            }
            let head = &model[..model.len().min(cap)];
            prop_assert_eq!(capture.kept(), head);
            prop_assert_eq!(capture.total_bytes(), model.len() as u64);
            prop_assert_eq!(capture.truncated(), model.len() > cap);
        }
    }
}
