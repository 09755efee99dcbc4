//! One module per subcommand; each has `Args` and `run(Args) -> anyhow::Result<ExitCode>`.
pub mod demo;
pub mod docs;
pub mod fabric;
pub mod health;
pub mod inspect;
pub mod pack;
pub mod place;
pub mod plan;
pub mod read;
pub mod secret;
pub mod serve;
pub mod verify;
