//! Certificates for the TLS tests, made at test time (no key is checked in): [`TestCa`], a
//! certificate authority of the test's own, issues server certificates for `localhost` and
//! `127.0.0.1` into a directory of the test's own, where curl and Chromium find the CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};

/// A test CA and the directory its files are written to.
pub struct TestCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate (PEM), for `curl --cacert`.
    pub ca_pem: PathBuf,
}

impl TestCa {
    /// A CA with a fresh key, in a fresh directory named after `name` (and this process).
    pub fn new(name: &str) -> TestCa {
        let dir = std::env::temp_dir().join(format!("halley-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Halley test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, cert.pem()).unwrap();
        TestCa {
            dir,
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server certificate for `localhost` and `127.0.0.1` with this common name and serial:
    /// its chain (PEM) and its key (PEM).
    pub fn issue(&self, common_name: &str, serial: u64) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Issues a certificate (as [`TestCa::issue`]) and writes it to `cert.pem` and `key.pem`
    /// in the directory, each by a rename, so that a reader sees the old file or the new one;
    /// returns their paths.
    pub fn install(&self, common_name: &str, serial: u64) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(common_name, serial);
        let (cert_path, key_path) = self.paths();
        replace(&cert_path, cert.as_bytes());
        replace(&key_path, key.as_bytes());
        (cert_path, key_path)
    }

    /// Where [`TestCa::install`] writes: `cert.pem` and `key.pem`.
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("cert.pem"), self.dir.join("key.pem"))
    }
}

/// Writes `path` by a rename of a file written beside it.
pub fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
