//! What every benchmark reports: rows of bytes moved and time taken, and ratios of them against
//! targets, printed as two Markdown tables at the end of the run.

pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
}

impl Row {
    pub(crate) fn gbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e9
    }
}

/// The run with the median throughput.
pub(crate) fn median(mut runs: Vec<Row>) -> Row {
    runs.sort_by(|a, b| a.gbps().total_cmp(&b.gbps()));
    runs.swap_remove(runs.len() / 2)
}

/// The rows and ratios of a run, in the order the benchmarks recorded them.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    /// Name, value, target (0: reference only), and whether the value should be at least the
    /// target (else at most).
    pub(crate) ratios: Vec<(String, f64, f64, bool)>,
}

impl Report {
    /// Both tables.
    pub(crate) fn print(self) {
        let Report { rows, ratios } = self;
        println!();
        println!("| run | bytes | seconds | GB/s |");
        println!("|---|---:|---:|---:|");
        for r in &rows {
            println!(
                "| {} | {} | {:.3} | {:.2} |",
                r.name,
                r.bytes,
                r.secs,
                r.gbps()
            );
        }
        println!();
        println!("| ratio | value | target |");
        println!("|---|---:|---|");
        for (name, value, target, at_least) in ratios {
            let target = match (target, at_least) {
                (0.0, _) => "(reference)".to_string(),
                (t, true) => format!(">= {t:.2}"),
                (t, false) => format!("<= {t:.2}"),
            };
            println!("| {name} | {value:.2} | {target} |");
        }
    }
}
