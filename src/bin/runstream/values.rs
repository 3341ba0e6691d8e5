//! Option values that are not plain numbers or paths: durations, sizes, `KEY=VALUE` pairs,
//! listen addresses and origins. Each parses what a user types and displays itself the
//! same way, so that `--help` shows a default exactly as one would type it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration typed as `90s`, `500ms`, `2m`, `1h`, `1.5s`, or a plain number of seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_duration(text).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    /// The largest unit that shows the duration exactly: `5s`, `500ms`, `2m`, `1h`.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.0.subsec_nanos() % 1_000_000 != 0 {
            return write!(f, "{}s", self.0.as_secs_f64());
        }
        match self.0.as_millis() {
            0 => write!(f, "0s"),
            m if m % 3_600_000 == 0 => write!(f, "{}h", m / 3_600_000),
            m if m % 60_000 == 0 => write!(f, "{}m", m / 60_000),
            m if m % 1000 == 0 => write!(f, "{}s", m / 1000),
            m => write!(f, "{m}ms"),
        }
    }
}

/// `90s`, `500ms`, `2m`, `1h`, `1.5s`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (try 30s, 500ms, 2m)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit in {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("duration out of range: {text:?}"))
}

/// A number of bytes typed as `1234`, `500K`, `500M`, `2G`, `1T` (powers of 1024; `KB`,
/// `MiB` and lowercase are accepted too).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ByteSize(pub u64);

const UNITS: [(u32, &str); 5] = [(40, "T"), (30, "G"), (20, "M"), (10, "K"), (0, "")];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("not a size: {text:?} (try 500M or 2G)");
        let t = text.trim();
        let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
        let unit = unit.to_ascii_uppercase();
        let (shift, _) = UNITS
            .iter()
            .find(|(_, name)| *name == unit.trim_end_matches(['B', 'I']))
            .ok_or_else(bad)?;
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(1 << shift).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that shows the size exactly: `1G`, `500M`, `1234`.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let (shift, name) = UNITS
            .iter()
            .find(|(shift, _)| self.0 != 0 && self.0 % (1 << shift) == 0)
            .unwrap_or(&(0, ""));
        write!(f, "{}{name}", self.0 >> shift)
    }
}

/// `KEY=VALUE` (the value may contain `=`; the key may not be empty).
pub fn parse_env(pair: &str) -> Result<(String, String), String> {
    pair.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("takes KEY=VALUE, got {pair:?}"))
}

/// `IP:PORT`, or `NAME:PORT` resolved now (IPv4 preferred: `localhost` then serves
/// `http://127.0.0.1:PORT` as well as `http://localhost:PORT`).
pub fn parse_bind(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let bad = |why: String| format!("takes IP:PORT or NAME:PORT, got {text:?}{why}");
    let addrs: Vec<_> = text
        .to_socket_addrs()
        .map_err(|e| bad(format!(": {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| bad(": the name has no address".into()))
}

/// `*`, or an origin as browsers send it: `scheme://host[:port]`, no path (a trailing `/`
/// is dropped: it would never match).
pub fn parse_origin(text: &str) -> Result<String, String> {
    let origin = text.trim().trim_end_matches('/');
    if origin == "*" {
        return Ok(origin.to_string());
    }
    let valid = origin.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
    });
    if valid {
        Ok(origin.to_string())
    } else {
        Err(format!(
            "takes * or an origin like https://app.example:3000, got {text:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn durations_display_as_typed() {
        for text in ["5s", "500ms", "2m", "1h", "0s", "90s", "1500ms"] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(
            HumanDuration(Duration::from_micros(1500)).to_string(),
            "0.0015s"
        );
    }

    #[test]
    fn sizes_take_binary_suffixes_and_display_as_typed() {
        let size = |t: &str| t.parse::<ByteSize>().map(|s| s.0);
        assert_eq!(size("0"), Ok(0));
        assert_eq!(size("1234"), Ok(1234));
        assert_eq!(size("500M"), Ok(500 << 20));
        assert_eq!(size("2g"), Ok(2 << 30));
        assert_eq!(size("1GiB"), Ok(1 << 30));
        assert_eq!(size("3KB"), Ok(3 << 10));
        for bad in ["", "M", "1X", "-1G", "1.5G", "99999999999T"] {
            assert!(size(bad).is_err(), "{bad}");
        }
        for text in ["0", "1234", "500M", "1G", "3K", "1536M"] {
            assert_eq!(text.parse::<ByteSize>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn binds_take_names_and_origins_are_normalised() {
        assert_eq!(
            parse_bind("localhost:8787").unwrap(),
            "127.0.0.1:8787".parse().unwrap()
        );
        assert_eq!(parse_bind("[::1]:1").unwrap(), "[::1]:1".parse().unwrap());
        assert!(parse_bind("localhost").is_err(), "a port is needed");
        assert_eq!(
            parse_origin("http://app.example:3000/").unwrap(),
            "http://app.example:3000"
        );
        assert_eq!(parse_origin("*").unwrap(), "*");
        for bad in ["app.example", "ftp://x", "https://x/path", "https://"] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_pairs_split_at_the_first_equals() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert!(parse_env("novalue").is_err());
        assert!(parse_env("=x").is_err());
    }
}
