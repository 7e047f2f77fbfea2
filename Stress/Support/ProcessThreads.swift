import Foundation
public import Synchronization

/// Threads of this process now (the `Threads:` line of /proc/self/status): what the async
/// waiter tests and `pmll-bench async` bound.
public func threadCountOfThisProcess() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("Threads:") {
        return Int(line.dropFirst(8).trimmingCharacters(in: .whitespaces)) ?? 0
    }
    return 0
}

extension Atomic where Value == Int {
    /// Raises the value to `v` if it is lower.
    public func max(_ v: Int) {
        var current = load(ordering: .relaxed)
        while v > current {
            let (exchanged, original) = compareExchange(expected: current, desired: v, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }
}

extension Atomic where Value == Int64 {
    /// Raises the value to `v` if it is lower.
    public func max(_ v: Int64) {
        var current = load(ordering: .relaxed)
        while v > current {
            let (exchanged, original) = compareExchange(expected: current, desired: v, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }
}
