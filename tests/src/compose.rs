//! A Compose project of one of the repository's compose files, as a user runs it (`docker
//! compose`, or Debian's `docker-compose` v1 where the plugin is missing), under a unique project
//! name, the test images' tag and a label prefix of its own. Dropping it takes the project down
//! and then removes the sidecars its spawner left (the spawner goes down with the services, so
//! nothing else would), with their volumes.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::docker::{docker, docker_ok, images, repo_root, unique_name};

pub struct Compose {
    /// `-p`: unique per test.
    pub project: String,
    /// `TLS_SIDECAR_LABEL_PREFIX`: unique per test.
    pub prefix: String,
    file: PathBuf,
    tag: String,
    env: Vec<(String, String)>,
}

impl Compose {
    /// The project of `file` (relative to the repository root), not started yet; `env` is passed
    /// to every compose command beside the tag and the prefix.
    pub fn new(file: &str, env: &[(&str, String)]) -> Compose {
        let tag = images()
            .demo
            .rsplit_once(':')
            .map(|(_, t)| t.to_string())
            .expect("the demo image has a tag");
        Compose {
            project: unique_name("tls").replace('-', ""),
            prefix: unique_name("t"),
            file: repo_root().join(file),
            tag,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    /// Runs `compose ARGS` for this project.
    pub fn run(&self, args: &[&str]) -> Output {
        let v2 = docker(&["compose", "version"]).status.success();
        let mut cmd = if v2 {
            let mut c = Command::new("docker");
            c.arg("compose");
            c
        } else {
            Command::new("docker-compose")
        };
        cmd.args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .env("TLS_SIDECAR_TAG", &self.tag)
            .env("TLS_SIDECAR_LABEL_PREFIX", &self.prefix)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.output().expect("run compose")
    }

    /// `up -d`, asserting it worked.
    pub fn up(&self) {
        let up = self.run(&["up", "-d"]);
        assert!(
            up.status.success(),
            "compose up failed: {}",
            String::from_utf8_lossy(&up.stderr)
        );
    }

    /// The full ID of the container of `service` (empty when there is none).
    pub fn container(&self, service: &str) -> String {
        docker_ok(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "-t", "1"]);
        let left = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={}.managed-by", self.prefix),
        ]);
        for id in String::from_utf8_lossy(&left.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", "-v", id]);
        }
    }
}
