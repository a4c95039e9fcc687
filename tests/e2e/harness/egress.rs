//! What the egress-rule tests share: a test CA with a server certificate
//! for the host servers the rules name, a shell in the container as the
//! agent's user, and the check that a brokered secret reached no process
//! environment there.

use super::engine::docker;
use std::path::Path;

/// A CA (`ca.pem`, for the daemon's `egress.extra_ca_file`) and a server
/// certificate for `names` signed by it (`cert.pem`, `key.pem`), in `dir`.
pub fn server_certificates(dir: &Path, ca_name: &str, names: &[&str]) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// The daemon config the egress tests share: the host server's `port`
/// allowed, loopback reachable, `names` resolved to it, and the test CA in
/// `dir` trusted upstream. Credentials and rules follow it.
pub fn host_server_config(port: u16, names: &[&str], dir: &Path) -> String {
    let resolve: String = names
        .iter()
        .map(|n| format!("\"{n}\" = \"127.0.0.1\"\n"))
        .collect();
    format!(
        r#"
[proxy]
allowed_ports = [{port}, 443, 80]
allow_private_cidrs = ["127.0.0.0/8"]

[proxy.resolve]
{resolve}
[egress]
extra_ca_file = "{dir}/ca.pem"
"#,
        dir = dir.display()
    )
}

/// `sh -c CMD` inside the container as the agent's user: the exit code
/// and stdout then stderr.
pub fn agent_shell(container: &str, cmd: &str) -> (i32, String) {
    let out = docker(&["exec", "--user", "1000:1000", container, "sh", "-c", cmd]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Panics unless `secret` is in no process environment the agent's user
/// can read in the container, and at least the agent's and the shell's
/// were read (all run as that user).
pub fn assert_secret_in_no_environment(container: &str, secret: &str) {
    let (code, found) = agent_shell(
        container,
        &format!(
            "n=0; for e in /proc/[0-9]*/environ; do \
               if tr '\\0' '\\n' < $e > /tmp/env.$$ 2>/dev/null; then n=$((n+1)); grep -l '{secret}' /tmp/env.$$; fi; \
             done 2>/dev/null; rm -f /tmp/env.$$; echo read=$n"
        ),
    );
    assert_eq!(code, 0, "{found}");
    let read: usize = found
        .trim()
        .strip_prefix("read=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the secret reached a process environment: {found}"));
    assert!(
        read >= 2,
        "the agent's and the shell's environments were read: {found}"
    );
}
