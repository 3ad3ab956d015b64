//! Sending events: signatures, body formats, the network policy, and the worker.

pub mod format;
pub mod pacing;
pub mod policy;
pub mod retry;
pub mod signature;
pub mod worker;
