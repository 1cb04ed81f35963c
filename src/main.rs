//! The `postback` binary: everything is in the library (`postback::cli`).
//!
//! The one thing decided here is the allocator: mimalloc, because the
//! delivery path allocates and frees many small buffers per attempt across
//! threads (request and header buffers, rows, futures), and glibc's malloc
//! spent about 16 % of a drain's CPU in `_int_malloc`/`_int_free`/
//! `malloc_consolidate` (profile in docs/perf/). An embedder of the library
//! picks its own.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    postback::cli::main()
}
