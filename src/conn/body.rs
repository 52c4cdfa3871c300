//! A response body that holds something (permits, a stream's place in its
//! connection's count) until the response has been sent or abandoned.
//!
//! A service's future ends when its response headers are ready; a streamed
//! response (Health/Watch, reflection) goes on long after. What a stream
//! costs must be held as long as the stream is open, so it lives here.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use hyper::body::{Body, Frame, SizeHint};

/// `inner`, holding `held` until it ends or is dropped.
pub struct Hold<B, T> {
    inner: B,
    held: Option<T>,
}

impl<B, T> Hold<B, T> {
    pub fn new(inner: B, held: Option<T>) -> Self {
        Self { inner, held }
    }
}

impl<B: Body + Unpin, T: Unpin> Body for Hold<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() {
            this.held = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
