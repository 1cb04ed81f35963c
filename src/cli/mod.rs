//! The `postback` command line (SPEC §1): one file per subcommand. It owns
//! flags, exit codes (0 ok, 1 runtime failure, 2 bad usage or
//! configuration) and process setup (logging, signals); the work itself is
//! the library's.

mod admin;
mod customers;
mod destinations;
mod find;
mod healthcheck;
mod listen;
mod logging;
mod migrate;
mod serve;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{headings, Config};
pub use logging::init_logging;

/// Reliable outbound callback dispatcher.
#[derive(Debug, Parser)]
#[command(name = "postback", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// HTTP API + delivery workers + metrics, in one process (runs migrations at start).
    Serve(Box<Config>),
    /// Delivery workers only (no API), for scaling out.
    // The API settings stay accepted (one environment serves both
    // commands) but are hidden: a worker never reads them.
    #[command(mut_args(hide_api_setting))]
    Worker(Box<Config>),
    /// Apply migrations and exit.
    Migrate(admin::DbArgs),
    /// List or show deliveries.
    #[command(subcommand)]
    Deliveries(find::DeliveriesCommand),
    /// Put deliveries back in the queue for a fresh cycle of the schedule.
    Replay(find::ReplayArgs),
    /// Delete jobs, deliveries and payloads past their expiry.
    Purge(admin::PurgeArgs),
    /// Exit 0 when GET /readyz of a local serve answers 200, 1 otherwise (container HEALTHCHECKs).
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Circuit breakers per destination origin.
    #[command(subcommand)]
    Destinations(destinations::DestinationsCommand),
    /// Customers: rotate a signing secret.
    #[command(subcommand)]
    Customers(customers::CustomersCommand),
    /// Stored secrets: re-encrypt them under the current key.
    #[command(subcommand)]
    Secrets(customers::SecretsCommand),
    /// A local receiver for development: prints each callback and checks its signature.
    Listen(listen::ListenArgs),
}

/// Hides a setting under [`headings::API`] from `worker --help`.
fn hide_api_setting(arg: clap::Arg) -> clap::Arg {
    if arg.get_help_heading() == Some(headings::API) {
        arg.hide(true)
    } else {
        arg
    }
}

/// The whole command line as clap describes it: every subcommand, flag,
/// environment variable and default (docs/reference.md is checked
/// against it).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

/// The environment variable behind the flag a clap error complains about,
/// so the message names the setting the way the operator set it.
fn env_var_of_invalid_arg(err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    use clap::CommandFactory;
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let command = Cli::command();
    let mut stack = vec![&command];
    while let Some(cmd) = stack.pop() {
        for a in cmd.get_arguments() {
            if a.get_long() == Some(long) {
                if let Some(env) = a.get_env() {
                    return Some(env.to_string_lossy().into_owned());
                }
            }
        }
        stack.extend(cmd.get_subcommands());
    }
    None
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    /// Bad usage or configuration: exit 2.
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 2,
            error: error.into(),
        }
    }

    /// Runtime failure: exit 1.
    pub fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::runtime(error)
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            if let Some(var) = env_var_of_invalid_arg(&err) {
                eprintln!("note: this setting is the flag above or the environment variable {var}");
            }
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if failure.code == 0 => {
            eprintln!("postback: {:#}", failure.error);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve(config) => serve::run(*config).await,
        Command::Worker(config) => worker::run(*config).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Deliveries(cmd) => find::deliveries(cmd).await,
        Command::Replay(args) => find::replay(args).await,
        Command::Purge(args) => admin::purge(args).await,
        Command::Destinations(cmd) => destinations::run(cmd).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        Command::Customers(cmd) => customers::customers(cmd).await,
        Command::Secrets(cmd) => customers::secrets(cmd).await,
        Command::Listen(args) => listen::run(args).await,
    }
}

/// Start failures: a setting to fix or something to install is exit 2.
pub fn start_failure(err: crate::runtime::StartError) -> Failure {
    if matches!(err, crate::runtime::StartError::Interrupted) {
        // Asked to stop and stopped (everything it had started is stopped
        // too): the same exit as a SIGTERM after start-up.
        tracing::info!("stopped during start-up");
        return Failure {
            error: anyhow::anyhow!("stopped by a signal during start-up"),
            code: 0,
        };
    }
    if err.is_usage() {
        Failure::usage(err)
    } else {
        Failure::runtime(err)
    }
}

/// Cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(err) => {
                    tracing::error!(error = %err, "cannot watch SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        trigger.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_start_up_line_shows_every_setting_of_serve() {
        // Every optional setting set, so none is left out for being unset.
        let full = Config {
            database_url: Some("postgres://u:p@h/db".into()),
            api_token: Some("t".into()),
            signing_secret: Some("s".into()),
            secrets_key: Some("k".into()),
            operator_webhook: Some("https://ops.example/hook".parse().unwrap()),
            egress_source_addr: Some("127.0.0.1".parse().unwrap()),
            egress_proxy: Some("http://proxy.example:3128".parse().unwrap()),
            log_level: Some("info".into()),
            metrics_listen: Some("127.0.0.1:9100".parse().unwrap()),
            ..Config::default()
        };
        let shown: std::collections::BTreeSet<&str> = full
            .effective_settings()
            .0
            .iter()
            .map(|(n, _)| *n)
            .collect();
        let command = Cli::command();
        let serve = command.find_subcommand("serve").expect("serve");
        let settings: std::collections::BTreeSet<String> = serve
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        let shown: std::collections::BTreeSet<String> =
            shown.into_iter().map(str::to_owned).collect();
        assert_eq!(
            shown, settings,
            "Config::effective_settings and serve's settings differ"
        );
    }

    #[test]
    fn serve_with_no_flags_is_the_default_config() {
        // Only checks the shape; the environment-free comparison of every
        // setting is in `config`'s tests.
        let command = Cli::command().mut_subcommand("serve", |c| c.mut_args(|a| a.env(None)));
        let matches = command
            .try_get_matches_from(["postback", "serve"])
            .expect("serve parses");
        let cli = Cli::from_arg_matches(&matches).expect("matches");
        match cli.command {
            Command::Serve(config) => assert_eq!(*config, Config::default()),
            other => panic!("not serve: {other:?}"),
        }
    }
}
