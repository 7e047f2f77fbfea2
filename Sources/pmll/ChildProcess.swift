import CPMLL
#if canImport(Glibc)
import Glibc
#endif

/// Spawning COMMAND and waiting for it.
enum ChildProcess {
    enum Result {
        case exited(Int32)
        case signaled(Int32)

        /// What `pmll lock` exits with: the child's status, or 128+N for signal N (as shells do).
        var exitStatus: Int32 {
            switch self {
            case .exited(let code): code
            case .signaled(let signal): 128 + signal
            }
        }
    }

    /// Runs COMMAND and waits for it.
    static func run(_ argv: [String], environment: [String]) throws(CommandFailure) -> Result {
        try wait(try spawn(argv, environment: environment))
    }

    /// Starts COMMAND (found on PATH) with `environment` (default: this process's).
    static func spawn(_ argv: [String], environment: [String]? = nil) throws(CommandFailure) -> pid_t {
        var pid: pid_t = 0
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The child starts with default SIGINT/SIGTERM handling even though we ignore them.
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGINT)
        sigaddset(&defaults, SIGTERM)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF))

        let rc = withCStrings(RawArguments.exact(argv)) { args in
            if let environment {
                withCStrings(environment.map { Array($0.utf8CString) }) { env in posix_spawnp(&pid, args[0]!, nil, &attributes, args, env) }
            } else {
                posix_spawnp(&pid, args[0]!, nil, &attributes, args, environ)
            }
        }
        if rc != 0 {
            let reason = String(cString: strerror(rc))
            throw CommandFailure(message: "cannot run '\(argv[0])': \(reason)",
                                 status: rc == ENOENT ? 127 : 126)
        }
        return pid
    }

    /// The strerror part of a spawn failure's message.
    static func reason(_ failure: CommandFailure) -> String {
        failure.message.split(separator: ":").last.map { String(String($0).trimmingBlanks) } ?? failure.message
    }

    /// Replaces this process with COMMAND (found on PATH); returns only if exec failed (errno set).
    static func exec(_ argv: [String], environment: [String]) {
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
        withCStrings(RawArguments.exact(argv)) { args in
            withCStrings(environment.map { Array($0.utf8CString) }) { env in
                _ = pmll_execvpe(args[0]!, args, env)
            }
        }
    }

    /// How long COMMAND runs before `pmll` drops its idle program pages
    /// (``pmll_drop_clean_file_mappings``). A command that ends sooner costs nothing more. The
    /// drop takes about 0.2 ms, mostly unmapping that the process's exit would do anyway; 50
    /// `pmll lock -- sleep 0.02` in a row took no longer with it (Docs/Benchmarks.md), and a
    /// holder killed 10 ms into its command already gains from it.
    static let idleAfterMilliseconds: Int32 = 10

    /// Waits for a child started by ``spawn(_:environment:)``. If it runs on, the page-table
    /// entries of this process's program text are dropped: killed while it waits, holding a
    /// lock, it is torn down sooner, and a waiter that shares its CPU takes over sooner.
    static func wait(_ pid: pid_t) throws(CommandFailure) -> Result {
        if runsOn(pid, milliseconds: idleAfterMilliseconds) { _ = pmll_drop_clean_file_mappings() }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { throw CommandFailure(message: "waitpid failed: \(String(cString: strerror(errno)))", status: 71) }
        }
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }

    /// True if `pid` (our unreaped child) has not exited within `milliseconds`; false if it
    /// has, or if that cannot be told.
    private static func runsOn(_ pid: pid_t, milliseconds: Int32) -> Bool {
        let fd = pmll_pidfd_open(pid)
        guard fd >= 0 else { return false }
        defer { pmll_fd_close(fd) }
        var exit = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&exit, 1, milliseconds) == 0
    }

    private static func withCStrings<R>(_ strings: [[CChar]], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
        let pointers = strings.map { $0.withUnsafeBufferPointer { strdup($0.baseAddress!) } } + [nil]
        defer { pointers.forEach { free($0) } }
        return body(pointers)
    }
}

/// The process's own argv, byte for byte. Swift's `CommandLine.arguments` replaces bytes that
/// are not UTF-8 with U+FFFD: fine for PMLL's own arguments (which must be UTF-8, checked at
/// start), wrong for a COMMAND's (a file name may be any bytes).
enum RawArguments {
    static func all() -> [[CChar]] {
        (0..<Int(CommandLine.argc)).map { i in
            guard let p = CommandLine.unsafeArgv[i] else { return [0] }
            return Array(UnsafeBufferPointer(start: p, count: strlen(p) + 1))
        }
    }

    /// `argv` as C strings: the original bytes when `argv` is the tail of the process's
    /// arguments (COMMAND after `--`), else its UTF-8.
    static func exact(_ argv: [String]) -> [[CChar]] {
        let raw = all()
        if raw.count >= argv.count {
            let tail = Array(raw.suffix(argv.count))
            let decoded = tail.map { String(decoding: $0.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self) }
            if decoded == argv { return tail }
        }
        return argv.map { Array($0.utf8CString) }
    }

    /// The index of the first argument before `--` that is not valid UTF-8.
    static func firstInvalidUTF8() -> Int? {
        // Straight from argv: copying every argument into arrays first was 3 % of the user
        // time of a `pmll lock` process.
        let argv = CommandLine.unsafeArgv, count = Int(CommandLine.argc)
        guard count > 1 else { return nil }
        // `pmll flock FILE COMMAND...` has no `--`: its FILE and COMMAND may be any bytes.
        if let first = argv[1], strcmp(first, "flock") == 0 { return nil }
        for i in 1..<count {
            guard let arg = argv[i] else { continue }
            if String(validatingCString: arg) == nil { return i }
            if strcmp(arg, "--") == 0 { return nil }
        }
        return nil
    }
}
