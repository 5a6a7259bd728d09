//! The agent's post-hook script: render it (POSIX sh) and install it
//! atomically into the app user's directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::reload::Reloader;

/// Mode of the installed script.
pub const POST_HOOK_MODE: u32 = 0o755;

/// What the post-hook of one app checks and reloads.
///
/// Every reload entry uses the `PROXY_RELOAD` scheme of [`Reloader`]'s
/// string form: `podman:<name>[:<SIG>]`, `podman-restart:<name>`,
/// `podman-label:<label>`, `systemd-user:<unit>`, `signal:<pidfile>:<SIG>`,
/// `cmd:<shell command>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostHookSpec {
    /// The app (`ncprd1`): a plain user name.
    pub app: String,
    /// The leaf certificate plus chain (`/home/<app>/tls/<app>.fullchain.pem`).
    pub fullchain_path: PathBuf,
    /// The leaf's private key.
    pub key_path: PathBuf,
    /// `RELOAD_TLS_LABEL`: containers with this label get SIGHUP (`tls=true`).
    #[serde(default)]
    pub reload_tls_label: Option<String>,
    /// `PROXY_RELOAD`: how to reload the proxy (`podman:proxyprod`).
    #[serde(default)]
    pub proxy_reload: Option<String>,
    /// More reloads, run after the proxy's, in order (same scheme).
    #[serde(default)]
    pub extra_reload_cmds: Vec<String>,
    /// Where the hook reports its outcome, one line replaced atomically:
    /// `ok <sha256 of the fullchain> <message>` or `failed <sha256 or -> <reason>`. A gate
    /// waits for `ok` with the hash of the bytes it verified ([`parse_status`]).
    #[serde(default)]
    pub status_path: Option<PathBuf>,
    /// The agent's single render of key + fullchain
    /// ([`crate::AgentConfigSpec::rendered_path`]): the hook
    /// stages both files from it, checks they match and renames them into place. `None`:
    /// the files are already in place (the hook only checks them).
    #[serde(default)]
    pub rendered_path: Option<PathBuf>,
}

impl PostHookSpec {
    /// A hook for `app` that installs the leaf at `fullchain_path` and its key at
    /// `key_path` (the caller's layout; this crate assumes none), no reloads yet.
    pub fn new(
        app: impl Into<String>,
        fullchain_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            app: app.into(),
            fullchain_path: fullchain_path.into(),
            key_path: key_path.into(),
            reload_tls_label: None,
            proxy_reload: None,
            extra_reload_cmds: Vec::new(),
            status_path: None,
            rendered_path: None,
        }
    }

    /// Sets where the hook reports its outcome.
    #[must_use]
    pub fn status_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.status_path = Some(path.into());
        self
    }

    /// Sets `RELOAD_TLS_LABEL`.
    #[must_use]
    pub fn reload_tls_label(mut self, label: impl Into<String>) -> Self {
        self.reload_tls_label = Some(label.into());
        self
    }

    /// Sets `PROXY_RELOAD`.
    #[must_use]
    pub fn proxy_reload(mut self, spec: impl Into<String>) -> Self {
        self.proxy_reload = Some(spec.into());
        self
    }

    /// Adds one more reload.
    #[must_use]
    pub fn extra_reload(mut self, spec: impl Into<String>) -> Self {
        self.extra_reload_cmds.push(spec.into());
        self
    }
}

/// A post-hook's report, as read back from its status file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookStatus {
    /// It checked the files and ran every reload.
    Ok {
        /// sha256 (hex) of the fullchain it checked.
        fullchain_sha256: String,
    },
    /// It stopped.
    Failed {
        /// sha256 (hex) of the fullchain it saw, if it could read one.
        fullchain_sha256: Option<String>,
        /// Its message.
        reason: String,
    },
}

/// Parse a status line written by the hook; `None` for anything else.
pub fn parse_status(line: &str) -> Option<HookStatus> {
    let mut parts = line.trim_end().splitn(3, ' ');
    let (state, sum) = (parts.next()?, parts.next()?);
    let rest = parts.next().unwrap_or("").to_owned();
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match state {
        "ok" if hex(sum) => Some(HookStatus::Ok {
            fullchain_sha256: sum.to_owned(),
        }),
        "failed" => Some(HookStatus::Failed {
            fullchain_sha256: hex(sum).then(|| sum.to_owned()),
            reason: rest,
        }),
        _ => None,
    }
}

