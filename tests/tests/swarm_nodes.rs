//! The spawner on a three-node swarm (harness::swarm): one manager and two workers, each a
//! private engine in a network namespace of its own on a private LAN, with an overlay network
//! between them. The documented multi-node stack file (`docs/swarm/nodes.yml`) is deployed as
//! is: every node's replica is served with the operator's certificate from a Swarm secret,
//! services call each other across nodes with identities of one CA from a Swarm secret, and a
//! worker's engine stopping and starting again leaves nothing behind on any node.
//!
//! Services are published in `mode: host` and reached on each node's own address from inside
//! that node's namespace: the routing mesh needs IPVS, which this machine's kernel lacks.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::docker::{poll, unique_name};
use harness::dockerd::PrivateEngine;
use harness::issuer::{Spec, TestCa};
use harness::swarm::SwarmBed;

/// Generous bound for what only has to happen: a swarm scheduling tasks on a loaded CI machine,
/// vfs copying image layers, an engine restarting.
const SWARM_STEP: Duration = Duration::from_secs(120);
/// The web service's hostname (its certificate from a secret).
const WEB_HOST: &str = "www.swarm.test";
/// The port each node publishes its web replica on.
const HTTPS_PORT: &str = "9443";
/// The stack's name.
const STACK: &str = "tls";
/// The identity trust domain.
const DOMAIN: &str = "swarm.internal";

/// What a deployed stack is made of, for the checks.
struct Deployed {
    prefix: String,
    /// The fingerprint (SHA-256 of the DER, lowercase hex) of the web certificate in the secret.
    web_fingerprint: String,
    deployed_at: Instant,
}

/// Makes the secrets (web pair of a test CA, identity CA made as the spawner makes its own) and
/// deploys `docs/swarm/nodes.yml` as a user would, under a fresh label prefix.
fn deploy(bed: &SwarmBed, api_replicas: usize) -> Deployed {
    let m = bed.manager();
    let dir = std::env::temp_dir().join(unique_name("swarm-secrets"));
    std::fs::create_dir_all(&dir).expect("secrets dir");
    let ca = TestCa::new("swarm web CA");
    let web = ca.issue(&Spec::server(&[WEB_HOST]));
    let (cert, key) = web.write_to(&dir, "web");
    let identity_dir = dir.join("identity");
    let domain = DOMAIN.parse().expect("domain");
    spawner::IdentityCa::load_or_create(&identity_dir, &domain).expect("make the identity CA");
    for (name, file) in [
        ("tls-web-fullchain", cert.clone()),
        ("tls-web-privkey", key),
        ("tls-identity-ca", identity_dir.join(spawner::CA_CERT_FILE)),
        (
            "tls-identity-ca-key",
            identity_dir.join(spawner::CA_KEY_FILE),
        ),
    ] {
        m.docker_ok(&["secret", "create", name, &file.display().to_string()]);
    }
    let web_fingerprint = fingerprint_of_pem(&std::fs::read(&cert).expect("read cert"));
    let _ = std::fs::remove_dir_all(&dir);
    let prefix = unique_name("t");
    let deployed_at = Instant::now();
    let socket = Path::new(harness::dockerd::NODE_DIR).join("docker.sock");
    let api_replicas = api_replicas.to_string();
    m.stack_deploy(
        "docs/swarm/nodes.yml",
        STACK,
        &[
            ("TLS_SIDECAR_TAG", "nodes"),
            ("TLS_SIDECAR_LABEL_PREFIX", &prefix),
            ("DOCKER_SOCKET", &socket.display().to_string()),
            ("WEB_HOSTNAME", WEB_HOST),
            ("API_REPLICAS", &api_replicas),
            ("HTTPS_PORT", HTTPS_PORT),
            ("IDENTITY_DOMAIN", DOMAIN),
        ],
    );
    Deployed {
        prefix,
        web_fingerprint,
        deployed_at,
    }
}

/// SHA-256 of the first certificate of a PEM file, lowercase hex.
fn fingerprint_of_pem(pem: &[u8]) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .expect("a certificate")
        .expect("valid PEM");
    harness::backend::sha256_hex(&der)
}

