//! An in-memory [`RaftTransport`] for tests and benchmarks: a router between `RaftNode`s in one
//! process, through the real codec, with the ability to cut a node off. Not used in production
//! (the `node` crate implements the transport over the mesh).

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::model::NodeAddr;
use crate::model::NodeId;
use crate::network::RaftTransport;
use crate::network::RpcHandle;
use crate::network::TransportError;

#[derive(Default)]
struct Routes {
    handles: HashMap<NodeId, RpcHandle>,
    isolated: HashSet<NodeId>,
    /// One-way cuts: `(from, to)` requests are lost.
    blocked: HashSet<(NodeId, NodeId)>,
}

/// Routes encoded RPCs between registered nodes.
#[derive(Clone, Default)]
pub struct TestRouter {
    routes: Arc<Mutex<Routes>>,
}

impl TestRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// The transport node `from` sends through.
    pub fn transport(&self, from: NodeId) -> Arc<dyn RaftTransport> {
        Arc::new(TestTransport {
            from,
            router: self.clone(),
        })
    }

    /// Makes a node reachable through its RPC handle.
    pub fn register(&self, id: NodeId, handle: RpcHandle) {
        self.routes.lock().handles.insert(id, handle);
    }

    /// Makes a node unreachable (as if it was killed).
    pub fn unregister(&self, id: NodeId) {
        self.routes.lock().handles.remove(&id);
    }

    /// Cuts a node off: nothing it sends or is sent arrives.
    pub fn isolate(&self, id: NodeId) {
        self.routes.lock().isolated.insert(id);
    }

    /// True while a node is isolated.
    pub fn is_isolated(&self, id: NodeId) -> bool {
        self.routes.lock().isolated.contains(&id)
    }

    /// Reconnects an isolated node.
    pub fn heal(&self, id: NodeId) {
        self.routes.lock().isolated.remove(&id);
    }

    /// Loses every request `from` sends to `to` (the other direction still works).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.routes.lock().blocked.insert((from, to));
    }

    /// Undoes [`TestRouter::block`].
    pub fn unblock(&self, from: NodeId, to: NodeId) {
        self.routes.lock().blocked.remove(&(from, to));
    }
}

struct TestTransport {
    from: NodeId,
    router: TestRouter,
}

#[async_trait::async_trait]
impl RaftTransport for TestTransport {
    async fn send(
        &self,
        target: NodeId,
        _target_addr: &NodeAddr,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let handle = {
            let routes = self.router.routes.lock();
            if routes.isolated.contains(&self.from)
                || routes.isolated.contains(&target)
                || routes.blocked.contains(&(self.from, target))
            {
                return Err(TransportError::Unreachable {
                    target,
                    detail: "isolated".to_string(),
                });
            }
            routes.handles.get(&target).cloned()
        };
        let Some(handle) = handle else {
            return Err(TransportError::Unreachable {
                target,
                detail: "not running".to_string(),
            });
        };
        let reply = handle.handle(&request).await;
        // A partition that happened while the request was in flight loses the reply too.
        if self.router.routes.lock().isolated.contains(&self.from) {
            return Err(TransportError::Failed {
                target,
                detail: "isolated".to_string(),
            });
        }
        Ok(reply)
    }
}
