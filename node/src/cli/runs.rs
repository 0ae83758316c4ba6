//! `shoal run`: one ephemeral run of a file, of stdin, or of a command.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::error::{exit_code, CliError, CliResult};
use super::render::{print_json, text};
use super::units::{format_duration_ms, format_size, parse_duration, parse_size};
use super::ConnectionArgs;
use crate::api_types::RunRequest;

/// The largest program `shoal run` sends (SPEC: code is at most 64 KiB); larger is refused
/// here with the same words the API would use.
pub const CODE_BYTES_MAX: usize = 64 * 1024;
/// The server's longest run (60 s) plus room for placement and transfer.
const RUN_REQUEST_TIMEOUT_MS: u64 = 90_000;

/// `shoal run [--lang L] [--timeout 10s] [--mem 256MiB] FILE|-` or `shoal run -- CMD ARGS...`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    conn: ConnectionArgs,
    /// The language of the code (default: from the file's extension); see GET /v1/languages.
    #[arg(long = "lang", value_name = "LANG")]
    lang: Option<String>,
    /// Wall-time limit (default and maximum 60s).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Memory limit (default 256MiB).
    #[arg(long, value_parser = parse_size)]
    mem: Option<u64>,
    /// The program's standard input, from this file (`-` is this command's stdin).
    #[arg(long, value_name = "FILE")]
    stdin: Option<String>,
    /// The source file to run, or `-` to read it from stdin.
    #[arg(value_name = "FILE", conflicts_with = "argv")]
    file: Option<String>,
    /// Run this command instead of a file, after `--`.
    #[arg(last = true, value_name = "CMD")]
    argv: Vec<String>,
}

/// The language a file name implies, if its extension is a common one.
pub fn language_for(path: &str) -> Option<&'static str> {
    let extension = Path::new(path).extension()?.to_str()?;
    Some(match extension {
        "py" => "python",
        "sh" => "sh",
        "bash" => "bash",
        "js" | "mjs" => "node",
        "rb" => "ruby",
        "pl" => "perl",
        "lua" => "lua",
        "php" => "php",
        _ => return None,
    })
}

/// The exit code `shoal run` ends with for a run's result.
pub fn run_exit_code(result: &Value) -> u8 {
    if text(result, &["verdict"]) == "timeout" {
        return exit_code::RUN_TIMEOUT;
    }
    if let Some(code) = result.get("exit_code").and_then(Value::as_i64) {
        // Like a shell: the low 8 bits of the status.
        return u8::try_from(code.rem_euclid(256)).unwrap_or(exit_code::RUN_NO_STATUS);
    }
    if let Some(signal) = result.get("signal").and_then(Value::as_i64) {
        return u8::try_from((128 + signal).clamp(0, 255)).unwrap_or(exit_code::RUN_NO_STATUS);
    }
    exit_code::RUN_NO_STATUS
}

/// The one-line summary printed after a run's output.
pub fn summary_line(result: &Value) -> String {
    let status = match (
        result.get("exit_code").and_then(Value::as_i64),
        result.get("signal").and_then(Value::as_i64),
    ) {
        (_, Some(signal)) => format!("signal {signal}"),
        (Some(code), None) => format!("exit {code}"),
        (None, None) => "no exit status".to_string(),
    };
    let mut line = format!(
        "{} · {status} · {} · {} peak",
        text(result, &["verdict"]),
        result
            .get("wall_ms")
            .and_then(Value::as_u64)
            .map_or("-".to_string(), format_duration_ms),
        result
            .get("peak_memory_bytes")
            .and_then(Value::as_u64)
            .map_or("-".to_string(), format_size),
    );
    for (flag, what) in [
        ("stdout_truncated", "stdout"),
        ("stderr_truncated", "stderr"),
    ] {
        if result.get(flag).and_then(Value::as_bool) == Some(true) {
            line.push_str(&format!(" · {what} truncated"));
        }
    }
    line.push_str(&format!(
        " · node {} · isolation {}",
        text(result, &["node"]),
        text(result, &["isolation"])
    ));
    line
}

