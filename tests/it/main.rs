//! Integration tests: real PostgreSQL, real HTTP over loopback, the same
//! process assembly as the `postback` binary. One binary so the cluster
//! starts once; each test gets its own database.

mod health;
mod helpers;
mod observability;

mod api;
mod console;
mod customers;
mod delivery;
mod egress;
mod embedding;
mod finding;
mod foundation;
mod intake;
mod operations;
mod reliability;
mod security;
