//! The bitHuman simulator.
