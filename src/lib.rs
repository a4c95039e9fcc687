//! agentbox
