import CPMLL
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A child process for a parent whose threads start children at the same time (the test
/// process runs every suite at once).
///
/// Not Foundation's `Process`: on Linux it learns of a child's exit from a socket pair whose
/// child end is not close-on-exec, and it closes the descriptors of a child it starts by a list
/// taken before the spawn. A process another thread started in between inherits that end, and
/// `Process` says the first child runs until the other one ends: in CI a reader that had
/// released its lock "did not exit within 60 s" beside a long fuzz run, and its status, read
/// later, was 0. Here every descriptor the parent makes is close-on-exec from birth, the child
/// closes everything above stderr before exec, and the exit is learnt from waitpid.
public final class SpawnedProcess: Sendable {
    public enum Termination: Equatable, Sendable {
        case exited(Int32)
        case signaled(Int32)

        /// The exit status, or 128+N for signal N (as shells report it).
        public var status: Int32 {
            switch self {
            case .exited(let code): code
            case .signaled(let signal): 128 + signal
            }
        }
    }

    public let pid: Int32
    public let arguments: [String]
    /// Set once, by the waitpid that reaps the child; until then the pid cannot be reused, so a
    /// signal sent under this lock reaches this child or nothing.
    private let ended = Mutex<Termination?>(nil)

    /// Starts `executable` (a path) with `arguments`, the whole `environment` (nil: this
    /// process's), in its own process group (so that a test can signal the child and whatever
    /// it forks at once). Standard input is /dev/null; `stdout` and `stderr` are descriptors to
    /// give the child (nil: /dev/null).
    public init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                directory: String? = nil, stdout: Int32? = nil, stderr: Int32? = nil) throws {
        var actions = posix_spawn_file_actions_t()
        try Self.check(posix_spawn_file_actions_init(&actions))
        defer { posix_spawn_file_actions_destroy(&actions) }
        try Self.check(posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0))
        for (fd, target) in [(stdout, Int32(1)), (stderr, Int32(2))] {
            if let fd {
                try Self.check(posix_spawn_file_actions_adddup2(&actions, fd, target))
            } else {
                try Self.check(posix_spawn_file_actions_addopen(&actions, target, "/dev/null", O_WRONLY, 0))
            }
        }
        try Self.check(pmll_spawn_actions_close_from(&actions, 3))
        if let directory { try Self.check(pmll_spawn_actions_chdir(&actions, directory)) }

        var attributes = posix_spawnattr_t()
        try Self.check(posix_spawnattr_init(&attributes))
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        try Self.check(posix_spawnattr_setsigmask(&attributes, &none))
        try Self.check(posix_spawnattr_setpgroup(&attributes, 0))
        try Self.check(posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK)))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = (environment ?? ProcessInfo.processInfo.environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in argv + envp { free(p) } }
        var pid: pid_t = 0
        try Self.check(posix_spawn(&pid, executable, &actions, &attributes, argv, envp))
        self.pid = pid
        self.arguments = arguments
    }

    /// Runs `executable` to its end and returns how it ended and what it wrote on standard
    /// output (`capturing: 1`) or standard error (`2`); the other goes to /dev/null.
    public static func run(_ executable: String, _ arguments: [String], capturing stream: Int32 = 1) throws -> (termination: Termination, output: String) {
        let pipe = try closeOnExecPipe()
        defer { close(pipe.read) }
        let child: SpawnedProcess
        do {
            defer { close(pipe.write) }   // the child has its copy
            child = try SpawnedProcess(executable, arguments, stdout: stream == 1 ? pipe.write : nil, stderr: stream == 2 ? pipe.write : nil)
        }
        var output = [UInt8](), chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(pipe.read, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            output += chunk[..<n]
        }
        return (child.waitUntilExit(), String(decoding: output, as: UTF8.self))
    }

    /// This process's environment with `changes` over it.
    public static func environment(merging changes: [String: String]) -> [String: String] {
        ProcessInfo.processInfo.environment.merging(changes) { $1 }
    }

    /// How the child ended, nil while it runs (a zombie is reaped here).
    public var termination: Termination? {
        ended.withLock { ended in
            if ended == nil { ended = Self.reap(pid, options: WNOHANG) }
            return ended
        }
    }

    public var isRunning: Bool { termination == nil }

    /// Waits for the child to end. The wait itself does not reap (WNOWAIT), so another thread
    /// may signal the child meanwhile: the pid stays this child's until the reap under the lock.
    @discardableResult
    public func waitUntilExit() -> Termination {
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
        return ended.withLock { ended in
            if ended == nil { ended = Self.reap(pid, options: 0) }
            return ended!
        }
    }

    /// Sends `signal` unless the child has been reaped (a zombie ignores it).
    public func signal(_ signal: Int32) {
        ended.withLock { ended in
            if ended == nil { _ = kill(pid, signal) }
        }
    }

    private static func reap(_ pid: pid_t, options: Int32) -> Termination? {
        var status: Int32 = 0
        while true {
            let rc = waitpid(pid, &status, options)
            if rc == pid { break }
            if rc == 0 { return nil }
            if errno == EINTR { continue }
            // ECHILD: reaped elsewhere, which only SIGCHLD set to SIG_IGN does (nothing here
            // sets it); the status is lost, reported as an exit with status -1.
            return .exited(-1)
        }
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }

    /// posix_spawn and its helpers return an errno rather than setting it.
    private static func check(_ rc: Int32) throws {
        guard rc != 0 else { return }
        throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EIO)
    }
}

/// A pipe whose two ends are close-on-exec from birth.
public func closeOnExecPipe() throws -> (read: Int32, write: Int32) {
    var fds: [Int32] = [0, 0]
    let rc = pmll_pipe_cloexec(&fds)
    guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: -rc) ?? .EIO) }
    return (fds[0], fds[1])
}
