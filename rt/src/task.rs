//! A spawned task that is asked to stop and awaited, or aborted when its
//! handle is dropped: the shape of every long-running background loop
//! (the Lease elector, the ECR supervisor).

use std::future::Future;

use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};

/// What a [`StoppableTask`]'s body awaits to learn it should stop: it
/// resolves (with `Ok` or, if the handle is gone, `Err`) once stopping is
/// asked for.
pub type StopSignal = oneshot::Receiver<()>;

/// A spawned task aborted when this handle is dropped.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A task spawned on the current runtime. [`StoppableTask::stop`] fires its
/// [`StopSignal`] and waits for it to return; dropping the handle aborts it,
/// so a forgotten handle never leaves a loop running.
#[derive(Debug)]
pub struct StoppableTask<T> {
    stop: oneshot::Sender<()>,
    task: AbortOnDrop<T>,
}

impl<T: Send + 'static> StoppableTask<T> {
    /// Spawns `body(stop_signal)`.
    pub fn spawn<F, Fut>(body: F) -> StoppableTask<T>
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (stop, signal) = oneshot::channel();
        StoppableTask {
            stop,
            task: AbortOnDrop(tokio::spawn(body(signal))),
        }
    }

    /// Asks the task to stop and waits for it; `Err` if it panicked. If this
    /// wait is itself dropped, the task is aborted.
    pub async fn stop(self) -> Result<T, JoinError> {
        let StoppableTask { stop, mut task } = self;
        let _ = stop.send(());
        (&mut task.0).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_waits_for_the_body_and_drop_aborts_it() {
        let stopped = StoppableTask::spawn(|signal| async move {
            let _ = signal.await;
            "stopped cleanly"
        });
        assert_eq!(stopped.stop().await.unwrap(), "stopped cleanly");

        let (alive, mut gone) = tokio::sync::mpsc::channel::<()>(1);
        let dropped = StoppableTask::spawn(|_signal| async move {
            let _alive = alive;
            std::future::pending::<()>().await
        });
        drop(dropped);
        assert!(
            gone.recv().await.is_none(),
            "the aborted body dropped its state"
        );
    }
}
