//! The exit codes of `gaios`, named, and the table `--help` prints from
//! them, so the help and the code cannot drift apart.
//!
//! A failure carries its [`Exit`] up to `main` either as a library
//! [`Error`] (mapped by [`Exit::of_error`]) or as a [`Failure`] that a
//! command raises itself.

use gaios_client::Error;

/// What kind of failure ended `gaios`; the value is the process's exit code.
///
/// `lock` and `elect` otherwise exit with CMD's own status, which may be any
/// code (128+N if a signal N ended it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The command did what it was asked.
    Ok = 0,
    /// Any failure without a code of its own.
    Other = 1,
    /// Bad flags or arguments (clap exits with this code too).
    Usage = 2,
    /// No such node, or nobody leads an election.
    NotFound = 3,
    /// A lock held or a precondition failed.
    FailedPrecondition = 4,
    /// No master or no quorum answered in time.
    Unavailable = 5,
    /// An invalid argument or a bad path.
    InvalidArgument = 6,
    /// The node already exists.
    AlreadyExists = 7,
    /// The session expired: a lock or leadership was lost for sure.
    Lost = 8,
    /// The session entered jeopardy: a lock or leadership may be lost.
    AtRisk = 9,
    /// The cell refused: a node's ACL, a session of another identity, or a
    /// call that needs a cell administrator.
    PermissionDenied = 10,
    /// CMD exists but could not be started.
    CannotRun = 126,
    /// CMD was not found.
    CommandNotFound = 127,
    /// Ctrl-c came before CMD started.
    Interrupted = 130,
}

impl Exit {
    /// Every exit code, in the order of the help table.
    pub const ALL: [Exit; 14] = [
        Exit::Ok,
        Exit::Other,
        Exit::Usage,
        Exit::NotFound,
        Exit::FailedPrecondition,
        Exit::Unavailable,
        Exit::InvalidArgument,
        Exit::AlreadyExists,
        Exit::Lost,
        Exit::AtRisk,
        Exit::PermissionDenied,
        Exit::CannotRun,
        Exit::CommandNotFound,
        Exit::Interrupted,
    ];

    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// What the code means, as the help table says it (lines after the
    /// first are indented by the table).
    fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Other => "other error",
            Exit::Usage => "usage error (bad flags or arguments)",
            Exit::NotFound => "not found (no such node; `leader`: nobody leads)",
            Exit::FailedPrecondition => {
                "lock held or precondition failed (compare-and-set mismatch, lock not\n\
                 granted within --timeout, directory not empty, not a file/directory)"
            }
            Exit::Unavailable => "no master or no quorum (no replica answered in time; `status`: no\n\
                 master, or none agreed on within --wait-ms)",
            Exit::InvalidArgument => "invalid argument or bad path",
            Exit::AlreadyExists => "already exists",
            Exit::Lost => {
                "session expired (`lock`/`elect`: the lock or leadership was lost\n\
                 while CMD ran; CMD was sent SIGTERM)"
            }
            Exit::AtRisk => {
                "`lock`/`elect`: the session entered jeopardy while CMD ran (the lock\n\
                 or leadership may be lost); CMD was sent SIGTERM (8 instead if it was\n\
                 lost for sure by the time CMD ended)"
            }
            Exit::PermissionDenied => "permission denied (a node's ACL, a session of another identity, a\n\
                 call that needs a cell administrator, or a certificate without an identity)",
            Exit::CannotRun => "`lock`/`elect`: CMD could not be started",
            Exit::CommandNotFound => "`lock`/`elect`: CMD not found",
            Exit::Interrupted => "interrupted (ctrl-c) before CMD started",
        }
    }

    /// The exit code of a library error.
    pub fn of_error(error: &Error) -> Exit {
        match error {
            Error::NotFound(_) => Exit::NotFound,
            Error::LockHeld(_) | Error::FailedPrecondition { .. } | Error::Timeout(_) => Exit::FailedPrecondition,
            Error::NoMaster(_) => Exit::Unavailable,
            Error::InvalidArgument(_) | Error::BadAddress(_) => Exit::InvalidArgument,
            Error::AlreadyExists(_) => Exit::AlreadyExists,
            Error::SessionExpired => Exit::Lost,
            Error::AclDenied(_) | Error::PermissionDenied(_) | Error::Unauthenticated(_) => Exit::PermissionDenied,
            _ => Exit::Other,
        }
    }

    /// The exit code of an error: the first cause that names one, else
    /// [`Exit::Other`].
    pub fn of(error: &anyhow::Error) -> Exit {
        for cause in error.chain() {
            if let Some(failure) = cause.downcast_ref::<Failure>() {
                return failure.exit;
            }
            if let Some(error) = cause.downcast_ref::<Error>() {
                return Exit::of_error(error);
            }
        }
        Exit::Other
    }
}

/// The exit codes and the environment, as `--help` prints them after each
/// command's flags.
pub fn help() -> String {
    let mut text = String::from("Exit codes:\n");
    for exit in Exit::ALL {
        let mut lines = exit.meaning().lines();
        text.push_str(&format!("  {:<4} {}\n", exit.code(), lines.next().unwrap_or_default()));
        for line in lines {
            text.push_str(&format!("       {}\n", line.trim_start()));
        }
    }
    text.push_str(
        "  `lock`/`elect` otherwise exit with CMD's own status (128+N if a signal N\n  \
         ended it).\n\nEnvironment:\n  GAIOS_CELL   the cell's client addresses (like --cell)",
    );
    text
}

/// A failure with its own exit code (not an error of the library).
#[derive(Debug)]
pub struct Failure {
    exit: Exit,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error that exits with `exit` and says `message`.
pub fn failure(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure { exit, message: message.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_distinct_and_in_the_help_once() {
        let help = help();
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|exit| exit.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Exit::ALL.len(), "two names share a code");
        for exit in Exit::ALL {
            let row = format!("\n  {:<4} ", exit.code());
            assert_eq!(help.matches(&row).count(), 1, "{exit:?} is listed once:\n{help}");
        }
    }

    #[test]
    fn the_codes_scripts_rely_on_keep_their_values() {
        let values: Vec<(Exit, u8)> = Exit::ALL.iter().map(|exit| (*exit, exit.code())).collect();
        assert_eq!(
            values,
            [
                (Exit::Ok, 0),
                (Exit::Other, 1),
                (Exit::Usage, 2),
                (Exit::NotFound, 3),
                (Exit::FailedPrecondition, 4),
                (Exit::Unavailable, 5),
                (Exit::InvalidArgument, 6),
                (Exit::AlreadyExists, 7),
                (Exit::Lost, 8),
                (Exit::AtRisk, 9),
                (Exit::PermissionDenied, 10),
                (Exit::CannotRun, 126),
                (Exit::CommandNotFound, 127),
                (Exit::Interrupted, 130),
            ]
        );
    }

    #[test]
    fn an_error_exits_with_its_first_named_cause() {
        let error = anyhow::Error::new(Error::SessionExpired).context("stopped watching /w");
        assert_eq!(Exit::of(&error), Exit::Lost);
        let denied = anyhow::Error::new(Error::AclDenied("no write".into())).context("cannot write /x");
        assert_eq!(Exit::of(&denied), Exit::PermissionDenied);
        let error = failure(Exit::NotFound, "no leader of /e").context("outer");
        assert_eq!(Exit::of(&error), Exit::NotFound);
        assert_eq!(Exit::of(&anyhow::anyhow!("plain")), Exit::Other);
    }
}
