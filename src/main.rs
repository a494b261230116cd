//! The `pbx2mqtt` binary: everything is in the library; see `cli`.

fn main() -> std::process::ExitCode {
    pbx2mqtt::cli::main()
}
