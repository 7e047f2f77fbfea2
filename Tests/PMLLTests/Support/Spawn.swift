import Foundation
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
final class Child: @unchecked Sendable {
    let process = Process()
    private let output = Pipe()
    private let errorOutput = Pipe()
    private let lock = NSLock()
    private var buffer = Data()
    private var lines: [String] = []
    private var stderrText = Data()

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        process.environment = env
        process.standardOutput = output
        process.standardError = errorOutput
        output.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self else { return }
            self.lock.lock()
            self.buffer.append(data)
            while let newline = self.buffer.firstIndex(of: 0x0A) {
                self.lines.append(String(decoding: self.buffer[..<newline], as: UTF8.self))
                self.buffer.removeSubrange(...newline)
            }
            self.lock.unlock()
        }
        errorOutput.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self else { return }
            self.lock.lock()
            self.stderrText.append(data)
            self.lock.unlock()
        }
        try process.run()
    }

    static func worker(_ arguments: String..., environment: [String: String] = [:]) throws -> Child {
        try Child(Binaries.worker, arguments, environment: environment)
    }

    var pid: Int32 { process.processIdentifier }

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

    func kill(_ signal: Int32 = SIGKILL) { _ = Foundation.kill(pid, signal) }

    /// Kills the child's descendants first (e.g. the COMMAND of `pmll lock`), then the child.
    func killTree() {
        for pid in Self.descendants(pid) { _ = Foundation.kill(pid, SIGKILL) }
        kill()
    }

    /// Kills the child first, then its descendants: the child dies without seeing its COMMAND
    /// end (with killTree it may notice the COMMAND's death and finish cleanly first).
    func killParentFirst() {
        let below = Self.descendants(pid)
        kill()
        for pid in below { _ = Foundation.kill(pid, SIGKILL) }
    }

    static func descendants(_ pid: Int32) -> [Int32] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        let children = tasks.flatMap { task in
            ((try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8)) ?? "")
                .split(separator: " ").compactMap { Int32($0) }
        }
        return children.flatMap { descendants($0) + [$0] }
    }

    /// Waits for exit (bounded); returns the exit status, or 128+signal.
    @discardableResult
    func wait(timeout: Double = 60) -> Int32 {
        let end = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < end { usleep(5_000) }
        if process.isRunning {
            kill()
            process.waitUntilExit()
            Issue.record("child \(pid) (\(process.arguments ?? [])) did not exit within \(timeout) s")
        }
        usleep(20_000)   // let the pipe handlers drain
        // Stop reading and close our ends: a handler left installed keeps both descriptors
        // open for the life of the test process (thousands of children exhausted them).
        for handle in [output.fileHandleForReading, errorOutput.fileHandleForReading] {
            handle.readabilityHandler = nil
            try? handle.close()
        }
        lock.lock()
        if !buffer.isEmpty {   // a last line without a newline
            lines.append(String(decoding: buffer, as: UTF8.self))
            buffer.removeAll()
        }
        lock.unlock()
        return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }
}

/// Runs a command to completion and returns (status, stdout, stderr).
@discardableResult
func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], timeout: Double = 60) throws -> (status: Int32, stdout: String, stderr: String) {
    let child = try Child(executable, arguments, environment: environment)
    let status = child.wait(timeout: timeout)
    return (status, child.stdout, child.stderr)
}

/// A fresh directory for one test's pools, removed at the end.
final class Scratch {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "pmll-test-\(getpid())-\(UUID().uuidString.prefix(8))"
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
