//! All integration tests compile into this one binary and share the harness. Each binary's tests
//! are in its folder (`sidecar/`, `spawner/`); the rest cover both binaries or the project.
mod bind;
mod docs;
mod fifo;
mod install;
mod isolation;
mod layout;
mod migrating;
mod sidecar;
mod spawner;
mod swarm_nodes;
mod tools;
