//! An opt-in stage timer for finding where a verb spends its time:
//! `TABBY_TIMING=1` (any value but empty or `0`) prints one line per stage on stderr, with the time since
//! the process started working and since the previous stage. Off (one
//! environment lookup, then nothing) unless asked for.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Instant;

struct Clock {
    start: Instant,
    last: Mutex<Instant>,
}

fn clock() -> Option<&'static Clock> {
    static CLOCK: OnceLock<Option<Clock>> = OnceLock::new();
    CLOCK
        .get_or_init(|| {
            let on = std::env::var_os("TABBY_TIMING").is_some_and(|v| !v.is_empty() && v != "0");
            on.then(|| {
                let now = Instant::now();
                Clock {
                    start: now,
                    last: Mutex::new(now),
                }
            })
        })
        .as_ref()
}

/// Starts the clock (call first thing in `main`).
pub fn start() {
    let _ = clock();
}

/// Records the end of a stage.
pub fn mark(stage: &str) {
    if let Some(c) = clock() {
        let now = Instant::now();
        let mut last = c.last.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!(
            "timing {stage:<24} +{:>7.1}us at {:>8.1}us",
            (now - *last).as_secs_f64() * 1e6,
            (now - c.start).as_secs_f64() * 1e6
        );
        *last = now;
    }
}
