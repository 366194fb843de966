fn main() -> std::process::ExitCode {
    // Like other command-line tools, end quietly when the reader of our
    // output goes away (`ablate plan ... | head`) instead of panicking on EPIPE.
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // An empty ABLATE_WORKSPACE or ABLATE_DB (`ABLATE_DB= ablate runs`) means
    // unset, as shells use it, not a value to reject.
    for name in ["ABLATE_WORKSPACE", "ABLATE_DB"] {
        if std::env::var_os(name).is_some_and(|v| v.is_empty()) {
            // SAFETY: no other thread exists yet to read the environment.
            unsafe { std::env::remove_var(name) };
        }
    }
    ablate::alloc::keep_freed_buffers();
    ablate::cli::main()
}
