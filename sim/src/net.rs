//! gRPC over turmoil's simulated TCP: the server side (`incoming`), the
//! client side (`channel`) and the driver's [`Dialer`] ([`SimDialer`]).
//! The only transport code of the simulation; the services and clients
//! above it are the production ones.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use elide_driver::{BoxedIo, Dialer};
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};
use turmoil::net::{TcpListener, TcpStream};

/// A simulated TCP connection tonic can serve (tonic only knows tokio's types).
pub struct SimConn(pub TcpStream);

impl Connected for SimConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepted connections of `listener`, for `serve_with_incoming`.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<SimConn>> {
    futures::stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(stream, _)| SimConn(stream));
        Some((conn, listener))
    })
}

/// A lazily connecting channel to `host:port` over simulated TCP. No
/// HTTP/2 keepalive: hyper times it on the wall clock, which would make
/// runs differ (turmoil resets the connections of a crashed host, so the
/// fake Nomad agent notices a plugin crash without it).
pub fn channel(host: &str, port: u16) -> Channel {
    let target = format!("{host}:{port}");
    Endpoint::from_shared(format!("http://{target}"))
        .expect("valid simulated endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let target = target.clone();
            async move { TcpStream::connect(target).await.map(TokioIo::new) }
        }))
}

/// Every connection the plugin of one client dialled to its daemon: the
/// link (one per dialer the driver made) and when. Lets an invariant tell
/// a reconnect a fault explains from connection churn.
#[derive(Debug, Clone, Default)]
pub struct DialLog {
    inner: Arc<Mutex<DialLogInner>>,
}

#[derive(Debug, Default)]
struct DialLogInner {
    links: u64,
    dials: Vec<Dial>,
}

/// One dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dial {
    /// Which link (numbered in the order the driver made them).
    pub link: u64,
    /// When (simulated time).
    pub at: Duration,
}

impl DialLog {
    fn lock(&self) -> MutexGuard<'_, DialLogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_link(&self) -> u64 {
        let mut inner = self.lock();
        inner.links += 1;
        inner.links
    }

    /// Every dial so far, in order.
    pub fn dials(&self) -> Vec<Dial> {
        self.lock().dials.clone()
    }
}

/// The driver's transport to a daemon in the simulation: simulated TCP to
/// `host:port` where production dials a unix socket. Each dial is logged.
#[derive(Debug, Clone)]
pub struct SimDialer {
    target: String,
    link: u64,
    log: DialLog,
}

impl SimDialer {
    /// A dialer of a new link to `target`, logging into `log`.
    pub fn new(target: String, log: &DialLog) -> Self {
        SimDialer {
            target,
            link: log.new_link(),
            log: log.clone(),
        }
    }
}

impl Dialer for SimDialer {
    fn dial(&self) -> BoxFuture<'static, std::io::Result<BoxedIo>> {
        let target = self.target.clone();
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.log.lock().dials.push(Dial {
            link: self.link,
            at,
        });
        Box::pin(async move {
            let stream = TcpStream::connect(target).await?;
            Ok(Box::new(stream) as BoxedIo)
        })
    }

    fn target(&self) -> String {
        self.target.clone()
    }

    fn keepalive(&self) -> bool {
        false
    }
}
