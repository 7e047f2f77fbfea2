#if canImport(Glibc)
import Glibc
#endif
import PMLL

/// The line `pmll queue exec` prints while it waits: the operation being served, whose end it
/// waits for, and whether that operation's process is stopped (a `pmll queue exec` suspended
/// with Ctrl-Z keeps its place in the queue, and everyone behind it waits until it resumes).
enum QueueWaitReport {
    static func print(queue: HardenedQueue, name: String) {
        let me = getpid()
        guard let ahead = queue.records.first(where: { ($0.state == .queued || $0.state == .running) && $0.ownerPid != me }) else { return }
        let stopped = isStopped(ahead.ownerPid) ? ", stopped" : ""
        printError("pmll: waiting in queue '\(name)' behind ticket \(ahead.ticket) '\(ahead.kind)' of pid \(ahead.ownerPid) (\(ahead.ownerCommand), \(ahead.state.rawValue)\(stopped))")
    }

    /// State T (stopped by a signal) or t (stopped by a tracer) in /proc/PID/stat: the field
    /// after the command, which is in parentheses and may itself hold spaces and parentheses.
    static func isStopped(_ pid: Int32) -> Bool {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0, let end = buffer[..<n].lastIndex(of: UInt8(ascii: ")")) else { return false }
        guard let state = buffer[(end + 1)..<n].first(where: { $0 != UInt8(ascii: " ") }) else { return false }
        return state == UInt8(ascii: "T") || state == UInt8(ascii: "t")
    }
}
