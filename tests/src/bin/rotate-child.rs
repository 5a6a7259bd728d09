//! The `rotate` command line built inside the test package, so integration tests can run
//! it as a real process: kill it mid-run, stop it while it holds the lock.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = rotate_cli::Cli::parse();
    let mut stdout = std::io::stdout().lock();
    rotate_cli::run(cli, &mut stdout).await.into()
}
