//! Progress for long operations (waiting for a placement, a drain, nodes coming up): a spinner
//! line on stderr when stderr is a terminal, nothing otherwise (scripts and tests see only
//! results).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::error::CliResult;

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// One spinner line.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    label: String,
    frame_idx: usize,
}

impl Progress {
    /// A spinner labelled `label`, shown only when stderr is a terminal.
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            enabled: std::io::stderr().is_terminal(),
            label: label.into(),
            frame_idx: 0,
        }
    }

    /// Redraws the line with the next frame and `detail` (e.g. the current state).
    pub fn tick(&mut self, detail: &str) {
        if !self.enabled {
            return;
        }
        let frame = FRAMES[self.frame_idx % FRAMES.len()];
        self.frame_idx += 1;
        let mut stderr = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not fail the command.
        let _ = write!(stderr, "\r\x1b[K{frame} {} {detail}", self.label);
        let _ = stderr.flush();
    }

    /// Clears the spinner line.
    pub fn finish(&mut self) {
        if self.enabled {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[K");
            let _ = stderr.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Calls `poll` every `interval` up to `attempts_max` times while it answers `Ok(None)`,
/// ticking the spinner with the detail `poll` last gave; returns the first `Some`, or
/// `Ok(None)` when the attempts ran out. An error from `poll` ends the wait.
pub fn wait_for<T>(
    progress: &mut Progress,
    attempts_max: u32,
    interval: Duration,
    mut poll: impl FnMut(&mut String) -> CliResult<Option<T>>,
) -> CliResult<Option<T>> {
    let mut detail = String::new();
    for attempt in 0..attempts_max {
        if let Some(done) = poll(&mut detail)? {
            progress.finish();
            return Ok(Some(done));
        }
        // Redraw several times per interval so the spinner moves smoothly.
        let ticks = 4;
        for _ in 0..ticks {
            progress.tick(&detail);
            std::thread::sleep(interval / ticks);
        }
        tracing::debug!(attempt, "still waiting");
    }
    progress.finish();
    Ok(None)
}
