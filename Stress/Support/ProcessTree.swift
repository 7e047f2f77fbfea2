import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The processes below one process, for tests and tools that must stop or pause a whole
/// tree (a `pmll lock` holder and the COMMAND it runs).
public enum ProcessTree {
    /// Every descendant of `pid`, the deepest first (from /proc/PID/task/TID/children).
    public static func descendants(of pid: Int32) -> [Int32] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        let children = tasks.flatMap { task in
            ((try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8)) ?? "")
                .split(separator: " ").compactMap { Int32($0) }
        }
        return children.flatMap { descendants(of: $0) + [$0] }
    }

    /// Stops `pid` and every process below it (SIGSTOP) and returns them, `pid` first, then
    /// the deepest first. One snapshot of the tree is not enough: a shell that forks its next
    /// command just after the snapshot leaves that command running, and a killed tree then
    /// keeps a survivor (which also holds the child's output pipes, so waiting for their end
    /// waits for it). ``SpawnedProcess`` (like Foundation's `Process`) makes each child it
    /// spawns a process-group leader, and a signal to a group reaches every member at once,
    /// the child of a fork in progress included (since Linux 4.20 the fork completes and the
    /// child gets the signal too): so the group is stopped first. Then the tree is walked until two walks in a row
    /// find the same processes and every one is stopped (or dead): the kernel's children lists
    /// are only reliable once nothing in them forks or exits.
    @discardableResult
    public static func freeze(_ pid: Int32) -> [Int32] {
        let leader = getpgid(pid) == pid
        if leader { _ = kill(-pid, SIGSTOP) }
        var stopped = Set<Int32>()
        var tree = [pid], previous: [Int32] = []
        let deadline = Date().addingTimeInterval(20)
        repeat {
            tree = [pid] + descendants(of: pid)
            let new = tree.filter { !stopped.contains($0) }
            for p in new { _ = kill(p, SIGSTOP); stopped.insert(p) }
            // Stopped, not merely with the group's SIGSTOP pending: a member inside fork()
            // when the signal came finishes it (the kernel no longer restarts a fork for a
            // signal; the child gets the group's signal too), so its child can appear after a
            // walk that saw the whole group with the stop pending (CI, a busy machine: 42
            // processes 50 ms after a freeze that returned 41).
            let frozen = tree.allSatisfy(isStoppedOrGone)
            if new.isEmpty && tree == previous && frozen { break }
            previous = tree
            usleep(1_000)
        } while Date() < deadline
        return tree
    }

    /// The process's state letter from /proc/PID/stat ('R', 'S', 'T', 'Z', ...), nil if
    /// the file cannot be read.
    public static func state(of pid: Int32) -> Character? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: close)...].drop(while: { $0 == " " }).first
    }

    /// Whether the process is stopped ('T', 't'), a zombie or gone: it can no longer fork.
    /// Also a parent blocked in `vfork` (posix_spawn) for a child that was stopped before its
    /// exec: it shows 'D' in `kernel_clone` until the child goes on, which a frozen child never
    /// does, and it creates no other process meanwhile. A `/proc` file that cannot be read (a
    /// descriptor limit on a busy test process) is not taken for "gone" unless the process is.
    public static func isStoppedOrGone(_ pid: Int32) -> Bool {
        guard let state = state(of: pid) else { return kill(pid, 0) != 0 && errno == ESRCH }
        if "TtZX".contains(state) { return true }
        guard state == "D", let wchan = try? String(contentsOfFile: "/proc/\(pid)/wchan", encoding: .utf8) else { return false }
        return wchan == "kernel_clone" || wchan == "wait_for_vfork_done"
    }
}
