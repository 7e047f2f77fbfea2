import Foundation
import PMLLStressSupport
import Testing

/// Spawning the package's own executables (pmll, pmll-worker) as real processes.
enum Binaries {
    /// The build products folder: the test bundle lives in it.
    static let directory: String = {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        // XCTest bundles on Linux are plain executables in the products folder; walk up if nested.
        while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("pmll-worker").path), dir.path != "/" {
            dir = dir.deletingLastPathComponent()
        }
        return dir.path
    }()

    static var worker: String { directory + "/pmll-worker" }
    static var fuzz: String { directory + "/pmll-fuzz" }
    static var pmll: String { directory + "/pmll" }
}

/// A child process whose stdout is read line by line (JSON objects from pmll-worker).
///
/// Each output is a pipe drained by its own thread until end of file, and `wait()` waits for
/// both to reach it: output is never cut short by a slow reader (a fixed grace period after
/// exit lost the tail of a long `pmll metrics` on a loaded machine). Started as a
/// ``SpawnedProcess``, not a Foundation `Process`: suites run at once and start children from
/// several threads, and `Process` could report a child that had exited as running for as
/// long as a child started meanwhile lived (``SpawnedProcess`` says why).
final class Child: @unchecked Sendable {
    let process: SpawnedProcess
    private let lock = NSLock()
    private var buffer = Data()
    private var lines: [String] = []
    private var stderrText = Data()
    private let drained = DispatchGroup()

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], directory: String? = nil) throws {
        let out = try closeOnExecPipe()
        let err: (read: Int32, write: Int32)
        do { err = try closeOnExecPipe() } catch {
            close(out.read); close(out.write)
            throw error
        }
        defer { close(out.write); close(err.write) }   // the child has its copies
        do {
            process = try SpawnedProcess(executable, arguments, environment: SpawnedProcess.environment(merging: environment),
                                         directory: directory, stdout: out.write, stderr: err.write)
        } catch {
            close(out.read); close(err.read)
            throw error
        }
        drain(out.read) { child, data in
            child.buffer.append(data)
            while let newline = child.buffer.firstIndex(of: 0x0A) {
                child.lines.append(String(decoding: child.buffer[..<newline], as: UTF8.self))
                child.buffer.removeSubrange(...newline)
            }
        }
        drain(err.read) { child, data in child.stderrText.append(data) }
    }

    /// Reads `fd` on a thread of its own until end of file (every writer gone), then closes it.
    private func drain(_ fd: Int32, _ append: @escaping @Sendable (Child, Data) -> Void) {
        drained.enter()
        let thread = Thread { [self] in
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(fd, &chunk, chunk.count)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { break }
                lock.lock()
                append(self, Data(chunk[..<n]))
                lock.unlock()
            }
            close(fd)
            drained.leave()
        }
        thread.start()
    }

    static func worker(_ arguments: String..., environment: [String: String] = [:]) throws -> Child {
        try Child(Binaries.worker, arguments, environment: environment)
    }

    var pid: Int32 { process.pid }

    /// Everything printed on stdout so far, complete lines only.
    var stdout: String {
        lock.lock(); defer { lock.unlock() }
        return lines.joined(separator: "\n")
    }

    var stderr: String {
        lock.lock(); defer { lock.unlock() }
        return String(decoding: stderrText, as: UTF8.self)
    }

    /// Every complete line so far, parsed as JSON objects.
    var events: [[String: Any]] {
        lock.lock(); defer { lock.unlock() }
        return lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// Waits until an event with `"event": name` arrives; nil on timeout or exit.
    func waitForEvent(_ name: String, timeout: Double = 20) -> [String: Any]? {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if let e = events.first(where: { $0["event"] as? String == name }) { return e }
            if !process.isRunning {
                usleep(50_000)
                return events.first(where: { $0["event"] as? String == name })
            }
            usleep(2_000)
        }
        return nil
    }

    func kill(_ signal: Int32 = SIGKILL) { process.signal(signal) }

    /// Kills the child's descendants first (e.g. the COMMAND of `pmll lock`), then the child.
    /// The tree is frozen first (`ProcessTree.freeze`), so a command forked meanwhile is not
    /// left running.
    func killTree() {
        let tree = ProcessTree.freeze(pid)
        for pid in tree.dropFirst() { _ = Foundation.kill(pid, SIGKILL) }
        _ = Foundation.kill(-pid, SIGKILL)   // the child's process group (SpawnedProcess makes one)
        kill()
    }

    /// Kills the child first, then its descendants: the child dies frozen, holding whatever it
    /// held, without seeing its COMMAND end.
    func killParentFirst() {
        let tree = ProcessTree.freeze(pid)
        kill()
        _ = Foundation.kill(-pid, SIGKILL)   // the child's process group (SpawnedProcess makes one)
        for pid in tree.dropFirst() { _ = Foundation.kill(pid, SIGKILL) }
    }

    /// Kills the child and its descendants if it still runs, for `defer` in tests: a failed
    /// expectation must leave no process behind (one once waited forever for its go-file).
    func stopIfRunning() {
        guard process.isRunning else { return }
        killTree()
        process.waitUntilExit()
    }

    static func descendants(_ pid: Int32) -> [Int32] { ProcessTree.descendants(of: pid) }

    /// Stopped by a signal (state T), as `PMLL_PAUSE_AT` leaves it.
    var isStopped: Bool { ProcessTree.state(of: pid) == "T" }

    /// Waits until the child stopped itself at its `PMLL_PAUSE_AT` point.
    func waitUntilStopped(timeout: Double = 30) throws {
        let end = Date().addingTimeInterval(timeout)
        while !isStopped {
            try #require(process.isRunning, "the child exited before its pause point: \(stderr)")
            try #require(Date() < end, "the child never reached its pause point: \(stderr)")
            usleep(10_000)
        }
    }

    /// Waits for exit (bounded); returns the exit status, or 128+signal.
    @discardableResult
    func wait(timeout: Double = 60) -> Int32 {
        let end = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < end { usleep(5_000) }
        if process.isRunning {
            kill()
            process.waitUntilExit()
            Issue.record("child \(pid) (\(process.arguments)) did not exit within \(timeout) s")
        }
        // Both outputs to their end; a descendant that outlives the child (and keeps the pipe
        // open) only delays this, by at most a few seconds.
        _ = drained.wait(timeout: .now() + 5)
        lock.lock()
        if !buffer.isEmpty {   // a last line without a newline
            lines.append(String(decoding: buffer, as: UTF8.self))
            buffer.removeAll()
        }
        lock.unlock()
        return process.waitUntilExit().status
    }
}

/// Runs a command to completion and returns (status, stdout, stderr).
@discardableResult
func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], directory: String? = nil,
         timeout: Double = 60) throws -> (status: Int32, stdout: String, stderr: String) {
    let child = try Child(executable, arguments, environment: environment, directory: directory)
    let status = child.wait(timeout: timeout)
    return (status, child.stdout, child.stderr)
}

/// A fresh directory for one test's pools, removed at the end.
final class Scratch {
    let path: String
    /// `parent`: where (a file system's directory: /dev/shm for tmpfs, /var/tmp for a disk).
    init(in parent: String = NSTemporaryDirectory()) {
        path = (parent.hasSuffix("/") ? parent : parent + "/") + "pmll-test-\(getpid())-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

func readU64(_ path: String, field: Int) -> UInt64 {
    let fd = open(path, O_RDONLY)
    defer { close(fd) }
    var v: UInt64 = 0
    _ = pread(fd, &v, 8, off_t(field * 8))
    return v
}
