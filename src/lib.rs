//! agenthook: a webhook relay for bitHuman's Agent Generation API.
//!
//! A request flows `api` (parsed at the edge) → `service` → `store` (the job, durably) →
//! `upstream` (submission); the `poller` drives each pending job to its end and writes the
//! resulting deliveries in the same transaction; the `delivery` worker signs and sends them.
//! bitHuman's own webhooks (`push`) make a job due for its status read at once. `ui` serves
//! the dashboard, a client of the API embedded in the binary.

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod domain;
pub mod lifecycle;
pub mod maintenance;
mod memory;
pub mod poller;
pub mod push;
pub mod service;
pub mod signals;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod ui;
pub mod upstream;
