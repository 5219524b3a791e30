//! Wall-clock time and sleeping, injectable so refresh timing can be tested
//! without waiting hours.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use time::OffsetDateTime;

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

#[cfg(feature = "test-clock")]
mod manual;
#[cfg(feature = "test-clock")]
pub use manual::{ManualClock, ScaledClock};
