//! Egress: where deliveries may go and how they get there (SPEC §1
//! `POSTBACK_EGRESS_*`, §3 "Egress").
//!
//! A destination is checked three times, each by the part that can see it:
//!
//! 1. at intake, [`check_destination`] parses the URL the way the client will
//!    and refuses IP-literal hosts the [`EgressPolicy`] does not permit;
//! 2. right before each attempt, [`Egress::preflight`] re-checks literals
//!    (the policy may have changed, and the client never resolves them) and,
//!    when a proxy is configured, every address the destination name
//!    resolves to;
//! 3. at connect time (no proxy), the [`GuardedResolver`] inside the client
//!    drops every refused address after DNS, so a name that (re-)resolves to
//!    an internal address is refused with [`BlockedDestination`];
//!    [`is_blocked`] recognises it inside a `reqwest::Error` so the worker
//!    records `blocked_destination`.
//!
//! With a proxy, an `https` destination is checked once more when its
//! tunnel opens, by the CONNECT shim (`tunnel.rs`) the client's `https`
//! requests go through: it asks the proxy for a tunnel to the checked
//! address, never to the name.
//!
//! This module owns the policy, those checks and the client's connection
//! settings (source address, proxy, no redirects, pooling). It must not
//! parse environment variables (the config layer builds [`EgressSettings`],
//! using [`EgressPolicy::parse_cidr_list`] for the CIDR lists), build
//! requests, sign, retry or classify responses.

pub mod client;
pub mod policy;
pub mod resolver;
mod tunnel;
pub mod url_check;

pub use client::{
    Egress, EgressError, EgressSettings, PreflightError, Target, DEFAULT_MAX_TUNNELS,
};
pub use policy::{builtin_denies, CidrListError, EgressPolicy};
pub use resolver::{is_blocked, BlockReason, BlockedDestination, GuardedResolver, ResolveFailure};
pub use url_check::{check_destination, host_key, ip_key, DestinationError};
