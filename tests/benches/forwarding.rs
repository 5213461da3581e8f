//! `make bench`: the host shim forwarding 1 MiB streamed bodies both ways,
//! next to socat relaying the same traffic to the same upstream, and to the
//! upstream reached directly.

use std::convert::Infallible;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cocoon_tests::procs::{Proc, release_bin};
use cocoon_tests::wait::{free_port, wait_for_port};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, UnixListener};

const BODY: usize = 1 << 20;
const CHUNK: usize = 16 << 10;
const ROUNDS: usize = 40;

/// The upstream: drains the request body, answers with 1 MiB in 16 KiB frames.
async fn upstream(
    req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    let mut body = req.into_body();
    while let Some(f) = body.frame().await {
        if f.is_err() {
            break;
        }
    }
    let chunk = Bytes::from(vec![0x42u8; CHUNK]);
    let frames = IterStream((0..BODY / CHUNK).map(move |_| Ok(Frame::data(chunk.clone()))));
    Ok(Response::new(StreamBody::new(frames).boxed()))
}

/// A `Stream` over an iterator (what `futures::stream::iter` offers).
struct IterStream<I>(I);
impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

fn serve_unix(path: &Path) {
    let l = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(upstream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
}

async fn serve_tcp() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(upstream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    url
}

/// Median and total time of ROUNDS requests of 1 MiB up and 1 MiB down.
async fn measure(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> (Duration, Duration) {
    let payload = Bytes::from(vec![0x17u8; BODY]);
    let mut times = Vec::new();
    let all = Instant::now();
    for i in 0..ROUNDS + 3 {
        let req = Request::post(format!("{url}/v1/ohttp"))
            .header("content-type", "message/ohttp-req")
            .body(Full::new(payload.clone()))
            .unwrap();
        let t = Instant::now();
        let resp = client.request(req).await.unwrap();
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        let n = resp.into_body().collect().await.unwrap().to_bytes().len();
        assert_eq!(n, BODY);
        if i >= 3 {
            times.push(t.elapsed());
        }
    }
    let total = all.elapsed();
    times.sort();
    (times[times.len() / 2], total)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("cocoon-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("upstream.sock");
        serve_unix(&sock);
        let direct = serve_tcp().await;

        let shim_port = free_port();
        let _shim = Proc(
            Command::new(release_bin("cocoon-host"))
                .args(["--listen", &format!("127.0.0.1:{shim_port}"), "--enclave", &format!("unix:{}", sock.display())])
                .args(["--max-body", &(4 * BODY).to_string()])
                .env("COCOON_LOG", "warn")
                .stderr(Stdio::null())
                .spawn()
                .expect("start cocoon-host"),
        );
        let socat_port = free_port();
        let _socat = Proc(
            Command::new("socat")
                .arg(format!("TCP-LISTEN:{socat_port},bind=127.0.0.1,fork,reuseaddr"))
                .arg(format!("UNIX-CONNECT:{}", sock.display()))
                .stderr(Stdio::null())
                .spawn()
                .expect("start socat (apt-get install socat)"),
        );
        wait_for_port(shim_port, "cocoon-host");
        wait_for_port(socat_port, "socat");

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let (d_med, d_tot) = measure(&client, &direct).await;
        let (s_med, s_tot) = measure(&client, &format!("http://127.0.0.1:{shim_port}")).await;
        let (x_med, x_tot) = measure(&client, &format!("http://127.0.0.1:{socat_port}")).await;

        let rate = |t: Duration| (2 * BODY * (ROUNDS + 3)) as f64 / t.as_secs_f64() / 1e6;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("\n## Forwarding 1 MiB up + 1 MiB down per request, {ROUNDS} requests, loopback\n");
        println!("| path | throughput | median request | added latency vs direct |");
        println!("|---|---|---|---|");
        println!("| direct (no relay) | {:.0} MB/s | {:.2} ms | - |", rate(d_tot), ms(d_med));
        println!(
            "| socat TCP -> Unix | {:.0} MB/s | {:.2} ms | {:.2} ms |",
            rate(x_tot),
            ms(x_med),
            ms(x_med) - ms(d_med)
        );
        println!(
            "| cocoon-host TCP -> Unix | {:.0} MB/s | {:.2} ms | {:.2} ms |",
            rate(s_tot),
            ms(s_med),
            ms(s_med) - ms(d_med)
        );
        println!("\nshim / socat throughput ratio: {:.2}", rate(s_tot) / rate(x_tot));
        let _ = std::fs::remove_dir_all(&dir);
    });
}
