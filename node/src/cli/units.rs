//! Parsing and formatting of the quantities users type and read: byte sizes (`256MiB`),
//! CPU amounts (`1`, `0.5`, `500m`) and durations (`10s`, `1h`).
//!
//! Pure functions: the command modules call them from clap's `value_parser`, so a bad value is
//! a usage error that names the flag, before any request is sent.

use std::time::Duration;

/// The largest size accepted anywhere on the command line (1 PiB): anything above is a typo.
pub const SIZE_BYTES_MAX: u64 = 1 << 50;
/// The largest CPU amount accepted on the command line (4,096 CPUs).
pub const CPU_MILLIS_MAX: u64 = 4_096_000;
/// The longest duration accepted on the command line (one year).
pub const DURATION_SECS_MAX: u64 = 366 * 24 * 3600;

/// Parses a byte size: a plain number of bytes, or a number with a unit. Binary units
/// (`KiB`, `MiB`, `GiB`, `TiB`, also `Ki`, `Mi`, `Gi`, `Ti`) are powers of 1024, decimal units
/// (`kB`/`KB`/`k`, `MB`/`M`, `GB`/`G`, `TB`/`T`) powers of 1000; units are case-insensitive
/// and may follow a space. Fractions are allowed (`1.5GiB`), the result is rounded down to a
/// whole byte.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    if number.is_empty() {
        return Err(format!(
            "invalid size {text:?}: expected a number such as 256MiB or 1GiB"
        ));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)"
            ))
        }
    };
    let bytes =
        scale(number, multiplier).ok_or_else(|| format!("invalid size {text:?}: not a number"))?;
    if bytes > SIZE_BYTES_MAX {
        return Err(format!("invalid size {text:?}: larger than 1 PiB"));
    }
    Ok(bytes)
}

/// Parses a CPU amount into millicores: `1` or `1.5` (CPUs) or `500m` (millicores).
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let millis = if let Some(millis) = text.strip_suffix('m') {
        millis
            .parse::<u64>()
            .map_err(|_| format!("invalid CPU amount {text:?}: expected e.g. 1, 0.5 or 500m"))?
    } else {
        scale(text, 1000)
            .ok_or_else(|| format!("invalid CPU amount {text:?}: expected e.g. 1, 0.5 or 500m"))?
    };
    if millis > CPU_MILLIS_MAX {
        return Err(format!("invalid CPU amount {text:?}: more than 4096 CPUs"));
    }
    Ok(millis)
}

/// Parses a duration such as `10s`, `1h`, `1h30m` or `250ms` (humantime's syntax); a bare
/// number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(
            text.parse::<u64>()
                .map_err(|_| format!("invalid duration {text:?}: number too large"))?,
        )
    } else {
        humantime::parse_duration(text).map_err(|error| {
            format!("invalid duration {text:?}: {error} (expected e.g. 10s, 5m, 1h)")
        })?
    };
    if duration.as_secs() > DURATION_SECS_MAX {
        return Err(format!("invalid duration {text:?}: longer than a year"));
    }
    Ok(duration)
}

/// `number * multiplier` for a decimal `number` with an optional fraction, in integer
/// arithmetic (no float rounding surprises: `0.1GiB` is exactly 107374182 bytes); `None` when
/// `number` is not a number or the result overflows.
fn scale(number: &str, multiplier: u64) -> Option<u64> {
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // At most 9 fractional digits count; more are below a byte for every unit we accept.
    let fraction = &fraction[..fraction.len().min(9)];
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut result = whole.checked_mul(multiplier)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().ok()?;
        let denominator = 10u128.pow(u32::try_from(fraction.len()).ok()?);
        let part = digits * u128::from(multiplier) / denominator;
        result = result.checked_add(u64::try_from(part).ok()?)?;
    }
    Some(result)
}

/// Formats bytes for humans with a binary unit and one decimal: `256.0 MiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit_idx = 0;
    while value >= 1024.0 && unit_idx + 1 < UNITS.len() {
        value /= 1024.0;
        unit_idx += 1;
    }
    format!("{value:.1} {}", UNITS[unit_idx])
}

/// Formats millicores for humans: `1`, `0.5`, `2.25` CPUs.
pub fn format_cpu_millis(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        let text = format!("{}.{:03}", millis / 1000, millis % 1000);
        text.trim_end_matches('0').to_string()
    }
}

/// Formats milliseconds for humans: `850 ms`, `1.25 s`, `2m 5s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.2} s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_size(text: &str, expected: Result<u64, ()>) {
        assert_eq!(
            parse_size(text).map_err(|_| ()),
            expected,
            "parse_size({text:?})"
        );
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        check_size("1GiB", Ok(1 << 30));
        check_size("256MiB", Ok(256 << 20));
        check_size("256mib", Ok(256 << 20));
        check_size("256 MiB", Ok(256 << 20));
        check_size("64Ki", Ok(65_536));
        check_size("1.5GiB", Ok(3 << 29));
        check_size("0.1GiB", Ok(107_374_182));
        check_size(".5KiB", Ok(512));
        check_size("1000", Ok(1000));
        check_size("12B", Ok(12));
        check_size("1GB", Ok(1_000_000_000));
        check_size("2M", Ok(2_000_000));
        check_size("1TiB", Ok(1 << 40));
        check_size("1024TiB", Ok(1 << 50));
    }

    #[test]
    fn sizes_refuse_garbage_negative_and_absurd_values() {
        check_size("", Err(()));
        check_size("GiB", Err(()));
        check_size("-1GiB", Err(()));
        check_size("1XB", Err(()));
        check_size("1.2.3MiB", Err(()));
        check_size("1025TiB", Err(()));
        check_size("99999999999999999999999", Err(()));
        check_size("1e9", Err(()));
    }

    #[test]
    fn cpu_amounts_parse_as_cpus_or_millicores() {
        assert_eq!(parse_cpu_millis("1"), Ok(1000));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("2.25"), Ok(2250));
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert!(parse_cpu_millis("-1").is_err());
        assert!(parse_cpu_millis("one").is_err());
        assert!(parse_cpu_millis("5000").is_err());
    }

    #[test]
    fn durations_parse_humantime_and_bare_seconds() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("400days").is_err());
    }

    #[test]
    fn formats_are_readable() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(256 << 20), "256.0 MiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_cpu_millis(2000), "2");
        assert_eq!(format_cpu_millis(500), "0.5");
        assert_eq!(format_cpu_millis(2250), "2.25");
        assert_eq!(format_duration_ms(12), "12 ms");
        assert_eq!(format_duration_ms(1250), "1.25 s");
        assert_eq!(format_duration_ms(125_000), "2m 5s");
    }

    proptest! {
        #[test]
        fn every_whole_binary_size_round_trips(value in 0u64..1_000_000, unit_idx in 0usize..4) {
            let (unit, multiplier) = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("B", 1)][unit_idx];
            prop_assume!(value.saturating_mul(multiplier) <= SIZE_BYTES_MAX);
            prop_assert_eq!(parse_size(&format!("{value}{unit}")), Ok(value * multiplier));
        }

        #[test]
        fn parse_size_never_panics(text in ".{0,24}") {
            let _ = parse_size(&text);
            let _ = parse_cpu_millis(&text);
            let _ = parse_duration(&text);
        }
    }
}
