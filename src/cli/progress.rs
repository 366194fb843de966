//! Progress bars (indicatif) for running stages, and log output that does not
//! tear through them.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::exec::{NodeOutcome, Observer};
use crate::stages::Progress;

/// Sets up logging (RUST_LOG, default `ablate=info`) and returns the bar container.
pub fn init() -> MultiProgress {
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("ablate=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(BarsWriter(bars.clone()))
        .try_init();
    bars
}

/// Writes log lines above the bars instead of through them.
#[derive(Clone)]
struct BarsWriter(MultiProgress);

impl Write for BarsWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for BarsWriter {
    type Writer = BarsWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// One bar per running stage.
pub struct Bars {
    bars: MultiProgress,
    started: std::sync::Mutex<std::collections::HashMap<String, (ProgressBar, Instant)>>,
}

impl Bars {
    pub fn new(bars: MultiProgress) -> Arc<Bars> {
        Arc::new(Bars { bars, started: Default::default() })
    }
}

struct BarProgress {
    bar: ProgressBar,
    label: String,
    /// Without a terminal (a log file, a Slurm job's output) no bar is drawn:
    /// progress is logged as lines instead, at each tenth of the way and at
    /// least every [`PLAIN_EVERY`]. The last line's tenth and time.
    plain: Option<std::sync::Mutex<(u64, Instant)>>,
}

const PLAIN_EVERY: Duration = Duration::from_secs(60);

impl BarProgress {
    /// Called with each new message, which stages set right after the
    /// position (train: step, loss, images/s, ETA).
    fn log_line(&self) {
        let Some(last) = &self.plain else { return };
        let (pos, len) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let tenth = if len > 0 { pos * 10 / len } else { 0 };
        let mut last = last.lock().expect("not poisoned");
        if pos == 0 || (tenth <= last.0 && last.1.elapsed() < PLAIN_EVERY) {
            return;
        }
        *last = (tenth, Instant::now());
        let (count, msg) = (format!("{pos}/{len}"), self.bar.message());
        if msg.contains(&count) {
            tracing::info!("      {} · {msg}", self.label);
        } else {
            tracing::info!("      {} {count} · {msg}", self.label);
        }
    }
}

impl Progress for BarProgress {
    fn set_length(&self, len: u64) {
        self.bar.set_length(len);
    }
    fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }
    fn set_message(&self, msg: String) {
        self.bar.set_message(msg);
        self.log_line();
    }
}

impl Observer for Bars {
    fn started(&self, label: &str, key: &str) -> Arc<dyn Progress> {
        let bar = self.bars.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(250));
        tracing::info!("start {label} ({})", &key[..12]);
        self.started.lock().expect("not poisoned").insert(key.to_owned(), (bar.clone(), Instant::now()));
        let plain = (!std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| std::sync::Mutex::new((0, Instant::now())));
        Arc::new(BarProgress { bar, label: label.to_owned(), plain })
    }

    fn finished(&self, label: &str, key: &str, outcome: &NodeOutcome) {
        let entry = self.started.lock().expect("not poisoned").remove(key);
        let elapsed = entry.as_ref().map(|(_, t)| format!(" in {:.1}s", t.elapsed().as_secs_f64())).unwrap_or_default();
        if let Some((bar, _)) = entry {
            bar.finish_and_clear();
            self.bars.remove(&bar);
        }
        match outcome {
            NodeOutcome::Done => tracing::info!("done  {label}{elapsed}"),
            NodeOutcome::Failed(e) => tracing::error!("FAILED {label}{elapsed}: {e}"),
            NodeOutcome::Skipped(why) => tracing::warn!("skip  {label}: {why}"),
            NodeOutcome::Interrupted => tracing::warn!("interrupted {label}{elapsed}"),
        }
    }

    fn waiting(&self, label: &str, note: &str) {
        tracing::info!("wait  {label}: {note}");
    }

    /// Asks on the terminal; never waits for an answer that cannot come
    /// (stdin not a terminal: a script, CI, a job): it keeps the jobs and says
    /// what to run instead.
    fn confirm_cancel(&self, run_id: i64, jobs: usize) -> bool {
        use std::io::{BufRead as _, IsTerminal as _};
        let keep = || {
            tracing::warn!(
                "{jobs} Slurm job(s) of run {run_id} keep running: cancel them with `ablate cancel {run_id}`, \
                 or follow them again by running the same command"
            )
        };
        if !std::io::stdin().is_terminal() {
            keep();
            return false;
        }
        let answer = self.bars.suspend(|| {
            eprint!("Cancel the {jobs} Slurm job(s) of run {run_id}? [y/N] ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map(|_| line)
        });
        let yes = answer.is_ok_and(|a| matches!(a.trim(), "y" | "Y" | "yes" | "YES" | "Yes"));
        if !yes {
            keep();
        }
        yes
    }
}
