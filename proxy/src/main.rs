//! The `appid` command. All logic lives in the library; see `cli`.
fn main() -> std::process::ExitCode {
    appid_proxy::cli::main()
}
