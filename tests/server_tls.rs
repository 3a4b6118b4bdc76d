//! TLS: a round-trip with a certificate made by a test CA, and refusals of certificates the client does
//! not trust.

mod common;

use bvfs_engine::remote::{RemoteConfig, connect};
use bvfs_proto::v1;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, and a server certificate for 127.0.0.1/localhost signed by it.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_cert =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap()
                .signed_by(&server_key, &ca)
                .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        // An unrelated CA the server certificate does not chain to.
        let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other =
            CertifiedIssuer::self_signed(other_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("other-ca.pem"), other.pem()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[tokio::test]
async fn tls_round_trip_and_refused_certificates() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let token = add_user(data.path(), "alice", "laptop");
    let server = ServerProcess::start(
        data.path(),
        &[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
        ],
    );
    assert!(server.url.starts_with("https://"), "{}", server.url);

    // Trusting the private CA: the round-trip works.
    let mut config = RemoteConfig::new(&server.url, &token);
    config.ca_cert = Some(pki.path("ca.pem").into());
    let mut api = connect(&config)
        .await
        .expect("TLS connect with the private CA");
    let hello = api.hello(v1::HelloRequest {}).await.unwrap().into_inner();
    assert_eq!(hello.tenant, "alice");
    commit(&mut api, vec![mkdir(&new_id(), &root(), "over-tls")])
        .await
        .unwrap();

    // Trusting another CA, or only the system roots: the certificate is refused.
    let mut wrong_ca = RemoteConfig::new(&server.url, &token);
    wrong_ca.ca_cert = Some(pki.path("other-ca.pem").into());
    let system_roots = RemoteConfig::new(&server.url, &token);
    for config in [wrong_ca, system_roots] {
        match connect(&config).await {
            Err(e) => assert!(e.to_string().contains("cannot connect"), "{e}"),
            Ok(mut api) => {
                let err = api.hello(v1::HelloRequest {}).await.unwrap_err();
                assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
            }
        }
    }

    // Plaintext against a TLS server fails too.
    let plain_url = server.url.replacen("https://", "http://", 1);
    if let Ok(mut api) = connect(&RemoteConfig::new(&plain_url, &token)).await {
        assert!(api.hello(v1::HelloRequest {}).await.is_err());
    }
}

#[tokio::test]
async fn missing_certificate_files_are_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let out = bvfs()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
            "--data",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the TLS certificate"),
        "{stderr}"
    );
}
