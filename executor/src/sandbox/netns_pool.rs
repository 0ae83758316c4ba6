//! Fresh network namespaces made ahead of time.
//!
//! Creating a network namespace is the most expensive part of a sandbox's clone (about 2 ms of
//! mostly waiting, measured on the development VM), so a background thread keeps a few fresh
//! ones ready: it unshares its own network namespace (a per-thread attribute) and keeps an fd
//! to it. A run's init joins one with setns instead of creating it. Each namespace is used by
//! exactly one sandbox and never returned: isolation between runs is the same as with
//! CLONE_NEWNET. Its loopback interface is up already. When the pool is empty the sandbox
//! creates its namespace itself.

use std::collections::VecDeque;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

/// How many ready namespaces are kept.
const READY_NAMESPACES_MAX: usize = 4;

#[derive(Debug, Default)]
struct PoolState {
    ready: VecDeque<OwnedFd>,
    stopped: bool,
}

/// A bounded queue of fresh network namespaces filled by one background thread.
#[derive(Debug, Default)]
pub(crate) struct NetnsPool {
    state: Mutex<PoolState>,
    wanted: Condvar,
}

impl NetnsPool {
    /// Starts the filling thread. Returns None if the thread cannot be started or the first
    /// namespace cannot be made (then sandboxes create their own).
    pub(crate) fn start() -> Option<Arc<Self>> {
        let pool = Arc::new(NetnsPool::default());
        let filler = Arc::clone(&pool);
        std::thread::Builder::new()
            .name("sandbox-netns".to_string())
            .spawn(move || filler.fill())
            .ok()?;
        Some(pool)
    }

    fn make_one() -> Option<OwnedFd> {
        // SAFETY: unshare affects only this thread; open returns a new fd we own.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return None;
            }
            // Its loopback comes up here, off the runs' path (a socket and two ioctls less in
            // each run's init).
            if super::child::loopback_up().is_err() {
                return None;
            }
            let fd = libc::open(
                c"/proc/thread-self/ns/net".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            (fd >= 0).then(|| OwnedFd::from_raw_fd(fd))
        }
    }

    fn fill(&self) {
        loop {
            {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                while !state.stopped && state.ready.len() >= READY_NAMESPACES_MAX {
                    state = match self.wanted.wait(state) {
                        Ok(state) => state,
                        Err(_) => return,
                    };
                }
                if state.stopped {
                    return;
                }
            }
            let Some(namespace) = Self::make_one() else {
                tracing::warn!(
                    "cannot prepare network namespaces ahead; sandboxes create their own"
                );
                return;
            };
            match self.state.lock() {
                Ok(mut state) => state.ready.push_back(namespace),
                Err(_) => return,
            }
        }
    }

    /// A fresh namespace, if one is ready.
    pub(crate) fn take(&self) -> Option<OwnedFd> {
        let mut state = self.state.lock().ok()?;
        let namespace = state.ready.pop_front();
        self.wanted.notify_one();
        namespace
    }

    /// Stops the filling thread and drops the ready namespaces.
    pub(crate) fn stop(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.stopped = true;
            state.ready.clear();
        }
        self.wanted.notify_all();
    }
}
