//! The keeper as a program of its own, for this crate's tests (the daemon runs `pgvigil keeper`).

fn main() {
    match vigil_pg::keeper::KeeperArgs::parse(std::env::args_os().skip(1)) {
        Ok(args) => std::process::exit(vigil_pg::keeper::main(args)),
        Err(e) => {
            eprintln!("vigil-keeper: {e}");
            std::process::exit(64);
        }
    }
}