/// Renders the post-hook script for `spec`.
///
/// The script is POSIX sh with `set -eu`; it checks that the fullchain and
/// key exist, are non-empty PEM and that the key is not world-readable, then
/// SIGHUPs every running container labelled `RELOAD_TLS_LABEL`, then runs
/// `PROXY_RELOAD` and the extra reloads, logging one line per action on
/// stdout. Any failure prints `FAILED: <what>` on stderr and exits 1.
/// Re-running it only re-checks and re-signals. `PODMAN` and `SYSTEMCTL` in
/// the environment override the binaries used.
///
/// Refuses (with [`Error::InvalidSpec`] or [`Error::InvalidReloader`]) an app
/// name that is not a plain user name, relative paths, and reload strings
/// that do not parse.
pub fn render_post_hook(spec: &PostHookSpec) -> Result<String> {
    check_app(&spec.app)?;
    check_path("fullchain_path", &spec.fullchain_path)?;
    check_path("key_path", &spec.key_path)?;
    let rendered = match &spec.rendered_path {
        Some(p) => {
            check_path("rendered_path", p)?;
            path_str(p)
        }
        None => String::new(),
    };
    let status = match &spec.status_path {
        Some(p) => {
            check_path("status_path", p)?;
            path_str(p)
        }
        None => String::new(),
    };
    let label = match &spec.reload_tls_label {
        Some(label) => {
            // Same rules as a label reloader.
            Reloader::PodmanLabel {
                label: label.clone(),
                signal: None,
            }
            .validate()
            .map_err(|err| with_input(err, label))?;
            label.as_str()
        }
        None => "",
    };
    let proxy = match &spec.proxy_reload {
        Some(proxy) => {
            check_reload_spec(proxy)?;
            proxy.as_str()
        }
        None => "",
    };
    let mut extra = String::new();
    for spec in &spec.extra_reload_cmds {
        check_reload_spec(spec)?;
        extra.push_str(&format!("reload_spec {}\n", sh_quote(spec)));
    }

    let script = fill(
        TEMPLATE,
        &[
            ("APP_COMMENT", spec.app.clone()),
            ("APP", sh_quote(&spec.app)),
            ("FULLCHAIN", sh_quote(&path_str(&spec.fullchain_path))),
            ("KEY", sh_quote(&path_str(&spec.key_path))),
            ("LABEL", sh_quote(label)),
            ("PROXY", sh_quote(proxy)),
            ("STATUS", sh_quote(&status)),
            ("RENDERED", sh_quote(&rendered)),
            ("EXTRA", extra),
        ],
    );
    Ok(script)
}

