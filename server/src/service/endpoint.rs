//! The `Cell` service as tonic serves it, with one status rewritten.

use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use gaios_proto::cell::v1::cell_server::CellServer;

use super::CellService;

/// The `Cell` service as served. tonic refuses a unary request over the
/// message limit with `OUT_OF_RANGE`; gRPC's own servers, and Gaios's
/// documentation, say `RESOURCE_EXHAUSTED`, so that answer's status is
/// rewritten. Such a refusal is a trailers-only answer, whose status is in
/// the headers; the handlers never answer `OUT_OF_RANGE` themselves. Left as
/// tonic says (in trailers, not rewritten): an answer over the response
/// limit. An oversized message on the KeepAlive stream ends that stream
/// with `RESOURCE_EXHAUSTED` (see `keep_alive.rs`).
#[derive(Clone)]
pub struct CellEndpoint(pub(super) CellServer<CellService>);

impl tonic::server::NamedService for CellEndpoint {
    const NAME: &'static str = <CellServer<CellService> as tonic::server::NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for CellEndpoint
where
    CellServer<CellService>: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    <CellServer<CellService> as Service<http::Request<B>>>::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = <CellServer<CellService> as Service<http::Request<B>>>::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move {
            let mut answer = answer.await?;
            let out_of_range = http::HeaderValue::from(tonic::Code::OutOfRange as i32);
            if answer.headers().get(GRPC_STATUS) == Some(&out_of_range) {
                answer.headers_mut().insert(GRPC_STATUS, http::HeaderValue::from(tonic::Code::ResourceExhausted as i32));
            }
            Ok(answer)
        })
    }
}

/// The header (or trailer) that carries a gRPC status code.
const GRPC_STATUS: &str = "grpc-status";
