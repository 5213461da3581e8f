//! The hybrid vsock transport (`vsock-mux:PATH:PORT`) against an in-test Unix
//! socket server that speaks the Firecracker / vhost-device-vsock handshake
//! and then splices to the enclave.

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cocoon_attestation::Policy;
use cocoon_client::{ChatOptions, Worker};
use cocoon_tests::echo_engine::MODEL_ID;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Serves the multiplexer socket; records each CONNECT line it got.
fn start_mux(mux: PathBuf, enclave: PathBuf, reply_ok: bool) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = UnixListener::bind(&mux).unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (enclave, log) = (enclave.clone(), log.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                log.lock().unwrap().push(line.clone());
                let mut stream = reader.into_inner();
                if !reply_ok || line != "CONNECT 4000\n" {
                    let _ = stream.write_all(b"NOPE\n").await;
                    return;
                }
                stream.write_all(b"OK 1073741824\n").await.unwrap();
                let mut upstream = UnixStream::connect(&enclave).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
            });
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_reaches_the_enclave_through_hybrid_vsock() {
    let dir = temp_dir("mux");
    let sock = dir.join("enclave.sock");
    let _enclave = start_enclave(&sock, 0);
    let mux = dir.join("vsock.sock");
    let seen = start_mux(mux.clone(), sock, true);
    let (_host, url) = start_host(&format!("vsock-mux:{}:4000", mux.display()), &[]);
    let worker = Worker::attest(&url, &Policy::insecure_simulated(), true).await.unwrap();
    let opts = ChatOptions { model: MODEL_ID.into(), ..Default::default() };
    assert_eq!(worker.chat("over hybrid vsock", &opts, |_| {}).await.unwrap().text, "VSOCK HYBRID OVER ");
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 2 && seen.iter().all(|l| l == "CONNECT 4000\n"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_is_a_503_that_names_no_host_detail() {
    let dir = temp_dir("muxbad");
    let mux = dir.join("vsock.sock");
    start_mux(mux.clone(), dir.join("nothing.sock"), false);
    let (_host, url) = start_host(&format!("vsock-mux:{}:4000", mux.display()), &[]);
    let (status, body) = get(&url, "/v1/attestation").await;
    assert_eq!(status, 503, "{body}");
    // The handshake's detail goes to the shim's log; the client learns nothing of the host.
    assert_eq!(body, "enclave unavailable; retry later\n");
    assert!(!body.contains(&dir.display().to_string()) && !body.contains("NOPE"), "{body}");
}
