//! `postback listen`: a development receiver that prints each callback,
//! checks its Standard Webhooks signature, answers 200 and echoes
//! `Validation-Token`.

use clap::Args;

use super::Failure;

/// Flags of `listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Port on 127.0.0.1.
    #[arg(long, default_value = "9000")]
    port: u16,
    /// Signing secret (`whsec_…`) to verify signatures with.
    #[arg(long, env = "POSTBACK_SIGNING_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

/// Not built yet.
pub async fn run(args: ListenArgs) -> Result<(), Failure> {
    let _ = (args.port, args.secret);
    Err(Failure::runtime(anyhow::anyhow!(
        "`postback listen` is not yet implemented"
    )))
}
