//! The cluster state as the Raft state machine.

use vigil_core::ClusterState;

#[derive(Clone, Debug, Default)]
pub struct Replicated {
    pub state: ClusterState,
}

impl vigil_raft::StateMachine for Replicated {
    fn apply(&mut self, index: u64, command: &[u8]) {
        // A rejected command is a normal outcome (e.g. a failover decided for an epoch that has
        // passed): every member rejects it alike, so the state stays identical everywhere.
        if let Err(e) = self.state.apply_bytes(command) {
            tracing::debug!(index, "command not applied: {e}");
        }
    }

    fn snapshot(&self) -> anyhow::Result<Vec<u8>> {
        Ok(serde_json::to_vec(&self.state)?)
    }

    fn restore(data: &[u8]) -> anyhow::Result<Self> {
        if data.is_empty() {
            return Ok(Replicated::default());
        }
        Ok(Replicated { state: serde_json::from_slice(data)? })
    }
}
