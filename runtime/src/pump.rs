//! The frame pump of the host shim and the proxy: a response body read from
//! upstream frame by frame, each frame within an idle timeout, and passed on
//! through a small channel, so that a silent upstream is cut off, a slow
//! reader holds the upstream back (backpressure), and whatever the pump holds
//! (a slot, a reservation) lives as long as the body.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Frames buffered between upstream and the reader.
pub const FRAME_BUFFER: usize = 8;

pub type FrameResult = Result<Frame<Bytes>, std::io::Error>;

/// The body a pump feeds.
pub type PumpedBody = StreamBody<ReceiverStream<FrameResult>>;

/// The pump's end of a [`PumpedBody`].
pub struct FrameSender(mpsc::Sender<FrameResult>);

/// A body and the sender that feeds it.
pub fn pumped_body() -> (FrameSender, PumpedBody) {
    let (tx, rx) = mpsc::channel(FRAME_BUFFER);
    (FrameSender(tx), StreamBody::new(ReceiverStream::new(rx)))
}

impl FrameSender {
    /// Passes a frame on; false when the reader went away.
    pub async fn send(&self, frame: Frame<Bytes>) -> bool {
        self.0.send(Ok(frame)).await.is_ok()
    }

    /// Ends the body with an error: the reader sees a broken stream, never a
    /// complete-looking one.
    pub async fn fail(&self, why: impl Into<String>) {
        let _ = self.0.send(Err(std::io::Error::other(why.into()))).await;
    }
}

/// What came from upstream.
#[derive(Debug)]
pub enum Upstream {
    Frame(Frame<Bytes>),
    /// The body ended.
    End,
    /// The body broke off.
    Broken(String),
    /// No frame within the idle timeout.
    Silent,
}

/// The next frame of `body`, within `idle`.
pub async fn next_frame<B>(body: &mut B, idle: Duration) -> Upstream
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    match tokio::time::timeout(idle, body.frame()).await {
        Ok(Some(Ok(frame))) => Upstream::Frame(frame),
        Ok(None) => Upstream::End,
        Ok(Some(Err(e))) => Upstream::Broken(e.to_string()),
        Err(_) => Upstream::Silent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn frames_pass_and_the_end_is_told_apart_from_silence() {
        let mut body = Full::new(Bytes::from_static(b"abc"));
        assert!(
            matches!(next_frame(&mut body, Duration::from_secs(1)).await, Upstream::Frame(f) if f.data_ref().unwrap() == "abc")
        );
        assert!(matches!(next_frame(&mut body, Duration::from_secs(1)).await, Upstream::End));
        let (tx, mut silent) = pumped_body();
        assert!(matches!(next_frame(&mut silent, Duration::from_millis(20)).await, Upstream::Silent));
        tx.fail("gone").await;
        assert!(matches!(next_frame(&mut silent, Duration::from_secs(1)).await, Upstream::Broken(e) if e == "gone"));
        drop(silent);
        assert!(!tx.send(Frame::data(Bytes::new())).await, "the reader went away");
    }
}
