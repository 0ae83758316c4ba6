//! The one error type of the client commands, and the exit code each kind maps to.

/// Exit codes of every client command, as documented in `--help`.
pub mod exit_code {
    /// The command did what was asked.
    pub const OK: u8 = 0;
    /// The API answered with an error (4xx other than below, or 5xx), or a local failure.
    pub const API_ERROR: u8 = 1;
    /// Bad command line (clap's usage errors use 2 as well).
    pub const USAGE: u8 = 2;
    /// The node could not be reached (connection refused, timeout, bad address).
    pub const UNREACHABLE: u8 = 3;
    /// The API refused the key (401) or the action (403).
    pub const AUTH: u8 = 4;
    /// The thing named does not exist (404).
    pub const NOT_FOUND: u8 = 5;
    /// `shoal run` when the run timed out (as timeout(1) does).
    pub const RUN_TIMEOUT: u8 = 124;
    /// `shoal run` when the run ended without an exit code or signal (e.g. `internal_error`).
    pub const RUN_NO_STATUS: u8 = 125;
}

/// Text for `--help`: what each exit code means.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    the API answered with an error (the message is printed), or a local failure
  2    usage error (bad flag or value)
  3    the node could not be reached (connection refused, timeout)
  4    the API key is missing or wrong (401), or the action is not allowed (403)
  5    not found (404)
  shoal run exits with the program's exit code; 128+N if a signal N killed it,
  124 if it timed out, 125 if it ended without a status.

Environment:
  SHOAL_ADDR   the node to talk to (default http://127.0.0.1:7070); --addr overrides it
  SHOAL_TOKEN  the API key; --token overrides it";

/// Why a client command failed; printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The node did not answer at all.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The base address that was tried.
        addr: String,
        /// The root cause, e.g. `connection refused`.
        reason: String,
    },
    /// The API answered with an error body.
    #[error("{message} ({status} {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's error code, e.g. `not_found`.
        code: String,
        /// The API's message, which names the field for a 400.
        message: String,
    },
    /// The command line was valid for clap but not for us (e.g. `run` without code).
    #[error("{0}")]
    Usage(String),
    /// Anything else: a local file, an unreadable answer, a node that did not come up.
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable { .. } => exit_code::UNREACHABLE,
            CliError::Api {
                status: 401 | 403, ..
            } => exit_code::AUTH,
            CliError::Api { status: 404, .. } => exit_code::NOT_FOUND,
            CliError::Api { .. } | CliError::Other(_) => exit_code::API_ERROR,
            CliError::Usage(_) => exit_code::USAGE,
        }
    }

    /// Prints the error as one line on stderr.
    pub fn report(&self) {
        // One line, always: a multi-line message (e.g. a log tail) is the caller's to print.
        let text = self.to_string().replace('\n', " ");
        eprintln!("shoal: {text}");
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> Self {
        CliError::Other(error.to_string())
    }
}

/// Shorthand for results of client commands.
pub type CliResult<T> = Result<T, CliError>;
