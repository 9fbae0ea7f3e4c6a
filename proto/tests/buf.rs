//! The schema's checks: `buf lint` passes (with the exceptions `buf.yaml`
//! justifies), and `buf breaking` finds nothing a client or peer of the
//! previous commit's schema would read or send differently (binary and
//! JSON).
//!
//! `scripts/install-build-deps` installs buf from npm into
//! `~/.cache/gaios/buf` (or give its path in `GAIOS_BUF`); the test fails
//! if it is missing, so the test command never skips the checks silently.

use std::path::{Path, PathBuf};
use std::process::Command;

fn buf() -> PathBuf {
    if let Some(path) = std::env::var_os("GAIOS_BUF") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let path = home.join(".cache/gaios/buf/node_modules/.bin/buf");
    assert!(path.exists(), "no buf at {} (scripts/install-build-deps installs it; or set GAIOS_BUF)", path.display());
    path
}

fn proto_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs buf with `args` in the proto folder; its output if it fails.
fn run_buf(args: &[&str]) -> Result<(), String> {
    let output = Command::new(buf()).args(args).current_dir(proto_dir()).output().map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    }
}

#[test]
fn buf_lint_passes() {
    run_buf(&["lint"]).unwrap_or_else(|failures| panic!("buf lint:\n{failures}"));
}

/// The schema of `commit` (the `.proto` files), extracted into a new
/// folder outside any buf workspace; `None` if git has no such commit (a
/// shallow clone).
fn schema_at(commit: &str) -> Option<tempfile_dir::Dir> {
    let repository = proto_dir().parent()?;
    let dir = tempfile_dir::Dir::new();
    let archive = Command::new("git").arg("-C").arg(repository).args(["archive", commit, "proto/gaios"]).output().ok()?;
    if !archive.status.success() {
        return None;
    }
    let mut tar = Command::new("tar").args(["-x", "-C"]).arg(dir.path()).stdin(std::process::Stdio::piped()).spawn().ok()?;
    std::io::Write::write_all(tar.stdin.as_mut()?, &archive.stdout).ok()?;
    tar.wait().ok()?.success().then_some(dir)
}

#[test]
fn buf_breaking_finds_nothing_against_the_previous_commit() {
    let previous = schema_at("HEAD~1").or_else(|| schema_at("HEAD")).expect("the schema of HEAD~1 or HEAD from git");
    let against = previous.path().join("proto");
    let against = against.to_str().expect("a UTF-8 path");
    run_buf(&["breaking", "--against", against]).unwrap_or_else(|failures| panic!("buf breaking against the previous commit:\n{failures}"));
}

/// A folder under the system's temporary directory, removed when dropped.
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let unique = format!("gaios-buf-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
            let path = std::env::temp_dir().join(unique);
            std::fs::create_dir_all(&path).expect("a temporary folder");
            Dir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
