//! The few wall-clock times the runner reads: nodes' log lines and HTTP `Date` headers, as
//! seconds or microseconds since the epoch (UTC).

/// Microseconds since the epoch of a log line's UTC time ("2026-12-04T03:21:09.167540Z").
pub fn rfc3339_micros(s: &str) -> Option<u64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let ymd: Vec<i64> = date.split('-').filter_map(|x| x.parse().ok()).collect();
    let [y, m, d] = ymd.as_slice() else {
        return None;
    };
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let hms: Vec<i64> = hms.split(':').filter_map(|x| x.parse().ok()).collect();
    let [h, mi, se] = hms.as_slice() else {
        return None;
    };
    let seconds = unix_seconds(*y, *m, *d, *h, *mi, *se);
    let micros: u64 = format!("{fraction:0<6}").get(..6)?.parse().ok()?;
    Some(u64::try_from(seconds).ok()? * 1_000_000 + micros)
}

/// Seconds since the epoch of an HTTP date ("Thu, 26 Nov 2026 04:22:18 GMT").
pub fn httpdate(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, _] = parts.as_slice() else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| x == month)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').filter_map(|x| x.parse().ok()).collect();
    let [h, mi, se] = hms.as_slice() else {
        return None;
    };
    Some(unix_seconds(y, m, d, *h, *mi, *se))
}

/// Seconds since the epoch of a UTC date and time.
fn unix_seconds(y: i64, m: i64, d: i64, h: i64, mi: i64, se: i64) -> i64 {
    // Days from civil (Howard Hinnant's algorithm).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + h * 3600 + mi * 60 + se
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_parse() {
        assert_eq!(rfc3339_micros("1970-01-01T00:00:01.5Z"), Some(1_500_000));
        assert_eq!(
            rfc3339_micros("2026-11-26T04:22:18.000123Z"),
            Some(1_795_666_938_000_123)
        );
        assert_eq!(rfc3339_micros("2026-11-26 04:22:18"), None);
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(httpdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            httpdate("Thu, 26 Nov 2026 04:22:18 GMT"),
            Some(1_795_666_938)
        );
        assert_eq!(httpdate("yesterday"), None);
    }
}
