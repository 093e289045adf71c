//! A multi-node Docker Swarm on one machine, for the `swarm_nodes` tests: three (or more) private
//! engines ([`PrivateEngine::start_node`]), each in a network namespace of its own with one
//! interface on a bridge in a hub namespace, as separate hosts on one LAN (`10.231.0.N/24`),
//! joined into one swarm (node 1 the manager, the others workers). Overlay networks between them
//! use VXLAN over that LAN; the routing mesh needs IPVS, which this kernel lacks, so services are
//! published in `mode: host` and reached on each node's own address.
//!
//! Nothing touches the machine's namespace: the hub, the nodes and everything their engines make
//! live in namespaces the bed deletes on drop. Images are built once on node 1 and copied to the
//! others with `docker save` / `docker load`, as users without a registry do.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::docker::{poll, unique_name, Images};
use crate::dockerd::{ip, PrivateEngine};

/// The bed's LAN: node N (from 1) is `10.231.0.N`.
const SUBNET: &str = "10.231.0";
/// The hub's own address on the LAN, where what runs [`SwarmBed::on_lan`] is reached (a CA).
pub const HUB_ADDR: &str = "10.231.0.254";
/// How long the swarm may take to see a joined node ready.
const JOIN: Duration = Duration::from_secs(60);

/// A swarm of private engines on a private LAN; everything is removed on drop.
pub struct SwarmBed {
    /// The engines, node 1 first (index 0).
    pub nodes: Vec<PrivateEngine>,
    /// The hub namespace holding the LAN's bridge.
    hub: String,
    /// Each node's network namespace, in node order.
    netns: Vec<String>,
    images: Images,
    /// The saved images, loaded into engines (again after a restart, if need be).
    image_archive: PathBuf,
}

impl SwarmBed {
    /// `n` nodes (at least 1) joined into one swarm: node 1 the manager and leader, the others
    /// workers; the project's images, tagged `tag`, loaded on every node.
    pub fn start(n: usize, tag: &str) -> SwarmBed {
        assert!(n >= 1, "a swarm needs a node");
        let hub = unique_name("tsh");
        ip(&["netns", "add", &hub]);
        let mut bed = SwarmBed {
            nodes: Vec::new(),
            hub: hub.clone(),
            netns: Vec::new(),
            images: Images {
                sidecar: String::new(),
                spawner: String::new(),
                demo: String::new(),
            },
            image_archive: std::env::temp_dir().join(unique_name("tls-sidecar-images") + ".tar"),
        };
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{HUB_ADDR}/24"),
            "dev",
            "br0",
        ]);
        for i in 1..=n {
            let ns = unique_name("tsn");
            ip(&["netns", "add", &ns]);
            bed.netns.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // The veth's two ends are made in the two namespaces directly, so no interface is
            // ever in the machine's.
            let port = format!("p{i}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &hub,
            ]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", bed.addr(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        // Engines start in parallel: each takes a second or two.
        let started: Vec<PrivateEngine> = std::thread::scope(|s| {
            let handles: Vec<_> = bed
                .netns
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    s.spawn(move || PrivateEngine::start_node(ns, &format!("node{}", i + 1)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("start a node's engine"))
                .collect()
        });
        bed.nodes = started;
        let leader_addr = bed.addr(1);
        bed.node(1)
            .docker_ok(&["swarm", "init", "--advertise-addr", &leader_addr]);
        let token = bed
            .node(1)
            .docker_ok(&["swarm", "join-token", "-q", "worker"]);
        for i in 2..=n {
            bed.node(i).docker_ok(&[
                "swarm",
                "join",
                "--advertise-addr",
                &bed.addr(i),
                "--token",
                &token,
                &format!("{leader_addr}:2377"),
            ]);
        }
        poll(JOIN, "every node ready in the swarm", || {
            let ready = bed
                .node(1)
                .docker_ok(&["node", "ls", "--format", "{{.Status}}"]);
            (ready.lines().filter(|s| *s == "Ready").count() == n).then_some(())
        });
        bed.images = bed.node(1).build_images(tag);
        bed.node(1).docker_ok(&[
            "save",
            "-o",
            &bed.image_archive.display().to_string(),
            &bed.images.sidecar,
            &bed.images.spawner,
            &bed.images.demo,
        ]);
        for i in 2..=n {
            bed.load_images(i);
        }
        bed
    }

    /// Node `i` (from 1).
    pub fn node(&self, i: usize) -> &PrivateEngine {
        &self.nodes[i - 1]
    }

    /// Node `i`, to stop and start its engine.
    pub fn node_mut(&mut self, i: usize) -> &mut PrivateEngine {
        &mut self.nodes[i - 1]
    }

    /// The manager (node 1), where services are made.
    pub fn manager(&self) -> &PrivateEngine {
        self.node(1)
    }

    /// Node `i`'s address on the bed's LAN.
    pub fn addr(&self, i: usize) -> String {
        format!("{SUBNET}.{i}")
    }

    /// The images, as tagged on every node.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// Loads the project's images into node `i`'s engine.
    pub fn load_images(&self, i: usize) {
        self.node(i).docker_ok(&[
            "load",
            "-q",
            "-i",
            &self.image_archive.display().to_string(),
        ]);
    }

    /// Node `i`'s swarm node ID.
    pub fn node_id(&self, i: usize) -> String {
        self.node(i)
            .docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"])
    }

    /// Runs `cmd ARGS` in node `i`'s network namespace (as on that host).
    pub fn on_node(&self, i: usize, cmd: &str, args: &[&str]) -> Output {
        self.on_node_command(i, cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd} on node {i}: {e}"))
    }

    /// Runs `work` on a thread of its own moved into the hub's network namespace, as a host
    /// on the LAN at [`HUB_ADDR`] beside the nodes: the sockets it opens and the processes it
    /// starts are there (an ACME CA whose validation requests reach the nodes' published
    /// ports). Returns the thread's handle.
    pub fn on_lan<T, F>(&self, work: F) -> std::thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ns = format!("/run/netns/{}", self.hub);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&ns).unwrap_or_else(|e| panic!("open {ns}: {e}"));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
            work()
        })
    }

    /// A command `cmd` to run in node `i`'s network namespace; add its arguments.
    pub fn on_node_command(&self, i: usize, cmd: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns[i - 1]))
            .args(["--", cmd]);
        c
    }

    /// `curl` on node `i` with ARGS, after `-sS --max-time 5`: stdout when it succeeded.
    pub fn curl_on(&self, i: usize, args: &[&str]) -> Option<String> {
        let mut all = vec!["-sS", "--max-time", "5"];
        all.extend_from_slice(args);
        let out = self.on_node(i, "curl", &all);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for SwarmBed {
    fn drop(&mut self) {
        // Workers first, then the manager: each engine leaves the swarm, removes its containers
        // and stops (PrivateEngine's drop).
        while let Some(engine) = self.nodes.pop() {
            drop(engine);
        }
        for ns in self.netns.iter().chain(std::iter::once(&self.hub)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_file(&self.image_archive);
    }
}
