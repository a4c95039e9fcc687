//! Scripted mock of the Anthropic Messages API.
