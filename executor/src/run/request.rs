//! A run request as SPEC.md defines it, its limits and its validation.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use super::languages::Languages;
use super::RunError;
use crate::network_policy::NetworkPolicy;

/// Bytes of code accepted (SPEC.md: 64 KiB).
pub const CODE_BYTES_MAX: usize = 64 * 1024;
/// Bytes of stdin accepted.
pub const STDIN_BYTES_MAX: usize = 1024 * 1024;
/// Files accepted, and their total size.
pub const FILES_COUNT_MAX: usize = 64;
/// Total bytes of all files.
pub const FILES_BYTES_MAX: usize = 1024 * 1024;
/// Longest file path.
pub const FILE_PATH_BYTES_MAX: usize = 255;
/// Environment variables accepted, and the size of each value.
pub const ENV_COUNT_MAX: usize = 64;
/// Longest environment value.
pub const ENV_VALUE_BYTES_MAX: usize = 4096;
/// Longest environment name.
pub const ENV_NAME_BYTES_MAX: usize = 128;
/// argv entries accepted and the size of each.
pub const ARGV_COUNT_MAX: usize = 256;
/// Longest argv entry.
pub const ARGV_ENTRY_BYTES_MAX: usize = 4096;

/// A file placed in a run's `/tmp` before it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// Path relative to `/tmp` (no `..`, no absolute paths).
    pub path: String,
    /// Content (text).
    pub content: String,
    /// Whether the file is executable.
    #[serde(default)]
    pub executable: bool,
}

/// `POST /v1/runs`. Give `language` and `code`, or `argv`. The one type for a run request:
/// the HTTP API, the CLI and a run forwarded over the mesh carry it as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// A language from `GET /v1/languages`; `code` is its program.
    #[serde(default)]
    pub language: Option<String>,
    /// The program and its arguments, instead of `language` (`code`, if given, is written to
    /// `/tmp/main`).
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// Source code, at most 64 KiB (65,536 bytes).
    #[serde(default)]
    pub code: Option<String>,
    /// Standard input (at most 1 MiB).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Extra files in the run's `/tmp`.
    #[serde(default)]
    pub files: Option<Vec<RunFile>>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Wall-time limit in ms; default and maximum 60,000.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Memory limit in bytes; default 256 MiB.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU quota in millicores; default 1000.
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// Process limit; default 64.
    #[serde(default)]
    pub max_processes: Option<u64>,
    /// CPU-time budget in ms (default: what the CPU quota allows within the wall time,
    /// timeout_ms × cpu_millis / 1000).
    #[serde(default)]
    pub cpu_time_ms: Option<u64>,
    /// Network policy; only `none` is offered for runs.
    #[serde(default)]
    pub network: Option<NetworkPolicy>,
}

/// Defaults and maxima of run limits; a node may lower the maxima to its capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunPolicy {
    /// Wall-time limit maximum and default (SPEC.md: 60 s both).
    pub timeout_ms_max: u64,
    /// Default memory.
    pub memory_bytes_default: u64,
    /// Lowest memory limit accepted (an interpreter needs some room).
    pub memory_bytes_min: u64,
    /// Highest memory limit accepted.
    pub memory_bytes_max: u64,
    /// Default CPU quota.
    pub cpu_millis_default: u64,
    /// Lowest CPU quota accepted.
    pub cpu_millis_min: u64,
    /// Highest CPU quota accepted.
    pub cpu_millis_max: u64,
    /// Default process limit.
    pub max_processes_default: u64,
    /// Highest process limit accepted.
    pub max_processes_max: u64,
}

impl Default for RunPolicy {
    fn default() -> Self {
        RunPolicy {
            timeout_ms_max: 60_000,
            memory_bytes_default: 256 * 1024 * 1024,
            memory_bytes_min: 16 * 1024 * 1024,
            memory_bytes_max: 4 * 1024 * 1024 * 1024,
            cpu_millis_default: 1000,
            cpu_millis_min: 50,
            cpu_millis_max: 4000,
            max_processes_default: 64,
            max_processes_max: 1024,
        }
    }
}

