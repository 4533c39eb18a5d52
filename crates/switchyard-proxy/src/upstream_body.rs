//! A provider's answer body as the request path reads it, whichever protocol carried it.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::errors::BoxError;
use crate::h1_body::H1Body;

/// A provider's answer body: read from the socket by the exchange (HTTP/1.1), or a stream
/// of a shared HTTP/2 connection.
pub enum UpstreamBody {
    H1(H1Body),
    H2(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::pin::Pin;
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}
