//! Stand-in OTLP collectors: they keep the bodies of what the daemon exports (spans,
//! metrics), for the tests to look into.

use std::sync::{Arc, Mutex};

/// A stand-in OTLP/HTTP collector serving `path`; its base URL.
pub async fn http_collector(path: &str, bodies: Arc<Mutex<Vec<Vec<u8>>>>) -> String {
    let app = axum::Router::new().route(
        path,
        axum::routing::post(move |body: axum::body::Bytes| {
            let bodies = bodies.clone();
            async move {
                bodies.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Whether the bodies received so far contain `needle`.
pub fn received(bodies: &Arc<Mutex<Vec<Vec<u8>>>>, needle: &[u8]) -> bool {
    bodies
        .lock()
        .unwrap()
        .iter()
        .any(|b| b.windows(needle.len()).any(|w| w == needle))
}

/// A stand-in OTLP/gRPC collector on `listener`: HTTP/2 without TLS, it keeps the body of
/// every `Export` call (traces or metrics) and answers each with an empty response and status 0.
pub fn grpc_collector(listener: tokio::net::TcpListener, bodies: Arc<Mutex<Vec<Vec<u8>>>>) {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let bodies = bodies.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if path.starts_with("/opentelemetry.proto.collector.") {
                                bodies.lock().unwrap().push(body.to_vec());
                            }
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
                                // An empty ExportTraceServiceResponse: not compressed, 0 bytes.
                                Ok(Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let response = hyper::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(StreamBody::new(futures::stream::iter(frames)))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
            });
        }
    });
}
