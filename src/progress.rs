//! Progress of a transfer the daemon runs for the CLI (`bvfs hydrate`, `bvfs pin`): an indicatif
//! bar (files, bytes, rate, ETA) on a terminal, plain lines (at most one a second) otherwise, so
//! logs and pipes stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::control::protocol::Progress;

/// How often a plain progress line is printed at most.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// Shows the progress of one transfer on stderr.
pub struct TransferProgress {
    label: String,
    bar: Option<ProgressBar>,
    quiet: bool,
    /// The last progress printed as a plain line (not printed twice).
    printed: Option<Progress>,
    last_line: Option<Instant>,
}

impl TransferProgress {
    /// A bar on a terminal, plain lines elsewhere; `quiet` shows nothing.
    pub fn new(label: &str, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            label: label.to_string(),
            bar,
            quiet,
            printed: None,
            last_line: None,
        }
    }

    /// Shows `progress`.
    pub fn update(&mut self, progress: Progress) {
        let files = format!(
            "{} {}/{} files",
            self.label, progress.files_done, progress.files_total
        );
        if let Some(bar) = &self.bar {
            bar.set_length(progress.bytes_total);
            bar.set_position(progress.bytes_done);
            bar.set_message(files);
            return;
        }
        // The first and the last line always show; those between at most once a second.
        let complete = progress.files_done == progress.files_total
            && progress.bytes_done == progress.bytes_total;
        let due = complete || self.last_line.is_none_or(|at| at.elapsed() >= PLAIN_EVERY);
        if due && !self.quiet && self.printed != Some(progress) {
            eprintln!(
                "{files}, {} of {}",
                HumanBytes(progress.bytes_done),
                HumanBytes(progress.bytes_total)
            );
            self.last_line = Some(Instant::now());
            self.printed = Some(progress);
        }
    }

    /// Ends the display (the bar is cleared; the caller prints the result).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
