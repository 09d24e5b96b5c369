//! Progress reporting: an indicatif bar on a terminal, plain lines otherwise (indicatif
//! draws nothing when stderr is not a terminal).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress report for `total` units of work, safe to update from worker threads.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
    total: u64,
    last_decile: AtomicU64,
}

impl Progress {
    /// Starts a report.
    pub fn new(label: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label);
            bar
        });
        Progress {
            bar,
            label,
            total,
            last_decile: AtomicU64::new(0),
        }
    }

    /// Records that `done` units are finished.
    pub fn set(&self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => {
                let decile = (done * 10).checked_div(self.total).unwrap_or(10);
                let prev = self.last_decile.fetch_max(decile, Ordering::Relaxed);
                if decile > prev && decile < 10 {
                    eprintln!("{}: {}%", self.label, decile * 10);
                }
            }
        }
    }

    /// Ends the report.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