/// A validated request: what `execute` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedRun {
    /// argv to execute.
    pub argv: Vec<String>,
    /// Files for /tmp (the code file included).
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Standard input bytes.
    pub stdin: Vec<u8>,
    /// Environment additions.
    pub env: Vec<(String, String)>,
    /// Wall limit.
    pub timeout_ms: u64,
    /// Memory limit.
    pub memory_bytes: u64,
    /// CPU quota.
    pub cpu_millis: u64,
    /// Process limit.
    pub max_processes: u64,
    /// CPU-time budget.
    pub cpu_time_ms: u64,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RunError {
    RunError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn bounded(
    field: &'static str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, RunError> {
    let value = value.unwrap_or(default);
    if value < min || value > max {
        return Err(invalid(field, format!("{value} is outside {min}..={max}")));
    }
    Ok(value)
}

fn relative_path_ok(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= FILE_PATH_BYTES_MAX
        && !path.contains('\0')
        && Path::new(path)
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
}

impl RunRequest {
    /// Checks every field; the error names the first bad one.
    pub fn validate(
        &self,
        policy: &RunPolicy,
        languages: &Languages,
    ) -> Result<ValidatedRun, RunError> {
        match self.network.unwrap_or_default() {
            NetworkPolicy::None => {}
            policy @ (NetworkPolicy::Allowlist | NetworkPolicy::Full) => {
                return Err(RunError::Unsupported {
                    field: "network",
                    reason: format!(
                        "network policy \"{policy}\" is not available yet on this cluster; only \"none\" (loopback only) is"
                    ),
                })
            }
        }
        let code = self.code.as_deref().unwrap_or("");
        if code.len() > CODE_BYTES_MAX {
            return Err(RunError::TooLarge {
                field: "code",
                bytes: code.len(),
                bytes_max: CODE_BYTES_MAX,
            });
        }
        if code.contains('\0') && self.language.is_some() {
            return Err(invalid("code", "contains a NUL byte"));
        }
        let stdin = self.stdin.as_deref().unwrap_or("");
        if stdin.len() > STDIN_BYTES_MAX {
            return Err(RunError::TooLarge {
                field: "stdin",
                bytes: stdin.len(),
                bytes_max: STDIN_BYTES_MAX,
            });
        }
        let timeout_ms = bounded(
            "timeout_ms",
            self.timeout_ms,
            policy.timeout_ms_max,
            1,
            policy.timeout_ms_max,
        )?;
        let memory_bytes = bounded(
            "memory_bytes",
            self.memory_bytes,
            policy.memory_bytes_default,
            policy.memory_bytes_min,
            policy.memory_bytes_max,
        )?;
        let cpu_millis = bounded(
            "cpu_millis",
            self.cpu_millis,
            policy.cpu_millis_default,
            policy.cpu_millis_min,
            policy.cpu_millis_max,
        )?;
        let max_processes = bounded(
            "max_processes",
            self.max_processes,
            policy.max_processes_default,
            1,
            policy.max_processes_max,
        )?;
        let cpu_time_default = (timeout_ms.saturating_mul(cpu_millis) / 1000).max(1);
        let cpu_time_ms = bounded(
            "cpu_time_ms",
            self.cpu_time_ms,
            cpu_time_default,
            1,
            policy.timeout_ms_max.saturating_mul(policy.cpu_millis_max) / 1000,
        )?;
        let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
        let argv = match (&self.language, &self.argv) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "language",
                    "give either language or argv, not both",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "language",
                    "give a language (with code) or an argv",
                ))
            }
            (Some(name), None) => {
                let language = languages.get(name).ok_or_else(|| {
                    invalid(
                        "language",
                        format!(
                            "unknown language {name:?}; available: {}",
                            languages.names().join(", ")
                        ),
                    )
                })?;
                if self.code.is_none() {
                    return Err(invalid("code", "a language run needs code"));
                }
                files.push((
                    language.file_name.to_string(),
                    code.as_bytes().to_vec(),
                    0o644,
                ));
                vec![
                    language.interpreter.to_string_lossy().into_owned(),
                    format!("/tmp/{}", language.file_name),
                ]
            }
            (None, Some(argv)) => {
                if argv.is_empty() || argv.len() > ARGV_COUNT_MAX {
                    return Err(invalid(
                        "argv",
                        format!("needs 1..={ARGV_COUNT_MAX} entries"),
                    ));
                }
                if argv
                    .iter()
                    .any(|arg| arg.len() > ARGV_ENTRY_BYTES_MAX || arg.contains('\0'))
                {
                    return Err(invalid(
                        "argv",
                        format!("entries must be ≤ {ARGV_ENTRY_BYTES_MAX} bytes without NUL"),
                    ));
                }
                if argv[0].is_empty() {
                    return Err(invalid("argv", "argv[0] is empty"));
                }
                if self.code.is_some() {
                    files.push(("main".to_string(), code.as_bytes().to_vec(), 0o755));
                }
                argv.clone()
            }
        };
        let request_files = self.files.as_deref().unwrap_or(&[]);
        if request_files.len() > FILES_COUNT_MAX {
            return Err(invalid("files", format!("at most {FILES_COUNT_MAX} files")));
        }
        let files_bytes: usize = request_files.iter().map(|file| file.content.len()).sum();
        if files_bytes > FILES_BYTES_MAX {
            return Err(RunError::TooLarge {
                field: "files",
                bytes: files_bytes,
                bytes_max: FILES_BYTES_MAX,
            });
        }
        for file in request_files {
            if !relative_path_ok(&file.path) {
                return Err(invalid(
                    "files",
                    format!(
                        "path {:?} must be relative, without '..', ≤ {FILE_PATH_BYTES_MAX} bytes",
                        file.path
                    ),
                ));
            }
            let clashes = files.iter().any(|(path, _, _)| {
                path == &file.path
                    || path.starts_with(&format!("{}/", file.path))
                    || file.path.starts_with(&format!("{path}/"))
            });
            if clashes {
                return Err(invalid(
                    "files",
                    format!(
                        "path {:?} is given twice or clashes with another",
                        file.path
                    ),
                ));
            }
            let mode = if file.executable { 0o755 } else { 0o644 };
            files.push((file.path.clone(), file.content.as_bytes().to_vec(), mode));
        }
        let mut env = Vec::new();
        if let Some(variables) = &self.env {
            if variables.len() > ENV_COUNT_MAX {
                return Err(invalid("env", format!("at most {ENV_COUNT_MAX} variables")));
            }
            for (name, value) in variables {
                let name_ok = !name.is_empty()
                    && name.len() <= ENV_NAME_BYTES_MAX
                    && name.bytes().enumerate().all(|(index, byte)| {
                        byte == b'_'
                            || byte.is_ascii_alphabetic()
                            || (index > 0 && byte.is_ascii_digit())
                    });
                if !name_ok {
                    return Err(invalid(
                        "env",
                        format!("{name:?} is not a valid variable name"),
                    ));
                }
                if value.len() > ENV_VALUE_BYTES_MAX || value.contains('\0') {
                    return Err(invalid(
                        "env",
                        format!(
                            "value of {name} must be ≤ {ENV_VALUE_BYTES_MAX} bytes without NUL"
                        ),
                    ));
                }
                env.push((name.clone(), value.clone()));
            }
        }
        Ok(ValidatedRun {
            argv,
            files,
            stdin: stdin.as_bytes().to_vec(),
            env,
            timeout_ms,
            memory_bytes,
            cpu_millis,
            max_processes,
            cpu_time_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::languages::Language;

    fn languages() -> Languages {
        Languages::from_list(vec![Language {
            name: "python".to_string(),
            interpreter: "/usr/bin/python3".into(),
            version: "Python 3".to_string(),
            file_name: "main.py",
        }])
    }

    fn python(code: &str) -> RunRequest {
        RunRequest {
            language: Some("python".to_string()),
            code: Some(code.to_string()),
            ..RunRequest::default()
        }
    }

    /// (case, request, expected field of the error or None for accepted)
    fn check(case: &str, request: RunRequest, expected_field: Option<&str>) {
        let result = request.validate(&RunPolicy::default(), &languages());
        match (result, expected_field) {
            (Ok(_), None) => {}
            (Err(error), Some(field)) => {
                assert_eq!(error.field(), Some(field), "case {case}: {error}");
                assert!(
                    error.to_string().contains(field),
                    "case {case}: message names the field: {error}"
                );
            }
            (Ok(run), Some(field)) => {
                panic!("case {case}: accepted {run:?}, expected an error on {field}")
            }
            (Err(error), None) => panic!("case {case}: refused: {error}"),
        }
    }

    #[test]
    fn validation_table() {
        let big_code = "x".repeat(CODE_BYTES_MAX + 1);
        let cases: Vec<(&str, RunRequest, Option<&str>)> = vec![
            ("plain python", python("print(1)"), None),
            (
                "code exactly 64 KiB",
                python(&"x".repeat(CODE_BYTES_MAX)),
                None,
            ),
            ("code over 64 KiB", python(&big_code), Some("code")),
            (
                "unknown language",
                RunRequest {
                    language: Some("cobol".into()),
                    ..python("x")
                },
                Some("language"),
            ),
            (
                "no language no argv",
                RunRequest {
                    language: None,
                    ..python("x")
                },
                Some("language"),
            ),
            (
                "both language and argv",
                RunRequest {
                    argv: Some(vec!["true".into()]),
                    ..python("x")
                },
                Some("language"),
            ),
            (
                "empty argv",
                RunRequest {
                    language: None,
                    argv: Some(vec![]),
                    ..python("x")
                },
                Some("argv"),
            ),
            (
                "argv run",
                RunRequest {
                    language: None,
                    code: None,
                    argv: Some(vec!["/bin/true".into()]),
                    ..RunRequest::default()
                },
                None,
            ),
            (
                "timeout over max",
                RunRequest {
                    timeout_ms: Some(60_001),
                    ..python("x")
                },
                Some("timeout_ms"),
            ),
            (
                "timeout zero",
                RunRequest {
                    timeout_ms: Some(0),
                    ..python("x")
                },
                Some("timeout_ms"),
            ),
            (
                "timeout at max",
                RunRequest {
                    timeout_ms: Some(60_000),
                    ..python("x")
                },
                None,
            ),
            (
                "memory over max",
                RunRequest {
                    memory_bytes: Some(1 << 40),
                    ..python("x")
                },
                Some("memory_bytes"),
            ),
            (
                "memory too small",
                RunRequest {
                    memory_bytes: Some(1024),
                    ..python("x")
                },
                Some("memory_bytes"),
            ),
            (
                "cpu over max",
                RunRequest {
                    cpu_millis: Some(64_000),
                    ..python("x")
                },
                Some("cpu_millis"),
            ),
            (
                "processes over max",
                RunRequest {
                    max_processes: Some(100_000),
                    ..python("x")
                },
                Some("max_processes"),
            ),
            (
                "processes zero",
                RunRequest {
                    max_processes: Some(0),
                    ..python("x")
                },
                Some("max_processes"),
            ),
            (
                "network allowlist not yet",
                RunRequest {
                    network: Some(NetworkPolicy::Allowlist),
                    ..python("x")
                },
                Some("network"),
            ),
            (
                "network full not yet",
                RunRequest {
                    network: Some(NetworkPolicy::Full),
                    ..python("x")
                },
                Some("network"),
            ),
            (
                "network none",
                RunRequest {
                    network: Some(NetworkPolicy::None),
                    ..python("x")
                },
                None,
            ),
            (
                "file escaping /tmp",
                RunRequest {
                    files: Some(vec![RunFile {
                        path: "../etc/x".into(),
                        content: String::new(),
                        executable: false,
                    }]),
                    ..python("x")
                },
                Some("files"),
            ),
            (
                "absolute file",
                RunRequest {
                    files: Some(vec![RunFile {
                        path: "/etc/x".into(),
                        content: String::new(),
                        executable: false,
                    }]),
                    ..python("x")
                },
                Some("files"),
            ),
            (
                "file clashing with the code",
                RunRequest {
                    files: Some(vec![RunFile {
                        path: "main.py".into(),
                        content: String::new(),
                        executable: false,
                    }]),
                    ..python("x")
                },
                Some("files"),
            ),
            (
                "nested file",
                RunRequest {
                    files: Some(vec![RunFile {
                        path: "data/in.txt".into(),
                        content: "1".into(),
                        executable: false,
                    }]),
                    ..python("x")
                },
                None,
            ),
            (
                "bad env name",
                RunRequest {
                    env: Some([("1X".to_string(), "v".to_string())].into()),
                    ..python("x")
                },
                Some("env"),
            ),
            (
                "good env",
                RunRequest {
                    env: Some([("MY_VAR".to_string(), "v".to_string())].into()),
                    ..python("x")
                },
                None,
            ),
            (
                "stdin over max",
                RunRequest {
                    stdin: Some("x".repeat(STDIN_BYTES_MAX + 1)),
                    ..python("x")
                },
                Some("stdin"),
            ),
        ];
        for (case, request, expected) in cases {
            check(case, request, expected);
        }
    }

    #[test]
    fn defaults_follow_the_spec() {
        let run = python("print(1)")
            .validate(&RunPolicy::default(), &languages())
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(run.timeout_ms, 60_000);
        assert_eq!(run.memory_bytes, 256 * 1024 * 1024);
        assert_eq!(run.cpu_millis, 1000);
        assert_eq!(run.max_processes, 64);
        assert_eq!(run.cpu_time_ms, 60_000);
        assert_eq!(
            run.argv,
            vec!["/usr/bin/python3".to_string(), "/tmp/main.py".to_string()]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let parsed: Result<RunRequest, _> =
            serde_json::from_str(r#"{"language":"python","code":"1","bogus":1}"#);
        assert!(parsed.is_err());
    }

    /// The network policy is an enum: a name outside SPEC's three is refused when the request
    /// is decoded (the API's 400), not parsed back later; a file's unknown field is refused
    /// too.
    #[test]
    fn unknown_network_policy_and_file_fields_are_refused_at_decoding() {
        let parsed: Result<RunRequest, _> =
            serde_json::from_str(r#"{"language":"python","code":"1","network":"wide"}"#);
        assert!(parsed.is_err());
        let parsed: RunRequest =
            serde_json::from_str(r#"{"language":"python","code":"1","network":"allowlist"}"#)
                .unwrap();
        assert_eq!(parsed.network, Some(NetworkPolicy::Allowlist));
        let parsed: Result<RunRequest, _> = serde_json::from_str(
            r#"{"argv":["true"],"files":[{"path":"a","content":"","mode":1}]}"#,
        );
        assert!(parsed.is_err());
    }
}
