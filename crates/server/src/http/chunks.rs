//! A reply body sent as a list of buffers: the binary extension's JSON header, then each raw
//! output as the engine left it, without gathering them into one buffer first.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// A body of `chunks` sent one after the other, with its length known up front, so that raw
/// output tensors go out without being copied into one buffer.
pub(super) fn chunked_body(mut chunks: Vec<Bytes>) -> Body {
    if chunks.len() == 1 {
        return Body::from(chunks.swap_remove(0));
    }
    Body::new(Chunks { length: chunks.iter().map(Bytes::len).sum(), chunks: chunks.into() })
}

/// The body [`chunked_body`] builds: exact size, data frames in order.
struct Chunks {
    chunks: VecDeque<Bytes>,
    length: usize,
}

impl HttpBody for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = self.chunks.pop_front();
        if let Some(chunk) = &chunk {
            self.length -= chunk.len();
        }
        Poll::Ready(chunk.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.length as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sends_the_chunks_in_order_with_their_length() {
        let chunks = vec![Bytes::from_static(b"{}"), Bytes::from_static(b"ab"), Bytes::from_static(b"c")];
        let body = chunked_body(chunks);
        assert_eq!(body.size_hint().exact(), Some(5));
        let bytes = axum::body::to_bytes(body, 100).await.expect("collects");
        assert_eq!(bytes.as_ref(), b"{}abc");
        let single = chunked_body(vec![Bytes::from_static(b"{}")]);
        assert_eq!(single.size_hint().exact(), Some(2));
    }
}
