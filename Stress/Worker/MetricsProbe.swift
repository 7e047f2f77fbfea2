import ArgumentParser
import CoreMetrics
import Foundation
import PMLL
import Prometheus

/// Bootstraps swift-prometheus as the swift-metrics backend, then makes known events happen
/// in one process (3 commits and a conflict, a contended lock wait and a timeout, two queue
/// operations that succeed and one that fails after a retry) and prints the registry in the
/// Prometheus text format: what a program that bootstraps a backend sees of PMLL.
struct MetricsProbe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "metrics-probe")
    @Option var pool: String

    func run() async throws {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let pool = try Pool.open(path: pool)
        try Self.commitsAndLocks(pool)

        struct Flaky: Error {}
        let queue = try pool.queue(named: "probe-q")
        for _ in 0..<2 { try await queue.execute(kind: "ok") { _ in } }
        _ = try? await queue.execute(kind: "bad", retry: RetryPolicy(maxRetries: 1, baseDelay: .milliseconds(1))) { _ in
            throw RetryableError(Flaky())
        }
        print(registry.emitToString(), terminator: "")
    }

    static func commitsAndLocks(_ pool: Pool) throws {
        for i in 0..<3 { try pool.transaction { tx in try tx.set("probe/\(i)", "v") } }
        // A commit by another thread between this transaction's read and its commit: one
        // conflict, then the body runs again and commits.
        var interfered = false
        try pool.transaction { tx in
            _ = try tx.get("probe/0")
            if !interfered {
                interfered = true
                let other = Thread { try? pool.transaction { tx in try tx.set("probe/0", "changed") } }
                other.start()
                while !other.isFinished { usleep(1000) }
            }
            try tx.set("probe/1", "after")
        }

        let lock = try pool.lock(named: "probe", level: .package)
        let held = DispatchSemaphore(value: 0)
        let holder = Thread {
            try? lock.withLock { _ in
                held.signal()
                usleep(100_000)
            }
        }
        holder.start()
        held.wait()
        _ = try? lock.withLock(timeout: .milliseconds(1)) { _ in }     // times out
        try lock.withLock(timeout: .seconds(10)) { _ in }               // waits for the holder
    }
}
