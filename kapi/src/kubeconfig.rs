//! Writing kubeconfig files (the client configuration `kubectl` and every client library read).

use std::fmt::Write;

/// What a kubeconfig with one cluster, one user and one context says.
#[derive(Debug, Clone, Default)]
pub struct Kubeconfig {
    /// Name of the cluster, user and context entries.
    pub name: String,
    /// Server URL, e.g. `https://127.0.0.1:8443/clusters/edge-1`.
    pub server: String,
    /// PEM of the CA that signed the server's certificate (for https).
    pub ca_pem: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
    /// Client certificate and key PEM.
    pub client_cert: Option<(String, String)>,
    /// Default namespace of the context.
    pub namespace: Option<String>,
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// YAML-quotes a string value.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Kubeconfig {
    /// The kubeconfig as YAML.
    pub fn to_yaml(&self) -> String {
        let n = q(&self.name);
        let mut y = String::new();
        let _ = writeln!(
            y,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {n}\n  cluster:\n    server: {}",
            q(&self.server)
        );
        if let Some(ca) = &self.ca_pem {
            let _ = writeln!(y, "    certificate-authority-data: {}", b64(ca));
        }
        let _ = writeln!(y, "users:\n- name: {n}\n  user:");
        match (&self.token, &self.client_cert) {
            (None, None) => y.push_str("    {}\n"),
            _ => {
                if let Some(t) = &self.token {
                    let _ = writeln!(y, "    token: {}", q(t));
                }
                if let Some((c, k)) = &self.client_cert {
                    let _ = writeln!(
                        y,
                        "    client-certificate-data: {}\n    client-key-data: {}",
                        b64(c),
                        b64(k)
                    );
                }
            }
        }
        let _ = writeln!(
            y,
            "contexts:\n- name: {n}\n  context:\n    cluster: {n}\n    user: {n}"
        );
        if let Some(ns) = &self.namespace {
            let _ = writeln!(y, "    namespace: {}", q(ns));
        }
        let _ = writeln!(y, "current-context: {n}");
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(b64(""), "");
        assert_eq!(b64("f"), "Zg==");
        assert_eq!(b64("fo"), "Zm8=");
        assert_eq!(b64("foo"), "Zm9v");
        assert_eq!(b64("foobar"), "Zm9vYmFy");
    }

    #[test]
    fn yaml_shape() {
        let k = Kubeconfig {
            name: "sim".into(),
            server: "https://127.0.0.1:6443".into(),
            ca_pem: Some("CA".into()),
            token: Some("t\"1".into()),
            ..Kubeconfig::default()
        };
        let y = k.to_yaml();
        assert!(y.contains("server: \"https://127.0.0.1:6443\""));
        assert!(y.contains("certificate-authority-data: Q0E="));
        assert!(y.contains("token: \"t\\\"1\""));
        assert!(y.contains("current-context: \"sim\""));
    }
}
