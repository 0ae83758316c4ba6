//! Shoal's control plane: the Raft state machine and storage, the cluster model and the scheduler.
