//! The `aftercare` binary: everything lives in the library; see `aftercare::cli`.
fn main() -> std::process::ExitCode {
    aftercare::cli::main()
}
