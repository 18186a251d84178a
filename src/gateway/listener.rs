//! Listeners: accept loops for the data plane and the admin API.
//!
//! One connection builder serves HTTP/1.1 (keep-alive) and HTTP/2 with
//! prior knowledge (h2c, which gRPC clients use) on the same port; with a
//! certificate configured, TLS (rustls) with ALPN `h2` and `http/1.1`.
//! On shutdown the listeners stop accepting and open connections finish
//! their requests in flight.

use super::Gateway;
use crate::config::TlsFiles;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Builds a TLS acceptor from PEM files, or `None` without a certificate.
pub fn server_tls(files: Option<&TlsFiles>) -> anyhow::Result<Option<TlsAcceptor>> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let Some(files) = files else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificate {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading private key {}", files.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(|| format!("using certificate {}", files.cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Tells accept loops to stop; they then drain their connections.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Sender<bool>);

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self(tokio::sync::watch::channel(false).0)
    }

    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }

    async fn triggered(&self) {
        let mut receiver = self.0.subscribe();
        let _ = receiver.wait_for(|stop| *stop).await;
    }
}

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn serve_data(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
    shutdown: Shutdown,
) {
    accept_loop(listener, tls, shutdown, move |remote| {
        let gateway = gateway.clone();
        let peer = super::proxy::Peer::new(remote);
        hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let (gateway, peer) = (gateway.clone(), peer.clone());
            async move {
                Ok::<_, std::convert::Infallible>(
                    super::proxy::handle(gateway, request, peer).await,
                )
            }
        })
    })
    .await;
}

pub async fn serve_admin(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    shutdown: Shutdown,
) {
    accept_loop(listener, tls, shutdown, move |_remote| {
        hyper_util::service::TowerToHyperService::new(router.clone())
    })
    .await;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one connection serves: a hyper service the connection builder can
/// drive on a spawned task.
trait ConnectionService<B>:
    hyper::service::Service<
        http::Request<Incoming>,
        Response = http::Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + 'static
where
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
}

impl<S, B> ConnectionService<B> for S
where
    S: hyper::service::Service<
            http::Request<Incoming>,
            Response = http::Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + 'static,
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
}

async fn accept_loop<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: Shutdown,
    make_service: impl Fn(SocketAddr) -> S,
) where
    S: ConnectionService<B>,
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new());
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    tracing::warn!(%error, "Accept failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.triggered() => break,
        };
        let service = make_service(remote);
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, tls, builder, service, watcher).await {
                tracing::debug!(%remote, error = %error, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_connection<S, B>(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), BoxError>
where
    S: ConnectionService<B>,
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            watcher
                .watch(builder.serve_connection(TokioIo::new(stream), service))
                .await
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
            let stream = handshake.await.map_err(|_| "TLS handshake timed out")??;
            watcher
                .watch(builder.serve_connection(TokioIo::new(stream), service))
                .await
        }
    }
}
