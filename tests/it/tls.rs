//! The agent behind TLS on a private CA: the real agent binary (a child
//! process, so `SSL_CERT_FILE` stays out of this test binary) enrolls over
//! https and connects over wss when the host trusts the CA, as the OS store
//! says; when it does not, both fail at once with a certificate error.
//! A TLS-terminating proxy made here fronts the real server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::common::*;

/// A CA (its PEM, for a trust store) and a server certificate it signed for
/// 127.0.0.1 and localhost, ready to serve.
struct PrivateCa {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn private_ca(name: &str) -> PrivateCa {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "restic-manager test");
    let cert = leaf.signed_by(&key, &issuer).unwrap();

    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    PrivateCa {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

/// Terminates TLS on 127.0.0.1 and passes the bytes on to `backend` (the
/// server's plain HTTP port); returns its `https://` URL. Runs until the
/// test's runtime ends.
async fn tls_front(config: Arc<rustls::ServerConfig>, backend: SocketAddr) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    format!("https://{addr}")
}

fn backend(app: &TestApp) -> SocketAddr {
    app.running.as_ref().expect("server running").addr
}

/// The agent binary with only `ca_file` as its trust store (rustls-native-certs
/// reads `SSL_CERT_FILE` instead of the system's certificates when it is set).
fn agent_cmd(ca_file: &Path) -> Command {
    let mut cmd = Command::new(agent_binary());
    cmd.env("SSL_CERT_FILE", ca_file)
        .env_remove("SSL_CERT_DIR")
        .env_remove("RM_AGENT_TOKEN")
        .env_remove("RM_AGENT_SERVER")
        .env_remove("RM_AGENT_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

async fn enroll_through(
    ca_file: &Path,
    url: &str,
    token: &str,
    config: &Path,
) -> std::process::Output {
    let mut cmd = agent_cmd(ca_file);
    cmd.args(["enroll", "--server", url, "--token", token, "--config"])
        .arg(config);
    tokio::task::spawn_blocking(move || cmd.output().expect("running the agent"))
        .await
        .unwrap()
}

/// Starts `agent run`, its stderr going to `log`.
fn run_agent(ca_file: &Path, config: &Path, log: &Path) -> ChildGuard {
    let mut cmd = agent_cmd(ca_file);
    cmd.args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    ChildGuard::new(cmd.spawn().expect("starting the agent"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_trusts_a_private_ca_enrolls_over_https_and_connects_over_wss() {
    let app = TestApp::spawn().await;
    let ca = private_ca("rm test CA");
    let url = tls_front(ca.server.clone(), backend(&app)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.ca_pem);
    let config = dir.path().join("agent.toml");
    let (id, token) = app.add_host_direct("tls-1").await;

    let out = enroll_through(&ca_file, &url, &token, &config).await;
    assert!(
        out.status.success(),
        "enroll over https failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = agent::config::AgentConfig::load(&config).unwrap();
    assert_eq!(cfg.host_id, id);
    assert_eq!(cfg.server_url, url);

    let log = dir.path().join("agent.log");
    let _agent = run_agent(&ca_file, &config, &log);
    // Online means the server took the hello that came over wss.
    eventually("the agent online over wss", || async {
        app.host_json(id).await["online"]
            .as_bool()
            .unwrap_or(false)
            .then_some(())
    })
    .await;
    eventually("the agent saw its hello acknowledged", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("hello acknowledged")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_does_not_trust_the_ca_fails_with_a_certificate_error() {
    let app = TestApp::spawn().await;
    let ca = private_ca("rm test CA");
    let url = tls_front(ca.server.clone(), backend(&app)).await;
    let dir = tempfile::tempdir().unwrap();
    // A trust store that holds some other CA only.
    let other = write(dir.path(), "other.pem", &private_ca("another CA").ca_pem);
    let config = dir.path().join("agent.toml");

    let (_, token) = app.add_host_direct("tls-2").await;
    let out = enroll_through(&other, &url, &token, &config).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "enroll succeeded: {stderr}");
    assert!(
        stderr.contains("certificate"),
        "enroll should say the certificate is not trusted: {stderr}"
    );
    assert!(!config.exists());

    // A host enrolled some other way, its agent pointed at the https front.
    let mut cfg = app.enrolled_host("tls-3").await;
    cfg.server_url = url;
    cfg.save(&config).unwrap();
    let log = dir.path().join("agent.log");
    let _agent = run_agent(&other, &config, &log);
    let said = eventually("the agent reports the untrusted certificate", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("cannot connect to the server"))
            .map(str::to_string)
    })
    .await;
    assert!(
        said.contains("invalid peer certificate"),
        "expected a certificate error, got: {said}"
    );
    assert_eq!(app.host_json(cfg.host_id).await["online"], false);
}
