//! Giving freed heap pages back to the operating system after connections go idle.
//!
//! While a request runs, its connection holds hyper's buffers (8 KiB and more); an idle
//! connection sheds them (compaction, see [`crate::conn`]) and keeps about 1.5 KiB. The C
//! allocator keeps the freed pages, though: after a burst of a thousand requests, the
//! resident size stays at the burst's peak. So after a wave of compactions the engine asks
//! the allocator, once, to return its free pages (glibc's `malloc_trim`, installed by the C
//! ABI as [`set_release`]) — at most once every [`MIN_INTERVAL`], a short while after the
//! wave, on a library thread.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Compactions that make a release worth it (a lone idle connection frees too little).
const MIN_COMPACTIONS: usize = 16;
/// How long after the wave's first compactions the release runs (the rest of the wave
/// lands in the meantime).
const DELAY: Duration = Duration::from_millis(200);
/// The least time between two releases (each walks the allocator's heaps).
const MIN_INTERVAL: Duration = Duration::from_secs(2);

static RELEASE: OnceLock<fn()> = OnceLock::new();

#[derive(Default)]
struct Wave {
    compactions: usize,
    scheduled: bool,
    last: Option<Instant>,
}

static WAVE: Mutex<Wave> = Mutex::new(Wave {
    compactions: 0,
    scheduled: false,
    last: None,
});

/// Installs the function that returns free heap pages to the system.
pub(crate) fn set_release(f: fn()) {
    let _ = RELEASE.set(f);
}

/// Called by a connection that just shed its buffers, on a runtime thread. Schedules one
/// release for the wave once it is large enough.
pub(crate) fn note_compaction() {
    let Some(release) = RELEASE.get().copied() else {
        return;
    };
    let at = {
        let mut w = WAVE.lock().unwrap_or_else(|p| p.into_inner());
        w.compactions += 1;
        if w.scheduled || w.compactions < MIN_COMPACTIONS {
            return;
        }
        w.scheduled = true;
        release_time(Instant::now(), w.last)
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        WAVE.lock().unwrap_or_else(|p| p.into_inner()).scheduled = false;
        return;
    };
    rt.spawn(async move {
        tokio::time::sleep_until(at.into()).await;
        {
            let mut w = WAVE.lock().unwrap_or_else(|p| p.into_inner());
            w.compactions = 0;
            w.scheduled = false;
            w.last = Some(Instant::now());
        }
        release();
    });
}

/// When the release of a wave noticed at `now` runs, given the previous release.
fn release_time(now: Instant, last: Option<Instant>) -> Instant {
    let soon = now + DELAY;
    match last {
        Some(l) if l + MIN_INTERVAL > soon => l + MIN_INTERVAL,
        _ => soon,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_wait_for_the_wave_and_keep_their_distance() {
        let now = Instant::now();
        assert_eq!(release_time(now, None), now + DELAY);
        assert_eq!(
            release_time(now, Some(now - Duration::from_secs(10))),
            now + DELAY
        );
        let last = now - Duration::from_millis(500);
        assert_eq!(release_time(now, Some(last)), last + MIN_INTERVAL);
    }
}