/// Replaces each `@NAME@` of `template` by its value in one pass: a value is never
/// scanned again, so one containing `@KEY@` stays as it is. `@EXTRA@` takes the line
/// break after it along (its value is whole lines, or nothing).
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find('@') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let hit = after.find('@').and_then(|end| {
            let name = &after[..end];
            values
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (end, name, v))
        });
        match hit {
            Some((end, name, value)) => {
                out.push_str(value);
                rest = &after[end + 1..];
                if name == "EXTRA" {
                    rest = rest.strip_prefix('\n').unwrap_or(rest);
                }
            }
            None => {
                out.push('@');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn with_input(err: Error, input: &str) -> Error {
    match err {
        Error::InvalidReloader { reason, .. } => Error::InvalidReloader {
            input: input.to_owned(),
            reason,
        },
        other => other,
    }
}

fn check_reload_spec(spec: &str) -> Result<()> {
    if spec.contains(['\n', '\r', '\0']) {
        return Err(Error::InvalidReloader {
            input: spec.escape_debug().to_string(),
            reason: "contains a line break or NUL".to_owned(),
        });
    }
    match spec.parse::<Reloader>()? {
        Reloader::Systemd { .. } => Err(Error::InvalidReloader {
            input: spec.to_owned(),
            reason: "the post-hook runs as the app user, which cannot manage a system unit; reload it from rotate instead (e.g. [restarts] proxy), or use systemd-user:".to_owned(),
        }),
        _ => Ok(()),
    }
}

fn check_app(app: &str) -> Result<()> {
    let mut chars = app.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && app.len() <= 32 {
        Ok(())
    } else {
        Err(Error::InvalidSpec {
            field: "app",
            value: app.escape_debug().to_string(),
            reason: "expected a user name: [a-z_][a-z0-9_-]*, at most 32 characters".to_owned(),
        })
    }
}

/// A path that goes into an agent config or a shell script, or names an app's home:
/// absolute, UTF-8, no `..` or empty component, and only `[A-Za-z0-9._/+-]` (no
/// whitespace, quotes, `$`, backticks, `@` or other shell/template metacharacters).
pub fn check_safe_path(field: &'static str, path: &Path) -> Result<()> {
    let text = path.to_str().ok_or_else(|| Error::InvalidSpec {
        field,
        value: path.display().to_string(),
        reason: "not UTF-8".to_owned(),
    })?;
    let refuse = |reason: String| Error::InvalidSpec {
        field,
        value: text.escape_debug().to_string(),
        reason,
    };
    if !path.is_absolute() {
        return Err(refuse("must be absolute".into()));
    }
    if text.split('/').skip(1).any(|c| c.is_empty() || c == "..") && text != "/" {
        return Err(refuse("has an empty or `..` component".into()));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._/+-".contains(*c)))
    {
        return Err(refuse(format!(
            "contains {c:?}: only letters, digits and . _ / + - are allowed"
        )));
    }
    Ok(())
}

fn check_path(field: &'static str, path: &Path) -> Result<()> {
    check_safe_path(field, path)
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Single-quotes `s` for POSIX sh: `it's` -> `'it'\''s'`.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

const TEMPLATE: &str = r#"#!/bin/sh
# vault-agent-post-leaf.sh for @APP_COMMENT@, rendered by the `hooks` crate: do not edit.
# OpenBao/Vault Agent runs it after writing the leaf: issue -> write -> reload.
# Safe to re-run: it only re-checks the files and re-signals.
# PODMAN and SYSTEMCTL in the environment override the binaries used.
set -eu
set -f

APP=@APP@
FULLCHAIN=@FULLCHAIN@
KEY=@KEY@
RELOAD_TLS_LABEL=@LABEL@
PROXY_RELOAD=@PROXY@
STATUS=@STATUS@
RENDERED=@RENDERED@

PODMAN=${PODMAN:-podman}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
TAG="vault-agent-post-leaf[$APP]"

log() {
	printf '%s: %s\n' "$TAG" "$*"
}

# report <ok|failed> <message>: one line, replaced atomically, naming the exact fullchain
# bytes it is about (sha256); `rotate`'s leaf gate waits for "ok" with the hash it verified.
report() {
	[ -n "$STATUS" ] || return 0
	sum=-
	if [ -r "$FULLCHAIN" ]; then
		sum=$(sha256sum <"$FULLCHAIN" | cut -d ' ' -f 1) || sum=-
	fi
	printf '%s %s %s\n' "$1" "$sum" "$2" >"$STATUS.tmp" && mv -f "$STATUS.tmp" "$STATUS"
}

die() {
	printf '%s: FAILED: %s\n' "$TAG" "$*" >&2
	report failed "$*" || true
	exit 1
}

# check_file <what> <path> <pem marker>
check_file() {
	[ -e "$2" ] || die "$1 $2 does not exist"
	[ -f "$2" ] || die "$1 $2 is not a regular file"
	[ -r "$2" ] || die "$1 $2 is not readable"
	[ -s "$2" ] || die "$1 $2 is empty"
	grep -q -- "$3" "$2" || die "$1 $2 holds no '$3' block"
}

# signal_container <name> <signal>
signal_container() {
	"$PODMAN" kill --signal "$2" "$1" >/dev/null || die "$PODMAN kill --signal $2 $1 failed"
	log "sent SIG$2 to container $1"
}

# reload_label <label>: SIGHUP every running container carrying the label.
reload_label() {
	names=$("$PODMAN" ps --filter "label=$1" --format '{{.Names}}') ||
		die "$PODMAN ps --filter label=$1 failed"
	if [ -z "$names" ]; then
		log "no running container has label $1"
		return 0
	fi
	for name in $names; do
		signal_container "$name" HUP
	done
}

# reload_spec <spec>: podman:<name>[:<SIG>] | podman-restart:<name> |
# podman-label:<label> | systemd-user:<unit> | signal:<pidfile>:<SIG> | cmd:<command>
reload_spec() {
	spec=$1
	case $spec in
	podman:*)
		target=${spec#podman:}
		name=${target%%:*}
		sig=HUP
		case $target in *:*) sig=${target#*:} ;; esac
		signal_container "$name" "${sig#SIG}"
		;;
	podman-restart:*)
		name=${spec#podman-restart:}
		"$PODMAN" restart "$name" >/dev/null || die "$PODMAN restart $name failed"
		log "restarted container $name"
		;;
	podman-label:*)
		reload_label "${spec#podman-label:}"
		;;
	systemd-user:*)
		unit=${spec#systemd-user:}
		"$SYSTEMCTL" --user restart "$unit" || die "$SYSTEMCTL --user restart $unit failed"
		state=$("$SYSTEMCTL" --user is-active "$unit") ||
			die "unit $unit is ${state:-unknown} after restart, not active"
		log "restarted user unit $unit ($state)"
		;;
	signal:*)
		target=${spec#signal:}
		pidfile=${target%:*}
		sig=${target##*:}
		sig=${sig#SIG}
		[ "$pidfile" != "$target" ] || die "bad reload spec $spec: expected signal:<pidfile>:<SIG>"
		[ -s "$pidfile" ] || die "pid file $pidfile is missing or empty"
		pid=$(cat "$pidfile")
		case $pid in
		'' | *[!0-9]*) die "pid file $pidfile does not hold a pid" ;;
		esac
		[ "$pid" -gt 1 ] || die "pid file $pidfile holds $pid: refusing to signal it"
		kill -s "$sig" "$pid" || die "kill -s $sig $pid (from $pidfile) failed"
		log "sent SIG$sig to pid $pid ($pidfile)"
		;;
	cmd:*)
		shell_cmd=${spec#cmd:}
		sh -c "$shell_cmd" || die "reload command failed: $shell_cmd"
		log "ran $shell_cmd"
		;;
	*)
		die "unknown reload spec $spec (expected podman:, podman-restart:, podman-label:, systemd-user:, signal: or cmd:)"
		;;
	esac
}

# keys_match <key> <fullchain>: their public keys are equal (when openssl is there).
keys_match() {
	command -v openssl >/dev/null 2>&1 || return 0
	cert_pub=$(openssl x509 -noout -pubkey -in "$2") || return 1
	key_pub=$(openssl pkey -pubout -in "$1") || return 1
	[ "$cert_pub" = "$key_pub" ]
}

# The agent rendered key + fullchain into one file (atomically). Stage both files in
# full next to their targets (the key 0600 from creation), check them, and only then
# rename: a full disk fails here, before anything is replaced.
if [ -n "$RENDERED" ]; then
	check_file rendered "$RENDERED" 'BEGIN CERTIFICATE'
	rm -f "$KEY.new" "$FULLCHAIN.new"
	if ! (umask 077 && sed -n '/-----BEGIN [A-Z ]*PRIVATE KEY-----/,/-----END [A-Z ]*PRIVATE KEY-----/p' "$RENDERED" >"$KEY.new"); then
		rm -f "$KEY.new"
		die "cannot stage $KEY.new (disk full?); nothing was replaced"
	fi
	if ! (umask 022 && sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$RENDERED" >"$FULLCHAIN.new"); then
		rm -f "$KEY.new" "$FULLCHAIN.new"
		die "cannot stage $FULLCHAIN.new (disk full?); nothing was replaced"
	fi
	if ! [ -s "$KEY.new" ] || ! [ -s "$FULLCHAIN.new" ] || ! keys_match "$KEY.new" "$FULLCHAIN.new"; then
		rm -f "$KEY.new" "$FULLCHAIN.new"
		die "the render $RENDERED does not hold a matching key and certificate; nothing was replaced"
	fi
	if ! sync "$KEY.new" "$FULLCHAIN.new"; then
		rm -f "$KEY.new" "$FULLCHAIN.new"
		die "cannot sync the staged files (disk full or I/O error?); nothing was replaced"
	fi
	# The old key stays linked until the fullchain is replaced too: a failure in between
	# puts it back, so the pair in use is never left mismatched by an error.
	rm -f "$KEY.prev"
	[ ! -e "$KEY" ] || ln -f "$KEY" "$KEY.prev" || die "cannot keep $KEY.prev; nothing was replaced"
	mv -f "$KEY.new" "$KEY" || { rm -f "$KEY.prev" "$FULLCHAIN.new"; die "cannot replace $KEY; nothing was replaced"; }
	if ! mv -f "$FULLCHAIN.new" "$FULLCHAIN"; then
		[ ! -e "$KEY.prev" ] || mv -f "$KEY.prev" "$KEY"
		rm -f "$FULLCHAIN.new"
		die "cannot replace $FULLCHAIN; the previous key was put back"
	fi
	rm -f "$KEY.prev"
	log "installed key and fullchain from $RENDERED"
fi

check_file fullchain "$FULLCHAIN" 'BEGIN CERTIFICATE'
check_file key "$KEY" 'PRIVATE KEY'
if [ -n "$(find "$KEY" -perm -004)" ]; then
	die "key $KEY is world-readable"
fi
if command -v openssl >/dev/null 2>&1; then
	cert_pub=$(openssl x509 -noout -pubkey -in "$FULLCHAIN") || die "no certificate readable in $FULLCHAIN"
	key_pub=$(openssl pkey -pubout -in "$KEY") || die "no key readable in $KEY"
	[ "$cert_pub" = "$key_pub" ] || die "key $KEY does not match the certificate in $FULLCHAIN"
else
	log "openssl not found: key/certificate match not checked here"
fi
log "fullchain $FULLCHAIN and key $KEY are in place"

if [ -n "$RELOAD_TLS_LABEL" ]; then
	reload_label "$RELOAD_TLS_LABEL"
fi
if [ -n "$PROXY_RELOAD" ]; then
	reload_spec "$PROXY_RELOAD"
fi
@EXTRA@
report ok reloaded
log "done"
"#;

#[cfg(test)]
mod safe_path_tests {
    use super::*;

    #[test]
    fn safe_paths_refuse_shell_and_template_characters() {
        for ok in [
            "/home/ncprd1/.vault-agent-ncprd1/bin/vault-agent-post-leaf.sh",
            "/tmp/.tmpAb12_x/home-a",
        ] {
            check_safe_path("home", Path::new(ok)).unwrap();
        }
        for (bad, what) in [
            ("/home/a b", "' '"),
            ("/home/$(id)", "'$'"),
            ("/home/a;b", "';'"),
            ("/home/a\"b", "'\"'"),
            ("/home/`x`", "'`'"),
            ("/home/../etc", "`..`"),
            ("home/a", "absolute"),
        ] {
            let err = check_safe_path("home", Path::new(bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains(what), "{bad}: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The write-up's layout for `app` under `/home/<app>`.
    fn seed_spec(app: &str) -> PostHookSpec {
        PostHookSpec::new(
            app,
            format!("/home/{app}/tls/{app}.fullchain.pem"),
            format!("/home/{app}/tls/{app}.key"),
        )
    }
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    /// A real self-signed P-256 pair from the `openssl` CLI (the hook checks the match).
    fn openssl_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (key, cert) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.crt")),
        );
        let out = Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:P-256",
                "-subj",
                "/CN=ncprd1",
                "-days",
                "1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl CLI is needed for this test (apt-get install openssl)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (key, cert)
    }

    /// A lab: leaf files, a fake `podman` that logs its arguments and lists
    /// two labelled containers, and a rendered hook.
    struct Lab {
        dir: tempfile::TempDir,
        spec: PostHookSpec,
    }

    impl Lab {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let tls = dir.path().join("tls");
            std::fs::create_dir(&tls).expect("mkdir");
            let spec = PostHookSpec {
                fullchain_path: tls.join("ncprd1.fullchain.pem"),
                key_path: tls.join("ncprd1.key"),
                ..seed_spec("ncprd1")
            }
            .reload_tls_label("tls=true")
            .proxy_reload("podman:proxyprod")
            .status_path(dir.path().join("post-hook.status"));
            let (key, cert) = openssl_pair(dir.path(), "pair");
            std::fs::copy(cert, &spec.fullchain_path).expect("copy");
            std::fs::copy(key, &spec.key_path).expect("copy");
            std::fs::set_permissions(&spec.key_path, Permissions::from_mode(0o600)).expect("chmod");
            let podman = dir.path().join("fake-podman");
            let log = dir.path().join("podman.log");
            std::fs::write(
                &podman,
                format!(
                    "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\n\
                     if [ \"$1\" = ps ]; then printf 'ncprd1-nginx\\nncprd1-app\\n'; fi\n\
                     if [ \"$1\" = kill ] && [ \"$4\" = broken ]; then echo 'Error: no container with name or ID \"broken\" found' >&2; exit 125; fi\n",
                    log.display()
                ),
            )
            .expect("write");
            std::fs::set_permissions(&podman, Permissions::from_mode(0o755)).expect("chmod");
            Self { dir, spec }
        }

        fn run(&self) -> std::process::Output {
            let script = self.dir.path().join("hook.sh");
            std::fs::write(&script, render_post_hook(&self.spec).expect("renders")).expect("write");
            Command::new("sh")
                .arg(&script)
                .env("PODMAN", self.dir.path().join("fake-podman"))
                .output()
                .expect("sh runs")
        }

        fn podman_calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("podman.log"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    #[test]
    fn installs_key_and_fullchain_from_the_agents_single_render_or_replaces_nothing() {
        use std::os::unix::fs::MetadataExt;
        let mut lab = Lab::new();
        let rendered = lab.dir.path().join("tls/.ncprd1.fullchain.pem.rendered");
        lab.spec.rendered_path = Some(rendered.clone());
        let (key, cert) = openssl_pair(lab.dir.path(), "new");
        let (key_pem, cert_pem) = (
            std::fs::read_to_string(&key).expect("key"),
            std::fs::read_to_string(&cert).expect("cert"),
        );
        std::fs::write(&rendered, format!("{key_pem}\n{cert_pem}\n")).expect("render");
        let out = lab.run();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(&lab.spec.key_path).unwrap().trim(),
            key_pem.trim()
        );
        assert_eq!(
            std::fs::read_to_string(&lab.spec.fullchain_path)
                .unwrap()
                .trim(),
            cert_pem.trim()
        );
        assert_eq!(
            std::fs::metadata(&lab.spec.key_path).unwrap().mode() & 0o777,
            0o600
        );

        // A render whose key does not match its certificate replaces nothing.
        let before = (
            std::fs::read(&lab.spec.key_path).unwrap(),
            std::fs::read(&lab.spec.fullchain_path).unwrap(),
        );
        let (other_key, _) = openssl_pair(lab.dir.path(), "other");
        let other = std::fs::read_to_string(other_key).unwrap();
        std::fs::write(&rendered, format!("{other}\n{cert_pem}\n")).expect("render");
        let out = lab.run();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("nothing was replaced"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            (
                std::fs::read(&lab.spec.key_path).unwrap(),
                std::fs::read(&lab.spec.fullchain_path).unwrap()
            ),
            before
        );
        assert!(!lab.spec.key_path.with_extension("key.new").exists());
    }

    #[test]
    fn rendered_script_passes_shellcheck() {
        let spec = seed_spec("ncprd1")
            .reload_tls_label("tls=true")
            .proxy_reload("podman:proxyprod")
            .extra_reload("cmd:echo 'it''s fine'")
            .extra_reload("systemd-user:nginx.service");
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("vault-agent-post-leaf.sh");
        std::fs::write(&script, render_post_hook(&spec).expect("renders")).expect("write");
        let out = match Command::new("shellcheck")
            .args(["-s", "sh", "-S", "style"])
            .arg(&script)
            .output()
        {
            Ok(out) => out,
            Err(err) => {
                panic!("shellcheck is needed for this test (apt-get install shellcheck): {err}")
            }
        };
        assert!(
            out.status.success(),
            "shellcheck found problems:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    #[test]
    fn renders_the_write_up_values() {
        let script = render_post_hook(
            &seed_spec("ncprd1")
                .reload_tls_label("tls=true")
                .proxy_reload("podman:proxyprod"),
        )
        .expect("renders");
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("\nset -eu\n"));
        assert!(script.contains("RELOAD_TLS_LABEL='tls=true'\n"));
        assert!(script.contains("PROXY_RELOAD='podman:proxyprod'\n"));
        assert!(script.contains("FULLCHAIN='/home/ncprd1/tls/ncprd1.fullchain.pem'\n"));
        assert!(!script.contains('@'), "a placeholder was left:\n{script}");
    }

    #[test]
    fn a_value_holding_a_placeholder_is_not_substituted_again() {
        let script =
            render_post_hook(&seed_spec("ncprd1").reload_tls_label("x@KEY@")).expect("renders");
        assert!(script.contains("RELOAD_TLS_LABEL='x@KEY@'\n"), "{script}");
        let home = PostHookSpec {
            key_path: "/home/a@KEY@/tls/a.key".into(),
            ..seed_spec("ncprd1")
        };
        let err = render_post_hook(&home)
            .expect_err("@ in a path")
            .to_string();
        assert!(err.contains("'@'"), "{err}");
    }

    #[test]
    fn refuses_bad_specs() {
        let bad_app =
            PostHookSpec::new("ncprd1; rm -rf /", "/home/x/tls/x.pem", "/home/x/tls/x.key");
        assert!(matches!(
            render_post_hook(&bad_app),
            Err(Error::InvalidSpec { field: "app", .. })
        ));
        let relative = PostHookSpec {
            key_path: "tls/key.pem".into(),
            ..seed_spec("ncprd1")
        };
        assert!(matches!(
            render_post_hook(&relative),
            Err(Error::InvalidSpec {
                field: "key_path",
                ..
            })
        ));
        let bad_proxy = seed_spec("ncprd1").proxy_reload("docker:proxyprod");
        let err = render_post_hook(&bad_proxy).expect_err("bad scheme");
        assert!(err.to_string().contains("docker:proxyprod"), "{err}");
        let bad_label = seed_spec("ncprd1").reload_tls_label("tls=true x");
        let err = render_post_hook(&bad_label).expect_err("bad label");
        assert!(err.to_string().contains("`tls=true x`"), "{err}");
        let newline = seed_spec("ncprd1").extra_reload("cmd:a\nb");
        assert!(render_post_hook(&newline).is_err());
    }

    #[test]
    fn quoting_survives_the_shell() {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s' {}", sh_quote("it's $HOME `x` \"y\"")))
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME `x` \"y\"");
    }

    #[test]
    fn hook_hups_labelled_containers_then_the_proxy() {
        let lab = Lab::new();
        let out = lab.run();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "hook failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            lab.podman_calls(),
            [
                "ps --filter label=tls=true --format {{.Names}}",
                "kill --signal HUP ncprd1-nginx",
                "kill --signal HUP ncprd1-app",
                "kill --signal HUP proxyprod",
            ]
        );
        assert!(
            stdout.contains("sent SIGHUP to container ncprd1-nginx"),
            "{stdout}"
        );
        assert!(
            stdout.contains("sent SIGHUP to container proxyprod"),
            "{stdout}"
        );
        // Idempotent: a second run does the same again and still succeeds.
        assert!(lab.run().status.success());
        assert_eq!(lab.podman_calls().len(), 8);
    }

    #[test]
    fn hook_runs_signal_and_cmd_reloads() {
        let mut lab = Lab::new();
        let pid_file = lab.dir.path().join("proxy.pid");
        let marker = lab.dir.path().join("marker");
        // Our own sleeping child stands in for the proxy process.
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        std::fs::write(&pid_file, format!("{}\n", child.id())).expect("write");
        lab.spec.reload_tls_label = None;
        lab.spec.proxy_reload = Some(format!("signal:{}:USR1", pid_file.display()));
        lab.spec.extra_reload_cmds = vec![format!("cmd:touch '{}'", marker.display())];
        let out = lab.run();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(10)
        );
        assert!(marker.exists());
        assert!(lab.podman_calls().is_empty());
    }

    #[test]
    fn a_system_unit_reload_is_refused_for_the_post_hook() {
        let mut lab = Lab::new();
        lab.spec.proxy_reload = Some("systemd:nginx.service".into());
        let err = render_post_hook(&lab.spec)
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("systemd:nginx.service") && err.contains("app user"),
            "{err}"
        );
    }

    #[test]
    fn hook_fails_loudly_without_fullchain() {
        let lab = Lab::new();
        std::fs::remove_file(&lab.spec.fullchain_path).expect("rm");
        let out = lab.run();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("FAILED: fullchain"), "{stderr}");
        assert!(
            stderr.contains("ncprd1.fullchain.pem does not exist"),
            "{stderr}"
        );
        assert!(
            lab.podman_calls().is_empty(),
            "reloaded despite the missing file"
        );
    }

    #[test]
    fn hook_fails_on_empty_key_and_world_readable_key() {
        let lab = Lab::new();
        std::fs::write(&lab.spec.key_path, "").expect("truncate");
        let out = lab.run();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));

        let (key, _) = openssl_pair(lab.dir.path(), "again");
        std::fs::copy(key, &lab.spec.key_path).expect("copy");
        std::fs::set_permissions(&lab.spec.key_path, Permissions::from_mode(0o644)).expect("chmod");
        let out = lab.run();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("world-readable"));
    }

    fn status(lab: &Lab) -> Option<HookStatus> {
        let path = lab.spec.status_path.as_ref().expect("status path");
        parse_status(&std::fs::read_to_string(path).expect("the hook wrote its status"))
    }

    fn sha256_of(path: &Path) -> String {
        let out = Command::new("sha256sum")
            .arg(path)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn hook_reports_ok_for_the_exact_fullchain_it_checked() {
        let lab = Lab::new();
        let out = lab.run();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            status(&lab),
            Some(HookStatus::Ok {
                fullchain_sha256: sha256_of(&lab.spec.fullchain_path)
            })
        );
    }

    #[test]
    fn hook_refuses_a_key_of_another_pair_reports_it_and_reloads_nothing() {
        let lab = Lab::new();
        let (other, _) = openssl_pair(lab.dir.path(), "other");
        std::fs::copy(other, &lab.spec.key_path).expect("copy");
        let out = lab.run();
        assert_eq!(out.status.code(), Some(1));
        assert!(lab.podman_calls().is_empty(), "reloaded a mismatched pair");
        match status(&lab) {
            Some(HookStatus::Failed {
                fullchain_sha256: Some(sum),
                reason,
            }) => {
                assert_eq!(sum, sha256_of(&lab.spec.fullchain_path));
                assert!(reason.contains("does not match"), "{reason}");
            }
            other => panic!("expected a failed status, got {other:?}"),
        }
    }

    #[test]
    fn status_lines_parse_strictly() {
        let sum = "ab".repeat(32);
        assert_eq!(
            parse_status(&format!("ok {sum} reloaded\n")),
            Some(HookStatus::Ok {
                fullchain_sha256: sum.clone()
            })
        );
        assert_eq!(
            parse_status("failed - pid file /x is missing"),
            Some(HookStatus::Failed {
                fullchain_sha256: None,
                reason: "pid file /x is missing".into()
            })
        );
        assert_eq!(parse_status("ok - reloaded"), None, "ok needs a hash");
        assert_eq!(parse_status("garbage"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn hook_fails_when_podman_fails() {
        let mut lab = Lab::new();
        lab.spec.proxy_reload = Some("podman:broken".into());
        let out = lab.run();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no container with name"), "{stderr}");
        assert!(
            stderr.contains("FAILED:") && stderr.contains("kill --signal HUP broken failed"),
            "{stderr}"
        );
    }
}
