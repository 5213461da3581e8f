//! Receiving a request body from an untrusted client: within a size limit,
//! a shared memory budget, and a minimum rate.
//!
//! A client that sends its headers and then nothing (or a trickle) would
//! otherwise hold its slot until a long timeout. The rate rule: after a
//! short grace, the body must keep arriving at `min_rate` on average, so
//! `received` bytes buy time until `start + grace + received / min_rate`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Buffer memory is accounted in units of this many bytes.
pub const BUDGET_UNIT: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub struct UploadRules {
    pub max_body: usize,
    pub min_rate: u64,
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body arrived slower than {min_rate} bytes per second ({received} bytes in {elapsed_ms} ms)")]
    TooSlow { min_rate: u64, received: usize, elapsed_ms: u128 },
    #[error("request body broke off after {received} bytes")]
    Aborted { received: usize },
    #[error("the shim's upload buffers are full; retry shortly")]
    BudgetFull,
}

impl UploadError {
    /// Short name for the rejection counter.
    pub fn reason(&self) -> &'static str {
        match self {
            UploadError::TooLarge { .. } => "body_too_large",
            UploadError::TooSlow { .. } => "body_too_slow",
            UploadError::Aborted { .. } => "body_aborted",
            UploadError::BudgetFull => "upload_budget_full",
        }
    }
}

/// The body in one buffer, with the budget it holds (released on drop).
pub struct Received {
    pub bytes: Bytes,
    pub _budget: OwnedSemaphorePermit,
}

/// Reads `body` whole under `rules`, holding `budget` units for what it buffered.
pub async fn receive<B>(body: B, rules: UploadRules, budget: &Arc<Semaphore>) -> Result<Received, UploadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let start = Instant::now();
    let mut body = body;
    let mut buf = BytesMut::new();
    let mut held = budget.clone().try_acquire_many_owned(0).map_err(|_| UploadError::BudgetFull)?;
    loop {
        let deadline = start + rules.grace + rate_allowance(buf.len(), rules.min_rate);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(UploadError::TooSlow {
                    min_rate: rules.min_rate,
                    received: buf.len(),
                    elapsed_ms: start.elapsed().as_millis(),
                });
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(UploadError::Aborted { received: buf.len() }),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > rules.max_body {
            return Err(UploadError::TooLarge { limit: rules.max_body });
        }
        let need = units(buf.len() + data.len()) - held.num_permits();
        if need > 0 {
            let more = budget.clone().try_acquire_many_owned(need as u32).map_err(|_| UploadError::BudgetFull)?;
            held.merge(more);
        }
        buf.extend_from_slice(&data);
    }
    Ok(Received { bytes: buf.freeze(), _budget: held })
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(BUDGET_UNIT)
}

fn rate_allowance(received: usize, min_rate: u64) -> Duration {
    if min_rate == 0 {
        return Duration::from_secs(86_400);
    }
    Duration::from_secs_f64(received as f64 / min_rate as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    fn rules() -> UploadRules {
        UploadRules { max_body: 10_000, min_rate: 1000, grace: Duration::from_millis(100) }
    }

    #[tokio::test]
    async fn a_whole_body_is_received_and_its_budget_released() {
        let budget = Arc::new(Semaphore::new(8));
        let r = receive(Full::new(Bytes::from(vec![7u8; 5000])), rules(), &budget).await.unwrap();
        assert_eq!(r.bytes.len(), 5000);
        assert_eq!(budget.available_permits(), 3);
        drop(r);
        assert_eq!(budget.available_permits(), 8);
        let e = receive(Full::new(Bytes::from(vec![7u8; 20_000])), rules(), &budget).await.err().unwrap();
        assert!(matches!(e, UploadError::TooLarge { limit: 10_000 }), "{e}");
        let e = receive(Full::new(Bytes::from(vec![7u8; 9000])), rules(), &budget).await.err().unwrap();
        assert!(matches!(e, UploadError::BudgetFull), "{e}");
        assert_eq!(budget.available_permits(), 8);
    }

    #[tokio::test]
    async fn a_stalled_or_broken_body_is_cut_off() {
        let budget = Arc::new(Semaphore::new(100));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc")))).await.unwrap();
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let started = Instant::now();
        let e = receive(body, rules(), &budget).await.err().unwrap();
        assert!(matches!(e, UploadError::TooSlow { received: 3, .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(tx);

        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc")))).await.unwrap();
        tx.send(Err(std::io::Error::other("reset"))).await.unwrap();
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let e = receive(body, rules(), &budget).await.err().unwrap();
        assert!(matches!(e, UploadError::Aborted { received: 3 }), "{e}");
        assert_eq!(budget.available_permits(), 100);
    }
}
