//! The `aftercare` binary: everything lives in the library; see `aftercare::cli`.
fn main() -> std::process::ExitCode {
    aftercare::cli::main()
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
