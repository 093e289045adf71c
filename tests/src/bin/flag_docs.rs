//! `make docs`: writes the manual's generated blocks (the flag tables of docs/sidecar.md and
//! docs/spawner.md) from the binaries' clap definitions. `--check` writes nothing and exits 1
//! when a committed block differs, naming the page; `--print` prints the blocks.

use std::process::ExitCode;

use harness::docker::repo_root;
use harness::docs::{blocks, current_block, replace_block};

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some("--print") => {
            for block in blocks() {
                println!("{}: {}\n\n{}", block.page, block.name, block.content);
            }
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("flag-docs: unknown argument {other:?} (usage: flag-docs [--check|--print])");
            return ExitCode::from(2);
        }
    };
    let root = repo_root();
    let mut stale = 0;
    for block in blocks() {
        let path = root.join(block.page);
        let page = match std::fs::read_to_string(&path) {
            Ok(page) => page,
            Err(e) => {
                eprintln!("flag-docs: cannot read {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        if current_block(&page, block.name).as_deref() == Some(block.content.as_str()) {
            println!("{}: {} up to date", block.page, block.name);
            continue;
        }
        if check {
            eprintln!("{}: {} is stale (run make docs)", block.page, block.name);
            stale += 1;
            continue;
        }
        let new = match replace_block(&page, block.name, &block.content) {
            Ok(new) => new,
            Err(e) => {
                eprintln!("flag-docs: {}: {e}", block.page);
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(&path, new) {
            eprintln!("flag-docs: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{}: {} written", block.page, block.name);
    }
    if stale > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
