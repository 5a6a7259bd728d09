//! [`ProgramOverrides`]: run `systemctl`, `podman`, ... from configured paths.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::CommandRunner;
use crate::error::Result;
use crate::runner::{CommandOutput, CommandSpec};

/// A [`CommandRunner`] that replaces program names before running them, e.g.
/// `systemctl` -> `/usr/local/bin/systemctl-wrapper`, so a site (or a test lab) can point
/// the reloaders at other binaries without touching `PATH`.
pub struct ProgramOverrides<R> {
    inner: R,
    programs: BTreeMap<String, String>,
}

impl<R: CommandRunner> ProgramOverrides<R> {
    /// Wrap `inner`, mapping each key of `programs` to its value.
    pub fn new(inner: R, programs: BTreeMap<String, String>) -> Self {
        ProgramOverrides { inner, programs }
    }
}

#[async_trait]
impl<R: CommandRunner> CommandRunner for ProgramOverrides<R> {
    async fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput> {
        let mut cmd = cmd.clone();
        if let Some(program) = self.programs.get(&cmd.program) {
            cmd.program.clone_from(program);
        } else if cmd.program == "runuser" {
            // `runuser -u <user> -- systemctl ...` keeps its program after `--`.
            if let Some(i) = cmd.args.iter().position(|a| a == "--")
                && let Some(p) = cmd.args.get(i + 1).and_then(|a| self.programs.get(a))
            {
                cmd.args[i + 1].clone_from(p);
            }
        }
        self.inner.run(&cmd).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::DryRunRunner;
    use std::sync::Arc;

    #[tokio::test]
    async fn replaces_the_program_only_when_configured() {
        let dry = Arc::new(DryRunRunner::new());
        let r = ProgramOverrides::new(
            dry.clone(),
            BTreeMap::from([("systemctl".to_string(), "/lab/bin/systemctl".to_string())]),
        );
        r.run(&CommandSpec::new("systemctl").args(["--user", "restart", "u"]))
            .await
            .unwrap();
        r.run(&CommandSpec::new("podman").arg("ps")).await.unwrap();
        let rec = dry.recorded();
        assert_eq!(rec[0].program, "/lab/bin/systemctl");
        assert_eq!(rec[0].args, ["--user", "restart", "u"]);
        assert_eq!(rec[1].program, "podman");
    }
}
