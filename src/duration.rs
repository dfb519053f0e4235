//! Go duration syntax (`300ms`, `1.5h`, `1h30m`), used for `ttl` and `timeout`.
//!
//! Clients of the StacyVM API send durations the way Go's `time.ParseDuration`
//! accepts them, so we accept exactly that grammar: an optional sign, then one
//! or more `<decimal><unit>` pairs with units `ns`, `us`, `µs`, `ms`, `s`, `m`
//! and `h`. We refuse negative and zero values where the API needs a positive
//! one, and we format durations back the way Go's `Duration.String` does.

use std::time::Duration;

/// Why a duration string was refused; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

fn err(input: &str, reason: &'static str) -> DurationError {
    DurationError {
        input: input.to_string(),
        reason,
    }
}

/// Go durations are int64 nanoseconds: about 292 years.
const MAX_NANOS: u128 = i64::MAX as u128;

/// The value of a run of ASCII digits, or None when it does not fit: more
/// than 30 significant digits can never be a duration, and `u128` holds 38.
fn decimal(digits: &str) -> Option<u128> {
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Some(0);
    }
    if significant.len() > 30 {
        return None;
    }
    significant.parse().ok()
}

/// Parses a Go duration that must be strictly positive.
pub fn parse_positive(input: &str) -> Result<Duration, DurationError> {
    let d = parse(input)?;
    if d.is_zero() {
        return Err(err(input, "it must be greater than zero"));
    }
    Ok(d)
}

/// Parses a Go duration. Negative durations are refused because nothing in the
/// API can use one.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(err(input, "it is empty"));
    }
    let (negative, mut rest) = match (s.strip_prefix('-'), s.strip_prefix('+')) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(err(input, "expected a number followed by a unit such as 30s"));
    }
    let too_large = || err(input, "the duration is too large");
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        rest = after_int;
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            (frac_part, rest) = after_dot.split_at(frac_len);
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err(input, "expected a number followed by a unit such as 30s"));
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let (unit, after_unit) = rest.split_at(unit_len);
        rest = after_unit;
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(err(input, "a unit is missing (use ns, us, ms, s, m or h)")),
            _ => return Err(err(input, "unknown unit (use ns, us, ms, s, m or h)")),
        };
        let mut value = decimal(int_part)
            .and_then(|n| n.checked_mul(unit_nanos))
            .ok_or_else(too_large)?;
        // Fractions are exact to the nanosecond, as in Go: only the digits
        // that can still matter are used (a unit is at most 3.6e12 ns, so
        // 13 digits), however long the fraction is.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            value = u128::from(digit - b'0')
                .checked_mul(scale)
                .and_then(|d| value.checked_add(d))
                .ok_or_else(too_large)?;
        }
        total_nanos = total_nanos.checked_add(value).ok_or_else(too_large)?;
        // Stop adding as soon as the bound is passed, so that no number of
        // terms can overflow.
        if total_nanos > MAX_NANOS {
            return Err(too_large());
        }
    }
    if negative && total_nanos != 0 {
        return Err(err(input, "it must not be negative"));
    }
    let nanos = u64::try_from(total_nanos).map_err(|_| too_large())?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats like Go's `Duration.String`: `1h30m0s`, `2.5s`, `3.1ms`, `0s`.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", trim_fraction(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim_fraction(nanos, 1_000_000));
    }
    let total_secs = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let hours = total_secs / 3600;
    let minutes = (total_secs % 3600) / 60;
    let secs = trim_fraction(
        u128::from((total_secs % 60) as u64) * 1_000_000_000 + sub,
        1_000_000_000,
    );
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{secs}s"));
    out
}

