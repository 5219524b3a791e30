//! Clocks for tests and benchmarks (feature `test-clock`): one that moves
//! only when told to, and one that runs faster than real time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;

use super::Clock;

/// A clock that only moves when told to, for tests.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
    moved: Arc<Notify>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
            moved: Arc::new(Notify::new()),
        }
    }

    /// Moves the clock forward and wakes sleepers whose deadline passed.
    pub fn advance(&self, by: time::Duration) {
        {
            let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
            *now += by;
        }
        self.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep_until(
        &self,
        deadline: OffsetDateTime,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        wait_until(self, &self.moved, deadline, |_| None)
    }
}

/// A clock that runs `factor` times faster than real time from a starting
/// point, for benchmarks that run the real refresh code over hours of
/// simulated time. The factor can change on the way (a slow phase while
/// much happens, a fast one while little does); sleepers follow.
#[derive(Clone, Debug)]
pub struct ScaledClock(Arc<ScaledInner>);

#[derive(Debug)]
struct ScaledInner {
    /// (real instant, simulated time at it, factor) of the last re-basing.
    base: Mutex<Scaled>,
    changed: Notify,
}

#[derive(Debug)]
struct Scaled {
    real: std::time::Instant,
    simulated: OffsetDateTime,
    factor: f64,
    /// The latest time shown: the clock never goes back.
    shown: OffsetDateTime,
}

impl Scaled {
    fn at(&self, real: std::time::Instant) -> OffsetDateTime {
        self.simulated
            + real
                .saturating_duration_since(self.real)
                .mul_f64(self.factor)
    }
}

impl ScaledClock {
    /// A clock showing `start` now and running `factor` (> 0) times faster
    /// than real time.
    pub fn new(start: OffsetDateTime, factor: f64) -> Self {
        ScaledClock(Arc::new(ScaledInner {
            base: Mutex::new(Scaled {
                real: std::time::Instant::now(),
                simulated: start,
                factor: factor.max(f64::MIN_POSITIVE),
                shown: start,
            }),
            changed: Notify::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scaled> {
        self.0.base.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `factor` (> 0) times faster than real time from now on.
    pub fn set_factor(&self, factor: f64) {
        {
            let mut s = self.lock();
            let real = std::time::Instant::now();
            s.simulated = s.at(real).max(s.shown);
            s.real = real;
            s.factor = factor.max(f64::MIN_POSITIVE);
        }
        self.0.changed.notify_waiters();
    }

    /// Takes `stall` of real time that just passed out of the simulation (the
    /// machine stalled: simulated work would otherwise seem to take
    /// `factor` times longer). The clock stands still for it, never going
    /// back past a time it has shown.
    pub fn hold(&self, stall: Duration) {
        let mut s = self.lock();
        let now = std::time::Instant::now();
        s.real = (s.real + stall).min(now);
    }

    fn factor(&self) -> f64 {
        self.lock().factor
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> OffsetDateTime {
        let mut s = self.lock();
        let now = s.at(std::time::Instant::now()).max(s.shown);
        s.shown = now;
        now
    }

    fn sleep_until(
        &self,
        deadline: OffsetDateTime,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        wait_until(self, &self.0.changed, deadline, |left| {
            Some(
                Duration::try_from(left)
                    .unwrap_or(Duration::MAX)
                    .div_f64(self.factor())
                    .min(Duration::from_secs(24 * 3600)),
            )
        })
    }
}

/// Resolves once `clock` shows `deadline`, checking again whenever `changed`
/// is notified and after the real time `real_wait` gives for the simulated
/// time left (`None`: only when notified).
fn wait_until<'a>(
    clock: &'a impl Clock,
    changed: &'a Notify,
    deadline: OffsetDateTime,
    real_wait: impl Fn(time::Duration) -> Option<Duration> + Send + 'a,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        loop {
            let notified = changed.notified();
            let left = deadline - clock.now();
            if !left.is_positive() {
                return;
            }
            match real_wait(left) {
                Some(real) => tokio::select! {
                    () = tokio::time::sleep(real) => {}
                    () = notified => {}
                },
                None => notified.await,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scaled_clock_runs_faster_and_sleepers_follow_a_new_factor() {
        let start = OffsetDateTime::now_utc();
        let clock = ScaledClock::new(start, 1000.0);
        let t = std::time::Instant::now();
        clock.sleep_until(start + time::Duration::seconds(20)).await;
        let took = t.elapsed();
        assert!(clock.now() >= start + time::Duration::seconds(20));
        assert!(took < Duration::from_secs(2), "{took:?}");
        // Slowed to real time, a sleeper for 1 simulated hour would wait an
        // hour; sped up again, it wakes promptly.
        clock.set_factor(1.0);
        let c2 = clock.clone();
        let sleeper = tokio::spawn(async move {
            let at = c2.now() + time::Duration::hours(1);
            c2.sleep_until(at).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        clock.set_factor(1e6);
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("the sleeper follows the new factor")
            .unwrap();
        // A held stall is taken out, and the clock never goes back.
        clock.set_factor(1.0);
        let before = clock.now();
        std::thread::sleep(Duration::from_millis(30));
        clock.hold(Duration::from_secs(10));
        let after = clock.now();
        assert!(
            after >= before && after - before < time::Duration::milliseconds(20),
            "{before} {after}"
        );
    }
}
