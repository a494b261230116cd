//! The latest states: every agent's latest committed state, shared
//! read-mostly with the HTTP server (`/api/agents`, the wallboard). Written
//! by the history writer after each commit, so it never shows a state history
//! lacks.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::model::{AgentId, AgentState};

/// Shared, cheaply cloned handle to the latest state of every agent.
#[derive(Debug, Clone, Default)]
pub struct LatestStates {
    /// Latest state per agent, ordered by id.
    states: Arc<RwLock<BTreeMap<AgentId, AgentState>>>,
}

impl LatestStates {
    /// Stores an agent's latest state.
    pub fn update(&self, state: AgentState) {
        // A poisoned lock only means a reader panicked; the map is still valid.
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        states.insert(state.agent.clone(), state);
    }

    /// Every agent's latest state, ordered by id.
    pub fn snapshot(&self) -> Vec<AgentState> {
        let states = self.states.read().unwrap_or_else(|e| e.into_inner());
        states.values().cloned().collect()
    }

    /// One agent's latest state.
    pub fn get(&self, agent: &AgentId) -> Option<AgentState> {
        let states = self.states.read().unwrap_or_else(|e| e.into_inner());
        states.get(agent).cloned()
    }
}