fn trim_fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_to_the_exact_value() {
        let table = [
            ("300ms", Duration::from_millis(300)),
            ("10m", Duration::from_secs(600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5h", Duration::from_secs(5400)),
            ("2h45m30.5s", Duration::from_millis(9_930_500)),
            ("1us", Duration::from_micros(1)),
            ("1µs", Duration::from_micros(1)),
            ("42ns", Duration::from_nanos(42)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("+5s", Duration::from_secs(5)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            (" 30s ", Duration::from_secs(30)),
        ];
        for (input, expected) in table {
            assert_eq!(parse(input), Ok(expected), "{input}");
        }
    }

    #[test]
    fn malformed_durations_are_refused_with_a_reason() {
        let table = [
            ("", "it is empty"),
            ("10", "a unit is missing (use ns, us, ms, s, m or h)"),
            ("10x", "unknown unit (use ns, us, ms, s, m or h)"),
            ("10 m", "unknown unit (use ns, us, ms, s, m or h)"),
            ("abc", "expected a number followed by a unit such as 30s"),
            ("h", "expected a number followed by a unit such as 30s"),
            ("-5m", "it must not be negative"),
            ("1d", "unknown unit (use ns, us, ms, s, m or h)"),
            ("9999999999h", "the duration is too large"),
            ("-", "expected a number followed by a unit such as 30s"),
        ];
        for (input, reason) in table {
            assert_eq!(parse(input).unwrap_err().reason, reason, "{input}");
        }
    }

    #[test]
    fn durations_that_would_overflow_are_too_large_not_a_panic() {
        let long_fraction = format!("2562047h47m16.{}s", "9".repeat(10_000));
        let many_terms = "2562047h".repeat(1000);
        let table = [
            "340282366920938463463374607431768211455s",
            "340282366920938463463374607431768211456s",
            "340282366920938463463374607431768211455ns",
            "99999999999999999999999999999999999999999999999999h",
            "94522879700260684295381835397713h",
            // u128::MAX / 1h is 94522879700260684295381835.4: the
            // fraction pushes the sum past u128::MAX.
            "94522879700260684295381835.9h",
            "9223372036854775808ns",
            "9223372036.854775808s",
            "2562048h",
            "0.99999999999999999999999999999999999999h1h2562047h",
            long_fraction.as_str(),
            many_terms.as_str(),
        ];
        for input in table {
            assert_eq!(parse(input).unwrap_err().reason, "the duration is too large", "{input}");
        }
        // The largest value itself still parses.
        assert_eq!(
            parse("9223372036854775807ns"),
            Ok(Duration::from_nanos(i64::MAX as u64))
        );
        assert_eq!(
            parse(&format!("1.{}s", "5".repeat(10_000))),
            Ok(Duration::from_nanos(1_555_555_555))
        );
        assert_eq!(parse(&format!("{}1s", "0".repeat(10_000))), Ok(Duration::from_secs(1)));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_on_any_string(input in ".{0,64}") {
            let _ = parse(&input);
            let _ = parse_positive(&input);
        }

        #[test]
        fn parse_never_panics_on_duration_shaped_strings(input in "[-+]?([0-9]{0,45}(\\.[0-9]{0,45})?(ns|us|µs|ms|s|m|h|x)?){1,6}") {
            if let Ok(d) = parse(&input) {
                proptest::prop_assert!(d.as_nanos() <= i64::MAX as u128);
            }
        }

        #[test]
        fn huge_values_are_too_large(digits in "[1-9][0-9]{19,60}", unit in "(ns|us|ms|s|m|h)") {
            let input = format!("{digits}{unit}");
            proptest::prop_assert_eq!(parse(&input).unwrap_err().reason, "the duration is too large");
        }
    }

    #[test]
    fn zero_is_refused_where_a_positive_duration_is_needed() {
        assert_eq!(parse_positive("0s").unwrap_err().reason, "it must be greater than zero");
        assert_eq!(parse_positive("1s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn durations_format_like_go() {
        let table = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(42), "42ns"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_micros(3100), "3.1ms"),
            (Duration::from_millis(2500), "2.5s"),
            (Duration::from_secs(5400), "1h30m0s"),
            (Duration::from_secs(600), "10m0s"),
            (Duration::from_nanos(1_500), "1.5µs"),
        ];
        for (d, expected) in table {
            assert_eq!(format(d), expected);
        }
    }
}
