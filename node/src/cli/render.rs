//! Output for humans (aligned tables, key/value blocks) and for programs (`--json`).
//!
//! Answers are read as `serde_json::Value` through small accessors, so that a field the server
//! adds never breaks the CLI and a missing field shows as `-` instead of failing the command.

use serde_json::Value;

use super::units::{format_cpu_millis, format_size};

/// A table of text cells, printed with aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells print empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, columns separated by two spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (idx, cell) in row.iter().enumerate() {
                if idx < widths.len() {
                    widths[idx] = widths[idx].max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut text = String::new();
            for (idx, width) in widths.iter().enumerate() {
                let cell = cells.get(idx).map(String::as_str).unwrap_or("");
                if idx + 1 == widths.len() {
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    let pad = width.saturating_sub(cell.chars().count()) + 2;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&self.headers);
        for row in &self.rows {
            line(row);
        }
        out
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// The value at a dotted path (`pool.cpu_millis.capacity`), trying each alternative in turn.
pub fn lookup<'v>(value: &'v Value, paths: &[&str]) -> Option<&'v Value> {
    paths.iter().find_map(|path| {
        let found = path
            .split('.')
            .try_fold(value, |current, key| current.get(key))?;
        (!found.is_null()).then_some(found)
    })
}

/// The value at the first path that exists, as display text; `-` when none does.
pub fn text(value: &Value, paths: &[&str]) -> String {
    match lookup(value, paths) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
        None => "-".to_string(),
    }
}

/// The number at the first path that exists.
pub fn number(value: &Value, paths: &[&str]) -> Option<u64> {
    lookup(value, paths).and_then(Value::as_u64)
}

/// A byte count at the first path that exists, formatted (`1.0 GiB`), or `-`.
pub fn size(value: &Value, paths: &[&str]) -> String {
    number(value, paths).map_or_else(|| "-".to_string(), format_size)
}

/// Millicores at the first path that exists, formatted as CPUs (`0.5`), or `-`.
pub fn cpu(value: &Value, paths: &[&str]) -> String {
    number(value, paths).map_or_else(|| "-".to_string(), format_cpu_millis)
}

/// The items of a list answer: the answer itself when it is an array, otherwise the array
/// under `key` (or under the only array-valued field).
pub fn items<'v>(value: &'v Value, key: &str) -> Vec<&'v Value> {
    if let Some(array) = value.as_array() {
        return array.iter().collect();
    }
    if let Some(array) = value.get(key).and_then(Value::as_array) {
        return array.iter().collect();
    }
    if let Some(object) = value.as_object() {
        let arrays: Vec<&Vec<Value>> = object.values().filter_map(Value::as_array).collect();
        if arrays.len() == 1 {
            return arrays[0].iter().collect();
        }
    }
    Vec::new()
}

/// A Unix-milliseconds or RFC 3339 timestamp at the first path that exists, as RFC 3339
/// (seconds), or `-`.
pub fn timestamp(value: &Value, paths: &[&str]) -> String {
    match lookup(value, paths) {
        Some(Value::Number(n)) => n.as_u64().map_or_else(|| n.to_string(), format_unix_ms),
        Some(Value::String(s)) => s.clone(),
        _ => "-".to_string(),
    }
}

/// Unix milliseconds as an RFC 3339 UTC time with second precision.
pub fn format_unix_ms(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_trim_line_ends() {
        let mut table = Table::new(&["ID", "STATE", "NODE"]);
        table.row(vec!["ws-1".into(), "running".into(), "n1".into()]);
        table.row(vec!["ws-12345".into(), "pending".into(), String::new()]);
        assert_eq!(
            table.render(),
            "ID        STATE    NODE\nws-1      running  n1\nws-12345  pending\n"
        );
    }

    #[test]
    fn accessors_try_alternatives_and_show_dashes() {
        let value = json!({"pool": {"cpu_millis": {"capacity": 2500}}, "roles": ["server", "worker"], "n": null});
        assert_eq!(cpu(&value, &["pool.cpu_millis.capacity"]), "2.5");
        assert_eq!(text(&value, &["role", "roles"]), "server,worker");
        assert_eq!(text(&value, &["n", "missing"]), "-");
        assert_eq!(size(&json!({"m": 1073741824u64}), &["m"]), "1.0 GiB");
        assert_eq!(timestamp(&json!({"t": 0}), &["t"]), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn list_answers_are_found_bare_or_wrapped() {
        assert_eq!(items(&json!([1, 2]), "nodes").len(), 2);
        assert_eq!(items(&json!({"nodes": [1, 2, 3]}), "nodes").len(), 3);
        assert_eq!(items(&json!({"items": [1], "total": 1}), "nodes").len(), 1);
        assert_eq!(items(&json!({"a": [1], "b": [2]}), "nodes").len(), 0);
    }
}
