//! The measuring discipline every scenario shares: all contenders in each trial, in the same
//! order (A B C A B C …), so drift on a shared VM spreads over all of them; a contender that
//! fails once is reported with its error and not tried again.

use crate::contenders::Contender;

/// One contender's trials, or why it could not be measured.
pub struct Outcome<T> {
    pub samples: Vec<T>,
    pub error: Option<String>,
}

/// Runs `measure` for each contender in each of `trials` trials; `describe` prints a sample on
/// the progress line that starts with `tag`.
pub fn alternate<T>(
    tag: &str,
    contenders: &[Contender],
    label: impl Fn(Contender) -> String,
    trials: usize,
    mut measure: impl FnMut(Contender) -> anyhow::Result<T>,
    describe: impl Fn(&T) -> String,
) -> Vec<Outcome<T>> {
    let mut out: Vec<Outcome<T>> = contenders
        .iter()
        .map(|_| Outcome {
            samples: Vec::new(),
            error: None,
        })
        .collect();
    for trial in 0..trials {
        for (i, &c) in contenders.iter().enumerate() {
            if out[i].error.is_some() || crate::profiling::skips(&label(c)) {
                continue;
            }
            match measure(c) {
                Ok(sample) => {
                    eprintln!("{tag}, trial {trial}, {}: {}", label(c), describe(&sample));
                    out[i].samples.push(sample);
                }
                Err(e) => {
                    eprintln!("{tag}, {}: not measured: {e:#}", label(c));
                    out[i].error = Some(format!("{e:#}"));
                }
            }
        }
    }
    out
}
