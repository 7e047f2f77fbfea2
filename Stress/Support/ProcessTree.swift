import Foundation

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
}
