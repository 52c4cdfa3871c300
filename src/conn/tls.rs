//! TLS for the gRPC port, terminated by the gateway's own accept loop.
//!
//! tonic 0.14 would terminate TLS itself (`Server::tls_config` also applies
//! to `serve_with_incoming`), but then the connection the gateway wraps lies
//! under TLS and sees only ciphertext: it could not tell when the client's
//! HTTP/2 preface and SETTINGS have arrived. So the handshake happens here,
//! with what tonic's acceptor configures: rustls with aws-lc-rs, ALPN `h2`,
//! and, with a client CA, a client certificate required and verified.

use std::sync::Arc;

use tokio_rustls::{
    rustls::{
        crypto::aws_lc_rs,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    TlsAcceptor,
};

/// The contents of the PEM files named by `[gateway.tls]`.
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

/// The acceptor for `files`, or one line naming the setting that is wrong.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or("gateway.tls.cert_file holds no PEM certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&files.key_pem)
        .map_err(|_| "gateway.tls.key_file holds no PEM private key")?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                let ca = ca.map_err(|_| "gateway.tls.client_ca_file is not PEM")?;
                roots
                    .add(ca)
                    .map_err(|e| format!("gateway.tls.client_ca_file: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| format!("gateway.tls.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("gateway.tls.cert_file and key_file: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
