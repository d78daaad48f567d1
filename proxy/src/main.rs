//! The `appid` command. All logic lives in the library; see `cli`.

/// mimalloc instead of glibc malloc: the data plane frees and reallocates
/// frame-sized buffers (16-64 KiB) at a high rate, and glibc's heap
/// trimming turned that into page faults (measured: 6% of sidecar CPU on
/// bulk transfers through a tunnel).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    appid_proxy::cli::main()
}
