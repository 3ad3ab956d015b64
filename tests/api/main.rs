//! Integration tests: the service on port 0, the bitHuman simulator and local receivers, all
//! real HTTP on 127.0.0.1, sled on disk in a temporary directory.

mod helpers;
mod receiver;

mod delivery;
mod drop_in;
mod errors;
mod jobs;
mod openapi;
mod operations;
mod restart;
mod scheduler;
mod service;
mod upstream_push;
