//! Certificates from a certbot store with certbot's own permissions (`archive/` and `live/`
//! 0700, keys 0600, all root's), delivered to each sidecar alone: the sidecar (uid 65534) gets its
//! own chain and key in a volume of its own, never the store and never another site's key; a
//! renewal in the store reaches the running sidecar; the volume goes with the sidecar.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use harness::certdir::CertsDir;
use harness::docker::{
    containers_with_label, docker, docker_ok, host_port, images, poll, unique_name, TestRun,
    LIFECYCLE_DEADLINE,
};
use harness::issuer::{Issued, Spec, TestCa};
use harness::spawner::Spawner;

/// A demo container opted in under `prefix` with `hostname`, publishing 8443. Returns its ID.
fn target(run: &TestRun, prefix: &str, hostname: &str) -> String {
    let name = unique_name("app");
    let labels = [
        format!("{prefix}.proxy-image={}", images().sidecar),
        format!("{prefix}.hostname={hostname}"),
    ];
    run.container(
        &name,
        &images().demo,
        &[
            "-p",
            "127.0.0.1::8443",
            "--label",
            &labels[0],
            "--label",
            &labels[1],
        ],
        &[],
    )
}

/// The running sidecar of a target.
fn sidecar_of(prefix: &str, target_id: &str) -> String {
    poll(LIFECYCLE_DEADLINE, "a running sidecar", || {
        containers_with_label(&format!("{prefix}.sidecar-for={target_id}"))
            .into_iter()
            .find(|c| c.running)
            .map(|c| c.id)
    })
    .0
}

/// The leaf certificate served on 127.0.0.1:`port` for `sni`, as PEM (`openssl s_client`).
fn served_pem(port: u16, sni: &str) -> Option<String> {
    let out = Command::new("timeout")
        .args(["5", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", sni])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    Some(text[start..end].to_string())
}

fn waits_for_served(port: u16, sni: &str, want: &Issued, what: &str) {
    let want = want.cert_pem.trim().to_string();
    poll(LIFECYCLE_DEADLINE, what, || {
        (served_pem(port, sni)? == want).then_some(())
    });
}

/// certbot's permissions: `archive/`, `live/` and every directory below 0700, keys 0600.
fn as_certbot_leaves_it(certs: &CertsDir) {
    let chmod = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    for top in ["archive", "live"] {
        let top = certs.path().join(top);
        chmod(&top, 0o700);
        for entry in std::fs::read_dir(&top).expect("list") {
            let dir = entry.expect("entry").path();
            chmod(&dir, 0o700);
            for file in std::fs::read_dir(&dir).expect("list") {
                let file = file.expect("entry").path();
                let name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if name.starts_with("privkey") && !file.is_symlink() {
                    chmod(&file, 0o600);
                }
            }
        }
    }
}

/// A file of a volume: (name, uid, mode, bytes).
type VolumeFile = (String, u32, u32, Vec<u8>);

/// The volume at `/certs` of a container and its files, read on the host.
fn volume_files(container: &str) -> (String, Vec<VolumeFile>) {
    let format = "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}} {{.Source}}\n{{end}}";
    let mounts = docker_ok(&["inspect", "-f", format, container]);
    let lines: Vec<&str> = mounts.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "one mount, the certificate volume: {mounts}"
    );
    let fields: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(
        (fields[0], fields[2]),
        ("volume", "/certs"),
        "a volume at /certs, not the store: {mounts}"
    );
    let mut files: Vec<_> = std::fs::read_dir(fields[3])
        .expect("read the volume on the host")
        .map(|e| {
            let e = e.expect("entry");
            let meta = e.metadata().expect("metadata");
            (
                e.file_name().to_string_lossy().to_string(),
                meta.uid(),
                meta.mode() & 0o777,
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    files.sort();
    (fields[1].to_string(), files)
}

#[test]
fn a_certbot_store_with_its_own_permissions_is_delivered_per_sidecar_and_renewals_follow() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let ca = TestCa::new("delivery test CA");
    let certs = CertsDir::new();
    let a1 = ca.issue(&Spec::server(&["a.test"]).valid((2025, 1, 1), (2031, 1, 2)));
    let b1 = ca.issue(&Spec::server(&["b.test"]).valid((2025, 1, 1), (2031, 1, 2)));
    certs.certbot("a.test", &a1);
    certs.certbot("b.test", &b1);
    as_certbot_leaves_it(&certs);
    let dir = certs.path().to_str().expect("utf-8").to_string();
    let _spawner = Spawner::start(&prefix, &["--certs-from", &dir, "--resync-interval", "1s"]);

    let a = target(&run, &prefix, "a.test");
    let b = target(&run, &prefix, "b.test");
    let (port_a, port_b) = (host_port(&a, 8443), host_port(&b, 8443));
    waits_for_served(
        port_a,
        "a.test",
        &a1,
        "a.test's certificate, served by a sidecar running as 65534",
    );
    waits_for_served(port_b, "b.test", &b1, "b.test's certificate");

    let sidecar_a = sidecar_of(&prefix, &a);
    let (volume, files) = volume_files(&sidecar_a);
    let names: Vec<(&str, u32, u32)> = files
        .iter()
        .map(|(n, uid, mode, _)| (n.as_str(), *uid, *mode))
        .collect();
    assert_eq!(
        names,
        [
            ("fullchain.pem", 65534, 0o444),
            ("privkey.pem", 65534, 0o400)
        ],
        "only its own pair, owned by the sidecar's user"
    );
    assert_eq!(files[1].3, a1.key_pem.as_bytes(), "a.test's key");
    assert!(
        !files.iter().any(|f| f.3 == b1.key_pem.as_bytes()),
        "never another site's key"
    );
    let store_key = certs.path().join("archive/a.test/privkey1.pem");
    let meta = std::fs::metadata(&store_key).expect("store key");
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o600),
        "the store keeps certbot's permissions"
    );

    // A renewal as certbot makes it: new archive files, live/ links re-pointed.
    let a2 = ca.issue(&Spec::server(&["a.test"]).valid((2025, 6, 1), (2032, 6, 1)));
    certs.certbot_renew("a.test", 2, &a2);
    as_certbot_leaves_it(&certs);
    waits_for_served(
        port_a,
        "a.test",
        &a2,
        "the renewed certificate, without a restart",
    );
    assert_eq!(
        sidecar_of(&prefix, &a),
        sidecar_a,
        "the same sidecar serves the renewal"
    );

    // The volume goes with its sidecar.
    docker_ok(&["rm", "-f", &a]);
    poll(
        LIFECYCLE_DEADLINE,
        "the sidecar's volume removed with it",
        || {
            let gone = !docker(&["volume", "inspect", &volume]).status.success();
            gone.then_some(())
        },
    );
}
