//! A toy model server: the upstream that the demo, the benchmark and the
//! integration tests put behind the gateway.
//!
//! It speaks enough of the Open Inference Protocol (REST and gRPC) to be a
//! realistic peer, and its behaviour (latency, error rate, readiness, hang)
//! can be changed while it runs, so tests can break a version on purpose.

use crate::gateway::grpc::{self, protobuf_string};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Behaviour knobs, changeable while the server runs.
#[derive(Debug, Default)]
pub struct ToyBehaviour {
    /// Added delay before every answer.
    pub latency_us: AtomicU64,
    /// Share of inference calls answered with a 500 (or gRPC INTERNAL), in
    /// parts per million.
    pub error_ppm: AtomicU32,
    /// Health endpoints answer 503 when false.
    pub unready: AtomicBool,
    /// Never answer (until this is cleared): a stuck server.
    pub hang: AtomicBool,
    /// Requests seen, health checks excluded.
    pub requests: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

impl ToyBehaviour {
    pub fn set_latency(&self, latency: Duration) {
        self.latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn set_error_rate(&self, rate: f64) {
        self.error_ppm
            .store((rate.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// A running toy server.
pub struct ToyServer {
    pub addr: SocketAddr,
    pub version: String,
    pub behaviour: Arc<ToyBehaviour>,
    task: tokio::task::JoinHandle<()>,
    /// Closes every open connection when set: a dead server, not just a
    /// closed listener.
    stopped: tokio::sync::watch::Sender<bool>,
}

impl ToyServer {
    /// Starts a toy server answering as `version` on `listen` (port 0 picks one).
    pub async fn start(listen: SocketAddr, version: &str) -> std::io::Result<ToyServer> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let behaviour = Arc::new(ToyBehaviour::default());
        let shared = Arc::new(Shared {
            version: version.to_string(),
            version_header: http::HeaderValue::from_str(version)
                .unwrap_or(http::HeaderValue::from_static("invalid")),
            behaviour: behaviour.clone(),
        });
        let (stopped, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors and the like: don't spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                shared.behaviour.connections.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.answer(req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stop.wait_for(|stopped| *stopped) => {}
                    }
                });
            }
        });
        Ok(ToyServer {
            addr,
            version: version.to_string(),
            behaviour,
            task,
            stopped,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server: the listener closes and open connections drop.
    pub fn stop(&self) {
        self.task.abort();
        let _ = self.stopped.send(true);
    }
}

impl Drop for ToyServer {
    fn drop(&mut self) {
        self.stop();
    }
}

type ToyBody = http_body_util::Either<
    Full<Bytes>,
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

struct Shared {
    version: String,
    version_header: http::HeaderValue,
    behaviour: Arc<ToyBehaviour>,
}

impl Shared {
    async fn answer(&self, req: Request<Incoming>) -> Response<ToyBody> {
        let behaviour = &self.behaviour;
        let (parts, body) = req.into_parts();
        if !parts.uri.path().starts_with("/v2/health/") {
            behaviour.requests.fetch_add(1, Ordering::Relaxed);
        }
        // Read the whole request so the connection can be reused.
        let request_bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes().len(),
            Err(_) => return self.json(StatusCode::BAD_REQUEST, r#"{"error":"bad body"}"#.into()),
        };
        while behaviour.hang.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let latency_us = behaviour.latency_us.load(Ordering::Relaxed);
        if latency_us > 0 {
            tokio::time::sleep(Duration::from_micros(latency_us)).await;
        }
        let path = parts.uri.path();
        let grpc = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            return self.grpc(path);
        }
        let fail = self.roll_error();
        match (&parts.method, path) {
            (_, "/v2/health/ready" | "/v2/health/live") => {
                if behaviour.unready.load(Ordering::Relaxed) {
                    self.json(StatusCode::SERVICE_UNAVAILABLE, r#"{"ready":false}"#.into())
                } else {
                    self.json(StatusCode::OK, r#"{"ready":true}"#.into())
                }
            }
            (&Method::POST, p) if p.ends_with("/infer") => {
                if fail {
                    return self.json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"error":"injected failure"}"#.into(),
                    );
                }
                let model = p.split('/').nth(3).unwrap_or("model");
                self.json(
                    StatusCode::OK,
                    format!(
                        r#"{{"model_name":"{model}","model_version":"{}","outputs":[{{"name":"score","datatype":"FP32","shape":[1],"data":[0.42]}}]}}"#,
                        self.version
                    ),
                )
            }
            (&Method::GET, p) if p.starts_with("/v2/models/") && p.ends_with("/ready") => {
                self.json(StatusCode::OK, r#"{"ready":true}"#.into())
            }
            (&Method::GET, p) if p.starts_with("/v2/models/") => {
                let model = p.split('/').nth(3).unwrap_or("model");
                self.json(
                    StatusCode::OK,
                    format!(
                        r#"{{"name":"{model}","versions":["{}"],"platform":"toy","inputs":[{{"name":"x","datatype":"FP32","shape":[-1,4]}}],"outputs":[{{"name":"score","datatype":"FP32","shape":[-1,1]}}]}}"#,
                        self.version
                    ),
                )
            }
            _ => {
                if fail {
                    return self.json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"error":"injected failure"}"#.into(),
                    );
                }
                self.json(
                    StatusCode::OK,
                    format!(
                        r#"{{"version":"{}","path":{},"request_bytes":{request_bytes}}}"#,
                        self.version,
                        serde_json::Value::from(path)
                    ),
                )
            }
        }
    }

    fn roll_error(&self) -> bool {
        let ppm = self.behaviour.error_ppm.load(Ordering::Relaxed);
        ppm > 0 && fastrand::u32(0..1_000_000) < ppm
    }

    fn json(&self, status: StatusCode, body: String) -> Response<ToyBody> {
        let mut response =
            Response::new(http_body_util::Either::Left(Full::new(Bytes::from(body))));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
            .headers_mut()
            .insert("x-toy-version", self.version_header.clone());
        response
    }

    /// Answers an OIP gRPC call: one length-prefixed protobuf message, then
    /// `grpc-status` in the trailers.
    fn grpc(&self, path: &str) -> Response<ToyBody> {
        let (status, message) = match path.rsplit('/').next() {
            Some("ServerReady" | "ServerLive" | "ModelReady") => ("0", vec![0x08, 0x01]),
            Some("ModelInfer") if self.roll_error() => ("13", Vec::new()),
            Some("ModelInfer") => {
                // ModelInferResponse { model_name = 1, model_version = 2 }
                let mut message = protobuf_string(1, "toy");
                message.extend(protobuf_string(2, &self.version));
                ("0", message)
            }
            _ => ("12", Vec::new()),
        };
        let mut frames = Vec::new();
        if status == "0" {
            frames.push(Ok(Frame::data(Bytes::from(grpc::frame(&message)))));
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static(status));
        frames.push(Ok(Frame::trailers(trailers)));
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let mut response = Response::new(http_body_util::Either::Right(body));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
            .headers_mut()
            .insert("x-toy-version", self.version_header.clone());
        response
    }
}