/// The SHA-256 fingerprint of the certificate node `i` serves on its published port for
/// `WEB_HOST`, and the response body; `None` while nothing answers there.
fn served_on(bed: &SwarmBed, i: usize) -> Option<(String, String)> {
    let addr = bed.addr(i);
    let resolve = format!("{WEB_HOST}:{HTTPS_PORT}:{addr}");
    let url = format!("https://{WEB_HOST}:{HTTPS_PORT}/");
    // `-w %{certs}` needs curl 7.88; the leaf is the first certificate it prints.
    let out = bed.curl_on(i, &["-k", "--resolve", &resolve, "-w", "\n%{certs}", &url])?;
    let (body, certs) = out.split_once("\n-----BEGIN CERTIFICATE-----")?;
    let pem = format!("-----BEGIN CERTIFICATE-----{certs}");
    Some((fingerprint_of_pem(pem.as_bytes()), body.to_string()))
}

/// Whether every running task of `service` on `engine` has exactly one running sidecar of
/// `prefix` answering TLS in its namespace.
fn tasks_served(engine: &PrivateEngine, prefix: &str, service: &str) -> bool {
    engine.tasks_of(service).iter().all(|task| {
        let sidecars = engine.docker_ok(&[
            "ps",
            "-q",
            "--filter",
            &format!("label={prefix}.sidecar-for={task}"),
        ]);
        sidecars.lines().count() == 1 && tls_answers_in(engine, task)
    })
}

