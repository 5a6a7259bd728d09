//! `rotate`: parse the command line, run, exit with a documented code (see `rotate_cli::Exit`).

use clap::{CommandFactory as _, FromArgMatches as _};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `--color` decides how clap itself prints help and usage errors, so it is read first.
    let color = color_choice(std::env::args_os().skip(1));
    let parsed = rotate_cli::Cli::command()
        .color(color)
        .try_get_matches()
        .and_then(|m| rotate_cli::Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        // Help and version go to stdout; a reader that stops early (`| head`) is fine.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => e.exit(),
    };
    let progress = if cli.quiet {
        "warn"
    } else {
        "warn,rotate::progress=info"
    };
    // Progress per step and target on stderr (stdout carries the report); `ROTATE_LOG`
    // overrides, e.g. `ROTATE_LOG=debug` or `ROTATE_LOG=warn` for quiet runs.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROTATE_LOG")
                .unwrap_or_else(|_| progress.into()),
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

/// The `--color` value among the arguments (`auto` when absent or not understood: clap
/// then reports the bad value itself).
fn color_choice(args: impl Iterator<Item = std::ffi::OsString>) -> clap::ColorChoice {
    let mut args = args.map(|a| a.to_string_lossy().into_owned());
    let mut choice = None;
    while let Some(a) = args.next() {
        if a == "--" {
            break;
        }
        if a == "--color" {
            choice = args.next();
        } else if let Some(v) = a.strip_prefix("--color=") {
            choice = Some(v.to_owned());
        }
    }
    match choice.as_deref() {
        Some("always") => clap::ColorChoice::Always,
        Some("never") => clap::ColorChoice::Never,
        _ => clap::ColorChoice::Auto,
    }
}
