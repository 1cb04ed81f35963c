//! `postback customers secret rotate ID [--grace DUR]` and `postback
//! secrets reencrypt`: the customer and secret chores an operator runs
//! from a shell, through the same library calls as the API.

use clap::{Args, Subcommand};

use super::admin::{library, DbArgs};
use super::Failure;
use crate::model::RotateSecret;

/// `postback customers …`.
#[derive(Debug, Subcommand)]
pub enum CustomersCommand {
    /// A customer's signing secret.
    #[command(subcommand)]
    Secret(SecretCommand),
}

/// `postback customers secret …`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Make a new secret sign the customer's callbacks; prints it once.
    Rotate(RotateArgs),
}

/// `customers secret rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The customer id.
    id: String,
    /// How long the replaced secret keeps signing (0s to 7d; default 24h).
    #[arg(long)]
    grace: Option<String>,
}

/// `postback secrets …`.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Rewrite every stored secret under the first key of POSTBACK_SECRETS_KEY.
    Reencrypt(ReencryptArgs),
}

/// `secrets reencrypt`.
#[derive(Debug, Args)]
pub struct ReencryptArgs {
    #[command(flatten)]
    db: DbArgs,
}

/// Runs `customers …`.
pub async fn customers(cmd: CustomersCommand) -> Result<(), Failure> {
    let CustomersCommand::Secret(SecretCommand::Rotate(args)) = cmd;
    let postback = library(&args.db)?;
    let (pool, _) = args.db.connect().await?;
    let rotated = postback
        .rotate_secret(
            &pool,
            &args.id,
            RotateSecret {
                grace_period: args.grace,
                signing_secret: None,
            },
        )
        .await
        .map_err(usage_if_input)?;
    println!("{}", rotated.signing_secret);
    eprintln!(
        "the secret above signs customer {}'s callbacks from now on; it is not shown again",
        args.id
    );
    Ok(())
}

/// Runs `secrets …`.
pub async fn secrets(cmd: SecretsCommand) -> Result<(), Failure> {
    let SecretsCommand::Reencrypt(args) = cmd;
    let postback = library(&args.db)?;
    if args.db.secrets_key().is_none() {
        return Err(Failure::usage(anyhow::anyhow!(
            "POSTBACK_SECRETS_KEY is not set: there is no key to encrypt with"
        )));
    }
    let (pool, _) = args.db.connect().await?;
    let done = postback.reseal_all(&pool).await?;
    println!(
        "re-encrypted: {} customer secrets, {} jobs, {} payloads, {} settings",
        done.customer_secrets, done.jobs, done.payloads, done.settings
    );
    Ok(())
}

/// Bad input (unknown customer, bad grace) is exit 2; the rest exit 1.
fn usage_if_input(err: crate::Error) -> Failure {
    match err {
        crate::Error::Validation { .. } | crate::Error::NotFound { .. } => Failure::usage(err),
        other => Failure::runtime(other),
    }
}