/// Whether a TLS server completes a handshake on 127.0.0.1:8443 in a task's namespace (from
/// the client's side: a sidecar that then refuses a client without an identity counts, as api's
/// does).
fn tls_answers_in(engine: &PrivateEngine, task: &str) -> bool {
    let Some(mut cmd) = engine.in_netns_of(task, "timeout") else {
        return false;
    };
    let out = cmd
        .args([
            "5",
            "openssl",
            "s_client",
            "-brief",
            "-connect",
            "127.0.0.1:8443",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    out.is_ok_and(|o| {
        String::from_utf8_lossy(&o.stderr).contains("CONNECTION ESTABLISHED")
            || String::from_utf8_lossy(&o.stdout).contains("CONNECTION ESTABLISHED")
    })
}

/// Nothing left behind on one engine: every sidecar of `prefix` (running or not) belongs to a
/// running task, and every volume is mounted by some container.
fn leftovers(engine: &PrivateEngine, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let running: BTreeSet<String> = engine
        .docker_ok(&["ps", "-q", "--no-trunc"])
        .lines()
        .map(str::to_string)
        .collect();
    let sidecars = engine.docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={prefix}.managed-by=spawner"),
        "--format",
        &format!("{{{{.Names}}}} {{{{.Label \"{prefix}.sidecar-for\"}}}}"),
    ]);
    for line in sidecars.lines() {
        let (name, target) = line.split_once(' ').unwrap_or((line, ""));
        if !running.contains(target) {
            found.push(format!("sidecar {name} of {target}, which is not running"));
        }
    }
    let mounted: BTreeSet<String> = engine
        .docker_ok(&["ps", "-aq"])
        .lines()
        .flat_map(|id| {
            engine
                .docker_ok(&[
                    "inspect",
                    "--format",
                    "{{range .Mounts}}{{.Name}} {{end}}",
                    id,
                ])
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    for volume in engine.docker_ok(&["volume", "ls", "-q"]).lines() {
        if !mounted.contains(volume) {
            found.push(format!("volume {volume}, mounted by no container"));
        }
    }
    found
}

/// Every node serves its web replica with the secret's certificate.
fn every_node_serves_web(bed: &SwarmBed, d: &Deployed) -> bool {
    (1..=bed.nodes.len()).all(|i| {
        served_on(bed, i)
            .is_some_and(|(fp, body)| fp == d.web_fingerprint && body.contains("GET /"))
    })
}

/// `curl http://127.0.0.1:9001/` in a task's namespace: web's relay to api.
fn call_api_from(engine: &PrivateEngine, task: &str) -> Option<String> {
    let out = engine
        .in_netns_of(task, "curl")?
        .args(["-sS", "--max-time", "5", "http://127.0.0.1:9001/who"])
        .output()
        .ok()?;
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && body.contains("GET /who")).then_some(body)
}

/// The node (1-based) running the one task of `service`, and that task.
fn where_is(bed: &SwarmBed, service: &str) -> Option<(usize, String)> {
    (1..=bed.nodes.len()).find_map(|i| bed.node(i).tasks_of(service).pop().map(|t| (i, t)))
}

#[test]
fn a_stack_across_three_nodes_serves_each_replica_and_identity_crosses_nodes() {
    let bed = SwarmBed::start(3, "nodes");
    let d = deploy(&bed, 1);
    let web = format!("{STACK}_web");
    let api = format!("{STACK}_api");

    // Every node's own replica, on its own published port, with the operator's certificate
    // that reached it through the Raft store.
    let (_, took) = poll(
        SWARM_STEP,
        "every node serves web with the secret's certificate",
        || every_node_serves_web(&bed, &d).then_some(()),
    );
    eprintln!(
        "swarm_nodes: 3 web replicas served on their nodes {:?} after the deploy ({took:?} polling)",
        d.deployed_at.elapsed()
    );
    for i in 1..=3 {
        assert_eq!(
            bed.node(i).tasks_of(&web).len(),
            1,
            "one web task on node {i}"
        );
    }

    // Identity across nodes: web's task on another node than api's calls api through both
    // sidecars over the overlay network; api's app is told who called.
    let ((api_node, _), _) = poll(SWARM_STEP, "api's task running", || where_is(&bed, &api));
    let caller_node = if api_node == 1 { 2 } else { 1 };
    let caller = bed
        .node(caller_node)
        .tasks_of(&web)
        .pop()
        .expect("web task");
    let (body, took) = poll(SWARM_STEP, "web on another node calls api", || {
        call_api_from(bed.node(caller_node), &caller)
    });
    eprintln!(
        "swarm_nodes: web on node {caller_node} called api on node {api_node} ({took:?} polling)"
    );
    let san = body
        .lines()
        .find_map(|l| l.strip_prefix("x-client-cert-san: "))
        .unwrap_or_default();
    assert!(
        san.contains(&format!("spiffe://{DOMAIN}/web")),
        "api's app must be told the caller is web: {body}"
    );

    // A third service, also with an identity of the same CA, calling api: refused in the
    // handshake (api admits web only), so its app gets no answer.
    let m = bed.manager();
    let intruder = format!("{STACK}_intruder");
    m.docker_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        &intruder,
        "--network",
        &format!("{STACK}_default"),
        "--container-label",
        &format!("{}.proxy-image={}", d.prefix, bed.images().sidecar),
        "--container-label",
        &format!("{}.upstreams=9001=api:8443", d.prefix),
        "--constraint",
        &format!("node.hostname==node{caller_node}"),
        &bed.images().demo,
    ]);
    let (task, _) = poll(
        SWARM_STEP,
        "the intruder's task served by its sidecar",
        || {
            let t = bed.node(caller_node).tasks_of(&intruder).pop()?;
            tasks_served(bed.node(caller_node), &d.prefix, &intruder).then_some(t)
        },
    );
    // Its relay is up but api refuses it in the handshake: its app gets no answer, and its
    // sidecar says why (so the call reached api's sidecar and was refused there, not lost).
    let engine = bed.node(caller_node);
    let sidecar = engine
        .docker_ok(&[
            "ps",
            "-q",
            "--filter",
            &format!("label={}.sidecar-for={task}", d.prefix),
        ])
        .lines()
        .next()
        .expect("the intruder's sidecar")
        .to_string();
    poll(
        SWARM_STEP,
        "the intruder's sidecar logging the refusal",
        || {
            assert!(
                call_api_from(engine, &task).is_none(),
                "api must refuse an identity it does not allow"
            );
            let logs = engine.docker(&["logs", &sidecar]);
            let log = String::from_utf8_lossy(&logs.stdout).into_owned()
                + &String::from_utf8_lossy(&logs.stderr);
            log.lines()
                .any(|l| {
                    l.contains("upstream call failed")
                        && l.contains("127.0.0.1:9001=api:8443")
                        && l.contains("step=handshake")
                })
                .then_some(())
        },
    );
    // ...while web on the same node still gets through.
    assert!(call_api_from(bed.node(caller_node), &caller).is_some());

    // Scale api from 3 to 9 tasks across the nodes: each new task gets its sidecar on its node.
    m.docker_ok(&["service", "scale", "--detach", &format!("{api}=3")]);
    poll(SWARM_STEP, "3 api tasks served", || {
        let n: usize = (1..=3).map(|i| bed.node(i).tasks_of(&api).len()).sum();
        (n == 3 && (1..=3).all(|i| tasks_served(bed.node(i), &d.prefix, &api))).then_some(())
    });
    let started = Instant::now();
    m.docker_ok(&["service", "scale", "--detach", &format!("{api}=9")]);
    poll(SWARM_STEP, "9 api tasks served, on every node", || {
        let per_node: Vec<usize> = (1..=3).map(|i| bed.node(i).tasks_of(&api).len()).collect();
        (per_node.iter().sum::<usize>() == 9
            && per_node.iter().all(|n| *n > 0)
            && (1..=3).all(|i| tasks_served(bed.node(i), &d.prefix, &api)))
        .then_some(())
    });
    eprintln!(
        "swarm_nodes: api scaled from 3 to 9 tasks, all served, in {:?}",
        started.elapsed()
    );
    for i in 1..=3 {
        let left = leftovers(bed.node(i), &d.prefix);
        assert!(left.is_empty(), "node {i} has leftovers: {left:?}");
    }

    // ACME across nodes is not coordinated yet: a spawner with ACME on says so, on the manager
    // of three nodes and on a worker.
    for (i, expected) in [(1, "a swarm of 3 nodes"), (2, "a swarm worker node")] {
        let name = unique_name("acme-spawner");
        bed.node(i).docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "-v",
            &format!(
                "{}/docker.sock:/var/run/docker.sock",
                harness::dockerd::NODE_DIR
            ),
            &bed.images().spawner,
            "run",
            "--label-prefix",
            &unique_name("acme"),
            "--acme-email",
            "ops@swarm.test",
            "--acme-agree-tos",
            "--acme-directory",
            "https://127.0.0.1:14000/dir",
            "--certs-from",
            "/store",
        ]);
        poll(SWARM_STEP, "the spawner warns of ACME across nodes", || {
            let logs = bed.node(i).docker(&["logs", &name]);
            let text = String::from_utf8_lossy(&logs.stderr).into_owned()
                + &String::from_utf8_lossy(&logs.stdout);
            (text.contains("is not coordinated across nodes") && text.contains(expected))
                .then_some(())
        });
        bed.node(i).docker_ok(&["rm", "-f", &name]);
    }
}

