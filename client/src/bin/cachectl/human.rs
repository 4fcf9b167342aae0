//! Numbers as people read them: sizes in binary units, instants as RFC 3339 dates.

/// `1536` → `1.5 KiB`; bytes below 1 KiB as `512 B`.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Milliseconds since the epoch as `2026-12-01T07:36:00Z` (empty for 0).
pub fn time_ms(ms: i64) -> String {
    if ms <= 0 {
        return "(unknown)".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A table with a header row, columns padded to their widest cell; `right` marks the columns
/// aligned right (numbers).
pub fn table(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < width.len() {
                width[i] = width[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let w = width.get(i).copied().unwrap_or(0);
            let last = i + 1 == cells.len();
            let pad = w.saturating_sub(cell.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if !last {
                    out.push_str(&" ".repeat(pad));
                }
            }
            if !last {
                out.push_str("  ");
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_times_and_tables() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(50_000_000), "47.7 MiB");
        assert_eq!(size(1 << 40), "1.0 TiB");
        assert_eq!(time_ms(1_796_098_560_922), "2026-12-01T04:16:00Z");
        assert_eq!(time_ms(0), "(unknown)");
        let t = table(
            &["SIZE", "KEY"],
            &[true, false],
            &[
                vec!["1.5 KiB".into(), "a".into()],
                vec!["10 B".into(), "bb".into()],
            ],
        );
        assert_eq!(t, "   SIZE  KEY\n1.5 KiB  a\n   10 B  bb");
    }
}