/// Reads a file, or stdin for `-`, refusing more than `max_bytes`.
fn read_input(path: &str, max_bytes: usize, what: &str) -> CliResult<String> {
    let mut bytes = Vec::new();
    let limit = (max_bytes + 1) as u64;
    if path == "-" {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut bytes)?;
    } else {
        std::fs::File::open(path)
            .map_err(|error| CliError::Other(format!("cannot read {path}: {error}")))?
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|error| CliError::Other(format!("cannot read {path}: {error}")))?;
    }
    if bytes.len() > max_bytes {
        return Err(CliError::Usage(format!(
            "{what} {path} is larger than {max_bytes} bytes"
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| CliError::Usage(format!("{what} {path} is not UTF-8 text")))
}

/// `shoal run`.
pub fn run(args: &RunArgs) -> CliResult<u8> {
    let mut request = RunRequest {
        timeout_ms: args
            .timeout
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        memory_bytes: args.mem,
        ..RunRequest::default()
    };
    match (&args.file, args.argv.is_empty()) {
        (Some(file), true) => {
            if args.stdin.as_deref() == Some("-") && file == "-" {
                return Err(CliError::Usage(
                    "the code and --stdin cannot both come from stdin".into(),
                ));
            }
            request.code = Some(read_input(file, CODE_BYTES_MAX, "code file")?);
            request.language = args
                .lang
                .clone()
                .or_else(|| language_for(file).map(str::to_string));
            if request.language.is_none() {
                return Err(CliError::Usage(format!(
                    "cannot tell the language of {file}: pass --lang (e.g. --lang python)"
                )));
            }
        }
        (None, false) => {
            request.argv = Some(args.argv.clone());
            request.language = args.lang.clone();
        }
        (None, true) => {
            return Err(CliError::Usage(
                "nothing to run: give a FILE, `-` for stdin, or `-- CMD ARGS...`".into(),
            ))
        }
        (Some(_), false) => {
            return Err(CliError::Usage(
                "give either a FILE or `-- CMD ARGS...`, not both".into(),
            ))
        }
    }
    if let Some(stdin) = &args.stdin {
        request.stdin = Some(read_input(stdin, CODE_BYTES_MAX, "stdin file")?);
    }
    let client = args
        .conn
        .client_with_timeout(Duration::from_millis(RUN_REQUEST_TIMEOUT_MS))?;
    let result = client.post("/v1/runs", &request)?;
    if args.conn.json {
        print_json(&result);
        return Ok(run_exit_code(&result));
    }
    let stdout_text = result.get("stdout").and_then(Value::as_str).unwrap_or("");
    let stderr_text = result.get("stderr").and_then(Value::as_str).unwrap_or("");
    {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (e.g. `| head`) must not turn into an error of the run.
        let _ = stdout.write_all(stdout_text.as_bytes());
        let _ = stdout.flush();
    }
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(stderr_text.as_bytes());
    if !stderr_text.is_empty() && !stderr_text.ends_with('\n') {
        let _ = writeln!(stderr);
    }
    let _ = writeln!(stderr, "{}", summary_line(&result));
    Ok(run_exit_code(&result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exit_codes_follow_the_program() {
        assert_eq!(run_exit_code(&json!({"verdict": "ok", "exit_code": 0})), 0);
        assert_eq!(
            run_exit_code(&json!({"verdict": "nonzero_exit", "exit_code": 3})),
            3
        );
        assert_eq!(
            run_exit_code(&json!({"verdict": "nonzero_exit", "exit_code": 256 + 7})),
            7
        );
        assert_eq!(
            run_exit_code(&json!({"verdict": "signaled", "exit_code": null, "signal": 9})),
            137
        );
        assert_eq!(
            run_exit_code(&json!({"verdict": "timeout", "signal": 9})),
            124
        );
        assert_eq!(run_exit_code(&json!({"verdict": "internal_error"})), 125);
    }

    #[test]
    fn the_summary_names_verdict_status_time_and_memory() {
        let result = json!({"verdict": "ok", "exit_code": 0, "signal": null, "wall_ms": 12,
            "peak_memory_bytes": 3145728, "stdout_truncated": true, "stderr_truncated": false,
            "node": "n1", "isolation": "none"});
        assert_eq!(
            summary_line(&result),
            "ok · exit 0 · 12 ms · 3.0 MiB peak · stdout truncated · node n1 · isolation none"
        );
    }

    #[test]
    fn languages_come_from_extensions() {
        assert_eq!(language_for("hello.py"), Some("python"));
        assert_eq!(language_for("dir.d/run.sh"), Some("sh"));
        assert_eq!(language_for("README"), None);
        assert_eq!(language_for("-"), None);
    }
}
