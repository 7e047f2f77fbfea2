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

        let rc = withCStrings(argv) { args in
            if let environment {
                withCStrings(environment) { env in posix_spawnp(&pid, args[0]!, nil, &attributes, args, env) }
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

    /// Waits for a child started by ``spawn(_:environment:)``.
    static func wait(_ pid: pid_t) throws(CommandFailure) -> Result {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { throw CommandFailure(message: "waitpid failed: \(String(cString: strerror(errno)))", status: 71) }
        }
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }

    private static func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
        let pointers = strings.map { strdup($0) } + [nil]
        defer { pointers.forEach { free($0) } }
        return body(pointers)
    }
}
