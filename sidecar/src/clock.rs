//! Wall-clock time and sleeping, injectable so refresh timing can be tested
//! without waiting hours.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;

/// A source of the current time that can also wait for a moment to arrive.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
    /// Resolves once `now() >= deadline`.
    fn sleep_until(
        &self,
        deadline: OffsetDateTime,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn sleep_until(
        &self,
        deadline: OffsetDateTime,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let wait: Duration = (deadline - self.now()).try_into().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

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
        Box::pin(async move {
            loop {
                let notified = self.moved.notified();
                if self.now() >= deadline {
                    return;
                }
                notified.await;
            }
        })
    }
}
