//! `rotate`: parse the command line, run, exit with a documented code (see `rotate_cli::Exit`).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = rotate_cli::Cli::parse();
    // Progress per step and target on stderr (stdout carries the report); `ROTATE_LOG`
    // overrides, e.g. `ROTATE_LOG=debug` or `ROTATE_LOG=warn` for quiet runs.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROTATE_LOG")
                .unwrap_or_else(|_| "warn,rotate::progress=info".into()),
        )
        .without_time()
        .with_target(false)
        // Plain text, control bytes escaped: fields carry text from outside.
        .with_ansi(false)
        .with_writer(|| rotate_cli::LogWriter)
        .init();
    let mut stdout = std::io::stdout().lock();
    rotate_cli::run(cli, &mut stdout).await.into()
}
