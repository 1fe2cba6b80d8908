//! The live progress view of `stepd run`: one line per event, coloured on a
//! terminal, plain when piped.

use std::io::IsTerminal;
use std::time::Instant;

use stepd_records::events::{Event, EventRecord};

/// Prints events as they are recorded.
#[derive(Debug)]
pub struct LiveView {
    started: Instant,
    color: bool,
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// Colour only for a terminal, and never when `NO_COLOR` holds a value.
fn wants_color(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

impl LiveView {
    /// A view writing to stdout, coloured when stdout is a terminal and
    /// `NO_COLOR` is not set (no-color.org).
    pub fn new() -> Self {
        LiveView {
            started: Instant::now(),
            color: wants_color(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR").as_deref()),
        }
    }

    fn paint(&self, color: &str, text: &str) -> String {
        if self.color {
            format!("{color}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// The line for one event (`None` for events the view does not show).
    pub fn line(&self, record: &EventRecord) -> Option<String> {
        let text = match &record.event {
            Event::JobStarted {
                job_attempt,
                max_attempts,
                first_step_index,
            } => {
                format!(
                    "job {} attempt {job_attempt}/{max_attempts} from step {first_step_index}",
                    record.job_id
                )
            }
            Event::JobSucceeded { .. } => self.paint(GREEN, "job succeeded"),
            Event::JobFailed {
                failure_class, reason, ..
            } => self.paint(RED, &format!("job failed ({failure_class}): {reason}")),
            Event::JobRequeued {
                next_job_attempt,
                delay_seconds,
                reason,
            } => self.paint(
                YELLOW,
                &match reason {
                    Some(reason) => format!("job requeued: attempt {next_job_attempt} in {delay_seconds}s ({reason})"),
                    None => format!("job requeued: attempt {next_job_attempt} in {delay_seconds}s"),
                },
            ),
            Event::BaselineFetched {
                repository,
                commit,
                cached,
            } => format!(
                "baseline {repository} at {commit}{}",
                if *cached { " (cached)" } else { " (fetched)" }
            ),
            Event::JobDeadLetter { job_attempts } => {
                self.paint(RED, &format!("job dead-lettered after {job_attempts} attempt(s)"))
            }
            Event::JobCancelled { reason } => self.paint(YELLOW, &format!("job cancelled: {reason}")),
            Event::AttemptStarted(at) => format!("step {} attempt {} started", at.step_id, at.attempt),
            Event::AttemptFinished { step, summary, .. } => self.paint(
                GREEN,
                &format!("step {} attempt {} succeeded: {summary}", step.step_id, step.attempt),
            ),
            Event::AttemptFailed(f) => self.paint(
                RED,
                &format!(
                    "step {} attempt {} failed: {} ({})",
                    f.step.step_id, f.step.attempt, f.outcome, f.failure_class
                ),
            ),
            Event::SelfHealTriggered(d) | Event::SelfHealEscalated(d) | Event::SelfHealExhausted(d) => self.paint(
                YELLOW,
                &format!(
                    "self-heal: {} for step {} ({})",
                    d.strategy, d.step.step_id, d.failure_class
                ),
            ),
            Event::ResumeFromStep {
                step_id,
                patches_replayed,
                ..
            } => {
                format!("workspace rebuilt ({patches_replayed} patch(es) replayed); resuming at step {step_id}")
            }
            _ => return None,
        };
        let at = self.paint(DIM, &format!("[{:>8.3}s]", self.started.elapsed().as_secs_f64()));
        Some(format!("{at} {text}"))
    }

    /// Print the line for `record`, if it has one.
    pub fn show(&self, record: &EventRecord) {
        if let Some(line) = self.line(record) {
            println!("{line}");
        }
    }
}

impl Default for LiveView {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_is_for_terminals_and_off_with_no_color() {
        use std::ffi::OsStr;
        assert!(wants_color(true, None));
        assert!(wants_color(true, Some(OsStr::new(""))));
        assert!(!wants_color(true, Some(OsStr::new("1"))));
        assert!(!wants_color(false, None));
    }
}
