//! `appid authority …`: the CA directory (more subcommands come with the
//! authority service).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::identity::ca::{CA_CERT_FILE, CA_KEY_FILE, Ca, KeyAlg};

#[derive(Debug, clap::Subcommand)]
pub enum AuthorityCommand {
    /// Create a new CA in DIR (refuses to overwrite an existing one)
    Init {
        /// The trust domain, e.g. prod.example
        #[arg(long, value_name = "TD")]
        trust_domain: String,
        /// Directory for ca.pem and ca.key (created if missing)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Key algorithm of the CA
        #[arg(long, value_enum, default_value_t = KeyAlg::EcdsaP256)]
        key_alg: KeyAlg,
    },
}

pub fn run(command: AuthorityCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuthorityCommand::Init {
            trust_domain,
            dir,
            key_alg,
        } => {
            let ca = Ca::init(&dir, &trust_domain, key_alg)
                .with_context(|| format!("authority init --dir {}", dir.display()))?;
            println!(
                "created CA for trust domain {} in {}: {} (trust bundle), {} (key, mode 0600)",
                ca.trust_domain(),
                dir.display(),
                dir.join(CA_CERT_FILE).display(),
                dir.join(CA_KEY_FILE).display(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
