//! Certificates made at test time with rcgen (no private key is ever committed): a CA per
//! cluster, and per member a certificate for 127.0.0.1 usable as TLS server and client.

use anyhow::Context;
use pgvigil::launch::ClusterSpec;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::Path;

/// A certificate authority with its key.
pub struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Ca { pem, issuer: Issuer::new(params, key) })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `sans` (IP addresses or DNS names), for server and client auth.
    pub fn issue(&self, common_name: &str, sans: &[&str]) -> anyhow::Result<Leaf> {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        Ok(Leaf { cert: self.sign(&params, &key)?, key: key.serialize_pem() })
    }

    /// Sign a certificate made of `params` for `key`; PEM.
    pub fn sign(&self, params: &CertificateParams, key: &KeyPair) -> anyhow::Result<String> {
        Ok(params.signed_by(key, &self.issuer)?.pem())
    }
}

impl Leaf {
    /// Write the certificate and the key (mode 0600, also when the key file was there).
    pub fn write(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::write(cert, &self.cert).with_context(|| format!("write {}", cert.display()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(key)
            .with_context(|| format!("write {}", key.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(self.key.as_bytes())?;
        Ok(())
    }
}

/// Write the files a spec with `tls` points at: the CA, every member's certificate and key, and
/// the launcher's client certificate. Returns the CA (to issue more).
pub fn write_cluster(spec: &ClusterSpec) -> anyhow::Result<Ca> {
    let ca = Ca::new("pgvigil test CA")?;
    let dir = spec.ca_file().parent().map(Path::to_path_buf).context("no tls dir")?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(spec.ca_file(), ca.pem())?;
    for m in &spec.members {
        ca.issue(&m.name, &["127.0.0.1", "localhost"])?.write(&spec.cert_file(&m.name), &spec.key_file(&m.name))?;
    }
    let (cert, key) = spec.client_cert_files();
    ca.issue("pgvigil operator", &["127.0.0.1"])?.write(&cert, &key)?;
    Ok(ca)
}
