//! The contract between the CNI plugin and the agent.
