//! Integration tests: the service on port 0, the bitHuman simulator and local receivers, all
//! real HTTP on 127.0.0.1, sled on disk in a temporary directory.

mod browser;
#[path = "../fixtures/mod.rs"]
mod fixtures;
mod helpers;
mod pg;
mod postgres;
mod receiver;

mod dashboard;
mod delivery;
mod drop_in;
mod errors;
mod integrations;
mod jobs;
mod openapi;
mod operations;
mod restart;
mod retention;
mod scheduler;
mod service;
mod storage_faults;
mod store_conformance;
mod upstream_push;