#[test]
fn a_worker_engine_stopped_and_started_leaves_nothing_behind() {
    let mut bed = SwarmBed::start(3, "nodes");
    let d = deploy(&bed, 3);
    let web = format!("{STACK}_web");
    let api = format!("{STACK}_api");
    poll(SWARM_STEP, "every node serves web", || {
        every_node_serves_web(&bed, &d).then_some(())
    });
    let before: Vec<String> = bed.node(3).tasks_of(&web);

    // Node 3's engine stops: its containers stop with it. The managers mark it down and move
    // what can move (api) to the other nodes; its web replica cannot move (one per node).
    bed.node_mut(3).stop();
    let stopped = Instant::now();
    poll(
        SWARM_STEP,
        "node 3 down, api's tasks rescheduled on nodes 1 and 2",
        || {
            let m = bed.manager();
            let down = m
                .docker_ok(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"])
                .lines()
                .any(|l| l == "node3 Down");
            let n: usize = (1..=2).map(|i| bed.node(i).tasks_of(&api).len()).sum();
            (down && n == 3 && (1..=2).all(|i| tasks_served(bed.node(i), &d.prefix, &api)))
                .then_some(())
        },
    );
    eprintln!(
        "swarm_nodes: node 3 down, api rescheduled and served in {:?}",
        stopped.elapsed()
    );

    // It starts again: its old tasks are shut down and new ones started, its spawner returns
    // and serves the new web replica; the old ones' sidecars are gone.
    let restarted = bed.node_mut(3).start_again();
    let (_, _) = poll(
        SWARM_STEP,
        "node 3 serves its new web replica again",
        || {
            let now = bed.node(3).tasks_of(&web);
            (!now.is_empty()
                && now != before
                && served_on(&bed, 3).is_some_and(|(fp, _)| fp == d.web_fingerprint))
            .then_some(())
        },
    );
    eprintln!(
        "swarm_nodes: node 3 back and serving {:?} after its engine started",
        restarted.elapsed()
    );
    poll(SWARM_STEP, "nothing left behind on any node", || {
        (1..=3)
            .all(|i| {
                leftovers(bed.node(i), &d.prefix).is_empty()
                    && tasks_served(bed.node(i), &d.prefix, &web)
            })
            .then_some(())
    });
}

/// A keep-alive HTTPS connection from node `i`'s namespace to its published port (`openssl
/// s_client`), sending a request every 200 ms from a thread; `finish` says how many requests
/// were sent and answered, and whether the connection was still open.
struct KeepAlive {
    child: std::process::Child,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
    reader: Option<std::thread::JoinHandle<usize>>,
}

impl KeepAlive {
    fn open(bed: &SwarmBed, i: usize) -> KeepAlive {
        use std::io::{BufRead, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let mut child = bed
            .on_node_command(i, "openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("{}:{HTTPS_PORT}", bed.addr(i)))
            .args(["-servername", WEB_HOST])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start openssl s_client");
        let mut stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (sent, stop) = (sent.clone(), stop.clone());
            std::thread::spawn(move || {
                let request = format!("GET /keepalive HTTP/1.1\r\nHost: {WEB_HOST}\r\n\r\n");
                while !stop.load(Ordering::Relaxed) {
                    if stdin
                        .write_all(request.as_bytes())
                        .and_then(|_| stdin.flush())
                        .is_err()
                    {
                        return;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        let reader = std::thread::spawn(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with("HTTP/1.1 200"))
                .count()
        });
        KeepAlive {
            child,
            sent,
            stop,
            writer: Some(writer),
            reader: Some(reader),
        }
    }

    /// Stops sending; waits for the last answer; returns (sent, answered, still open).
    fn finish(mut self) -> (usize, usize, bool) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        std::thread::sleep(Duration::from_secs(1));
        let open = matches!(self.child.try_wait(), Ok(None));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let answered = self.reader.take().map_or(0, |r| r.join().unwrap_or(0));
        (self.sent.load(Ordering::Relaxed), answered, open)
    }
}

#[test]
fn a_renewed_certificate_secret_reaches_every_node_without_a_dropped_connection() {
    let bed = SwarmBed::start(3, "nodes");
    let d = deploy(&bed, 1);
    poll(SWARM_STEP, "every node serves web", || {
        every_node_serves_web(&bed, &d).then_some(())
    });
    // One keep-alive connection per node through the whole rotation.
    let connections: Vec<KeepAlive> = (1..=3).map(|i| KeepAlive::open(&bed, i)).collect();

    // The renewed pair: new secrets (secrets cannot change), swapped into the spawner service
    // as docs/swarm/nodes.yml says. Swarm restarts the spawners one node at a time.
    let m = bed.manager();
    let dir = std::env::temp_dir().join(unique_name("swarm-renewed"));
    std::fs::create_dir_all(&dir).expect("dir");
    let renewed = TestCa::new("swarm web CA, renewed").issue(&Spec::server(&[WEB_HOST]));
    let (cert, key) = renewed.write_to(&dir, "web");
    let new_fingerprint = fingerprint_of_pem(&std::fs::read(&cert).expect("read cert"));
    m.docker_ok(&[
        "secret",
        "create",
        "tls-web-fullchain-2",
        &cert.display().to_string(),
    ]);
    m.docker_ok(&[
        "secret",
        "create",
        "tls-web-privkey-2",
        &key.display().to_string(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let live = format!("/certs/live/{WEB_HOST}");
    let started = Instant::now();
    m.docker_ok(&[
        "service",
        "update",
        "--detach",
        "--secret-rm",
        "tls-web-fullchain",
        "--secret-rm",
        "tls-web-privkey",
        "--secret-add",
        &format!("source=tls-web-fullchain-2,target={live}/fullchain.pem"),
        "--secret-add",
        &format!("source=tls-web-privkey-2,target={live}/privkey.pem,mode=0400"),
        &format!("{STACK}_spawner"),
    ]);
    poll(
        SWARM_STEP,
        "every node serves the renewed certificate",
        || {
            (1..=3)
                .all(|i| served_on(&bed, i).is_some_and(|(fp, _)| fp == new_fingerprint))
                .then_some(())
        },
    );
    eprintln!(
        "swarm_nodes: the renewed certificate served on all 3 nodes {:?} after the service update",
        started.elapsed()
    );
    for (i, c) in connections.into_iter().enumerate() {
        let (sent, answered, open) = c.finish();
        eprintln!(
            "swarm_nodes: node {}: {sent} requests on one connection, {answered} answered",
            i + 1
        );
        assert!(
            sent > 10,
            "node {}: too few requests were sent ({sent})",
            i + 1
        );
        assert!(
            open,
            "node {}: the connection was dropped during the rotation",
            i + 1
        );
        assert_eq!(answered, sent, "node {}: every request answered", i + 1);
    }
}

/// A CA's HTTP-01 check is answered on whichever node it lands, with nothing delivered for the
/// order: every node's sidecar answers any token with the account's thumbprint
/// (`--acme-thumbprint`). Pebble runs on the LAN (in the hub's namespace) and validates one
/// name at node 2 and another at node 3, each through that node's published port.
#[test]
fn a_cas_http01_check_is_answered_on_whichever_node_it_lands() {
    use crate::spawner::acme::pebble::{account, assert_issued_for, issue, thumbprint};
    use harness::pebble::Pebble;
    use harness::wait::within;
    use instant_acme::ChallengeType;

    let bed = SwarmBed::start(3, "nodes");
    let names = [("two.swarm.test", 2), ("three.swarm.test", 3)];
    let addrs: Vec<(String, String)> = names
        .iter()
        .map(|(name, node)| (name.to_string(), bed.addr(*node)))
        .collect();
    let (to_nodes, from_ca) = std::sync::mpsc::channel::<(String, u16)>();
    let (go, nodes_ready) = std::sync::mpsc::channel::<()>();
    let ca = bed.on_lan(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let pebble = Pebble::start().await;
            let account = account(&pebble).await;
            let thumbprint = thumbprint(&account).await;
            to_nodes
                .send((thumbprint, pebble.http_port()))
                .expect("send the thumbprint");
            nodes_ready
                .recv_timeout(SWARM_STEP)
                .expect("the nodes' sidecars up");
            for (name, addr) in addrs {
                pebble.point(&name, &addr).await;
                let chain = within(
                    Duration::from_secs(60),
                    &format!("issuance for {name}, validated at {addr}"),
                    issue(&pebble, &account, &name, ChallengeType::Http01, |_, _| {}),
                )
                .await;
                assert_issued_for(&pebble, &chain, &name);
            }
        })
    });
    let (thumbprint, http_port) = from_ca
        .recv_timeout(SWARM_STEP)
        .expect("Pebble up on the LAN");

    // One app task per worker node, publishing the validation port in host mode onto its
    // sidecar's redirect listener, and that sidecar, started by hand with the thumbprint.
    let m = bed.manager();
    let app = "acme-app";
    // A host-mode port goes through the task's docker_gwbridge, which a task on an overlay
    // network has (the engines have no default bridge).
    m.docker_ok(&["network", "create", "-d", "overlay", "acme-net"]);
    m.docker_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        app,
        "--network",
        "acme-net",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "--constraint",
        "node.role==worker",
        "--publish",
        &format!("mode=host,target=8081,published={http_port}"),
        &bed.images().demo,
    ]);
    for node in [2, 3] {
        let engine = bed.node(node);
        let (task, _) = poll(SWARM_STEP, "the app's task on its node", || {
            engine.tasks_of(app).pop()
        });
        let sidecar = engine.docker_ok(&[
            "run",
            "-d",
            "--network",
            &format!("container:{task}"),
            &bed.images().sidecar,
            "--redirect-listen",
            ":8081",
            "--acme-thumbprint",
            &thumbprint,
        ]);
        // Its answer to a token nobody delivered, through the node's published port.
        let url = format!(
            "http://{}:{http_port}/.well-known/acme-challenge/any-token",
            bed.addr(node)
        );
        let deadline = Instant::now() + SWARM_STEP;
        let body = loop {
            if let Some(body) = bed.curl_on(node, &[&url]) {
                break body;
            }
            let logs = engine.docker(&["logs", &sidecar]);
            assert!(
                Instant::now() < deadline,
                "the sidecar on node {node} does not answer at {url}: {}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(body, format!("any-token.{thumbprint}"));
    }
    go.send(()).expect("start the orders");
    ca.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
}
