//! `rotate-embed-example <config.toml>`: the whole order (steps 0-7) through the library's
//! entry point, as a tool of your own would run it; exits with rotate's exit code.

use rotate_cli::{Cancel, Request, Session};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let Some(config) = std::env::args_os().nth(1) else {
        eprintln!("usage: rotate-embed-example <config.toml>");
        return ExitCode::from(2);
    };
    let cancel = Cancel::new();
    cancel.on_signals();
    let outcome = match Session::open(config) {
        Ok(session) => session.run(&Request::default(), &cancel).await,
        Err(e) => Err(e),
    };
    let exit = match outcome {
        Ok(report) => {
            println!("{report}");
            report.exit()
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit()
        }
    };
    ExitCode::from(exit.code())
}
