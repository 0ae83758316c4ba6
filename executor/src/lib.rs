//! Shoal's executor: everything that happens on one node to run other people's code.
//!
//! It is local by design: it knows nothing of consensus or peers. It takes specs and limits and
//! reports what happened.

pub mod run;
pub mod sandbox;
