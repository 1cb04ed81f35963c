//! The `postback` binary: everything is in the library (`postback::cli`).

fn main() -> std::process::ExitCode {
    postback::cli::main()
}
