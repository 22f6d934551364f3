//! Future helpers both sides of the wire share: a delegate future given its grace after a
//! cancel ([`until_cancelled`]), a future polled once on the caller's task
//! ([`poll_once`]), and an observation stamped with the time a provider measured for it
//! ([`measure`], contract 8.5).

use code_mode_protocol::session::{
    CANCEL_GRACE, CellResponse, PendingOutcome, StartedCell, StartedPendingCell,
};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs a delegate future; once `token` is cancelled it gets [`CANCEL_GRACE`] to finish and
/// is then abandoned (`None`). Used on both sides of the wire.
pub async fn until_cancelled<F: Future>(token: &CancellationToken, future: F) -> Option<F::Output> {
    tokio::select! {
        output = future => Some(output),
        () = async {
            token.cancelled().await;
            tokio::time::sleep(CANCEL_GRACE).await;
        } => None,
    }
}

/// Polls a future once, now, on the caller's task: `Some` if it finished.
///
/// Sessions start delegate calls with it, in the order the cell made them: the delegate's
/// code up to its first `.await` (where delegates report a call: an event line, a frame, a
/// record) runs in call order on the caller's task, and a future that is not done is then
/// spawned. Nothing is lost by polling with a no-op waker first: the spawned task's first
/// poll registers its own waker with everything the future waits on.
pub fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match Pin::new(future).poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// A provider's answer to an observation, which carries the time the provider measured
/// for it (contract 8.5).
pub trait Measured: Sized {
    /// The same answer with the time `measured`.
    fn measured(self, measured: Duration) -> Self;
}

impl Measured for CellResponse {
    fn measured(self, measured: Duration) -> Self {
        self.with_wall_time(measured)
    }
}

impl Measured for PendingOutcome {
    fn measured(self, measured: Duration) -> Self {
        self.with_wall_time(measured)
    }
}

impl Measured for StartedCell {
    fn measured(self, measured: Duration) -> Self {
        StartedCell {
            initial_response: self.initial_response.with_wall_time(measured),
            ..self
        }
    }
}

impl Measured for StartedPendingCell {
    fn measured(self, measured: Duration) -> Self {
        StartedPendingCell {
            outcome: self.outcome.with_wall_time(measured),
            ..self
        }
    }
}

/// Runs an observation and stamps its answer with the time from now to the answer: how a
/// provider measures its time (contract 8.5).
pub async fn measure<T: Measured, E>(
    observation: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let called = std::time::Instant::now();
    let answer = observation.await?;
    Ok(answer.measured(called.elapsed()))
}
