//! The interpreters a run can use, discovered once at start-up from what the sandbox sees
//! (the host's /usr and /bin), each with its version.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::sandbox::SANDBOX_PATH;

/// How long a version query may take before it is abandoned.
const VERSION_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest version string kept.
const VERSION_BYTES_MAX: usize = 200;

/// A run language.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Language {
    /// Name used in requests (`python`, `sh`, ...).
    pub name: String,
    /// Interpreter path (as seen inside the sandbox, which shows the host's /usr read-only).
    pub interpreter: PathBuf,
    /// Version as the interpreter reports it.
    pub version: String,
    /// File the code is written to in the run's /tmp.
    #[serde(skip)]
    pub file_name: &'static str,
}

struct Candidate {
    name: &'static str,
    binaries: &'static [&'static str],
    version_args: &'static [&'static str],
    file_name: &'static str,
}

const CANDIDATES: &[Candidate] = &[
    Candidate {
        name: "sh",
        binaries: &["sh"],
        version_args: &[],
        file_name: "main.sh",
    },
    Candidate {
        name: "bash",
        binaries: &["bash"],
        version_args: &["--version"],
        file_name: "main.sh",
    },
    Candidate {
        name: "python",
        binaries: &["python3"],
        version_args: &["--version"],
        file_name: "main.py",
    },
    Candidate {
        name: "node",
        binaries: &["node", "nodejs"],
        version_args: &["--version"],
        file_name: "main.js",
    },
    Candidate {
        name: "ruby",
        binaries: &["ruby"],
        version_args: &["--version"],
        file_name: "main.rb",
    },
    Candidate {
        name: "perl",
        binaries: &["perl"],
        version_args: &["-e", "print $^V"],
        file_name: "main.pl",
    },
    Candidate {
        name: "php",
        binaries: &["php"],
        version_args: &["--version"],
        file_name: "main.php",
    },
    Candidate {
        name: "lua",
        binaries: &["lua", "lua5.4", "lua5.3"],
        version_args: &["-v"],
        file_name: "main.lua",
    },
    Candidate {
        name: "tcl",
        binaries: &["tclsh"],
        version_args: &[],
        file_name: "main.tcl",
    },
];

/// The languages found on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Languages {
    languages: Vec<Language>,
}

impl Languages {
    /// Looks for each known interpreter in the sandbox's PATH and asks for its version.
    pub fn discover() -> Self {
        let mut languages = Vec::new();
        for candidate in CANDIDATES {
            let Some(interpreter) = find(candidate.binaries) else {
                continue;
            };
            let version = if candidate.version_args.is_empty() {
                // sh (dash) and tclsh have no version flag: name what /bin/sh really is.
                std::fs::canonicalize(&interpreter)
                    .ok()
                    .and_then(|path| {
                        path.file_name()
                            .map(|name| name.to_string_lossy().into_owned())
                    })
                    .unwrap_or_else(|| "unknown".to_string())
            } else {
                query_version(&interpreter, candidate.version_args)
            };
            languages.push(Language {
                name: candidate.name.to_string(),
                interpreter,
                version,
                file_name: candidate.file_name,
            });
        }
        let names: Vec<&str> = languages
            .iter()
            .map(|language| language.name.as_str())
            .collect();
        tracing::info!(languages = ?names, "run languages discovered");
        Languages { languages }
    }

    /// A fixed list (tests).
    pub fn from_list(languages: Vec<Language>) -> Self {
        Languages { languages }
    }

    /// All languages.
    pub fn list(&self) -> &[Language] {
        &self.languages
    }

    /// The language called `name`.
    pub fn get(&self, name: &str) -> Option<&Language> {
        self.languages.iter().find(|language| language.name == name)
    }

    /// Names, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.languages
            .iter()
            .map(|language| language.name.as_str())
            .collect()
    }
}

fn find(binaries: &[&str]) -> Option<PathBuf> {
    for binary in binaries {
        for dir in SANDBOX_PATH.split(':') {
            let path = Path::new(dir).join(binary);
            if is_executable(&path) {
                return Some(path);
            }
        }
    }
    None
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn query_version(interpreter: &Path, args: &[&str]) -> String {
    let child = Command::new(interpreter)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .env("PATH", SANDBOX_PATH)
        .spawn();
    let Ok(mut child) = child else {
        return "unknown".to_string();
    };
    let mut waited = Duration::ZERO;
    let step = Duration::from_millis(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if waited < VERSION_QUERY_TIMEOUT => {
                std::thread::sleep(step);
                waited += step;
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return "unknown".to_string();
            }
        }
    }
    let mut text = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut text);
    }
    if text.trim().is_empty() {
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
    }
    let line = text
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("unknown");
    let mut version = line.trim().to_string();
    if version.len() > VERSION_BYTES_MAX {
        let mut end = VERSION_BYTES_MAX;
        while !version.is_char_boundary(end) {
            end -= 1;
        }
        version.truncate(end);
    }
    version
}
