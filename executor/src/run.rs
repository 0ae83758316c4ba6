//! One-shot sandboxed runs of guest code (filled in by the sandbox work).
