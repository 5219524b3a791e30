//! Fault injection, switchable at run time: latency, 5xx, throttling, dropped
//! connections and a skewed clock.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use time::OffsetDateTime;

/// A cheap, cloneable handle on the emulator's faults. Changes apply to the
/// next request of every operation.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Mutex<FaultState>>);

/// A replacement for the real clock.
#[derive(Clone)]
struct ClockFn(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl std::fmt::Debug for ClockFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockFn")
    }
}

#[derive(Debug, Default)]
struct FaultState {
    clock: Option<ClockFn>,
    latency: Duration,
    fail_next: u32,
    fail_status: u16,
    throttle_next: u32,
    drop_next: u32,
    skew: time::Duration,
    fail_rate: f64,
    fail_rate_status: u16,
    throttle_rate: f64,
}

/// What the next request gets instead of a normal answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Injected {
    /// Serve normally.
    None,
    /// Close the connection without any response.
    Drop,
    /// Answer with this 5xx status and the service's internal-error body.
    Fail(u16),
    /// Answer with the service's throttling error.
    Throttle,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A poisoned lock only means a panic elsewhere; the state is plain data.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delays every answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// The next `n` requests fail with HTTP `status` (500 or 503 are what AWS
    /// sends; any 5xx is accepted, anything else is taken as 500).
    pub fn fail_next(&self, n: u32, status: u16) {
        let mut s = self.lock();
        s.fail_next = n;
        s.fail_status = if (500..600).contains(&status) {
            status
        } else {
            500
        };
    }

    /// The next `n` requests are throttled.
    pub fn throttle_next(&self, n: u32) {
        self.lock().throttle_next = n;
    }

    /// The next `n` requests see their connection closed without a response.
    pub fn drop_next(&self, n: u32) {
        self.lock().drop_next = n;
    }

    /// Sets the emulator's clock to the real time plus `skew`.
    pub fn set_clock_skew(&self, skew: time::Duration) {
        self.lock().skew = skew;
    }

    /// Each request fails with `status` with probability `rate` (0..=1).
    pub fn set_fail_rate(&self, rate: f64, status: u16) {
        let mut s = self.lock();
        s.fail_rate = rate.clamp(0.0, 1.0);
        s.fail_rate_status = if (500..600).contains(&status) {
            status
        } else {
            503
        };
    }

    /// Each request is throttled with probability `rate` (0..=1).
    pub fn set_throttle_rate(&self, rate: f64) {
        self.lock().throttle_rate = rate.clamp(0.0, 1.0);
    }

    /// Removes every fault, including clock skew (a clock set with
    /// [`Faults::set_clock`] stays).
    pub fn clear(&self) {
        let mut s = self.lock();
        let clock = s.clock.take();
        *s = FaultState::default();
        s.clock = clock;
    }

    /// Runs the emulator on `clock` instead of the real time: what it
    /// checks (signing time, certificate validity, credential expiry, the
    /// CreateSession quota) follows that clock. The scale benchmark runs the
    /// emulator and many refresh engines on one faster clock.
    pub fn set_clock(&self, clock: Arc<dyn Fn() -> OffsetDateTime + Send + Sync>) {
        self.lock().clock = Some(ClockFn(clock));
    }

    /// The emulator's clock: real UTC time (or the clock set with
    /// [`Faults::set_clock`]) plus the configured skew.
    pub fn now(&self) -> OffsetDateTime {
        let (clock, skew) = {
            let s = self.lock();
            (s.clock.clone(), s.skew)
        };
        clock.map_or_else(OffsetDateTime::now_utc, |c| (c.0)()) + skew
    }

    pub(crate) fn latency(&self) -> Duration {
        self.lock().latency
    }

    /// Decides (and consumes) the fault for one request: drop, then 5xx, then
    /// throttling.
    pub(crate) fn next(&self) -> Injected {
        let mut s = self.lock();
        if s.drop_next > 0 {
            s.drop_next -= 1;
            return Injected::Drop;
        }
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Injected::Fail(s.fail_status);
        }
        if s.throttle_next > 0 {
            s.throttle_next -= 1;
            return Injected::Throttle;
        }
        if s.fail_rate > 0.0 && chance() < s.fail_rate {
            return Injected::Fail(s.fail_rate_status);
        }
        if s.throttle_rate > 0.0 && chance() < s.throttle_rate {
            return Injected::Throttle;
        }
        Injected::None
    }
}

/// A uniform number in [0, 1).
fn chance() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 1.0;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_are_consumed_in_order() {
        let f = Faults::default();
        f.drop_next(1);
        f.fail_next(1, 503);
        f.throttle_next(1);
        assert_eq!(f.next(), Injected::Drop);
        assert_eq!(f.next(), Injected::Fail(503));
        assert_eq!(f.next(), Injected::Throttle);
        assert_eq!(f.next(), Injected::None);
        f.fail_next(1, 404);
        assert_eq!(f.next(), Injected::Fail(500));
    }

    #[test]
    fn rates_and_skew_apply_until_cleared() {
        let f = Faults::default();
        f.set_throttle_rate(1.0);
        assert_eq!(f.next(), Injected::Throttle);
        f.set_clock_skew(time::Duration::hours(1));
        assert!(f.now() > OffsetDateTime::now_utc() + time::Duration::minutes(59));
        f.clear();
        assert_eq!(f.next(), Injected::None);
        assert!(f.now() < OffsetDateTime::now_utc() + time::Duration::minutes(1));
    }
}
