//! Protocol types shared by the host daemon and the in-container agent.
