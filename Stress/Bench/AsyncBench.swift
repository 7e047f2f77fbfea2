import ArgumentParser
import Foundation
import PMLL
import PMLLStressSupport
import Synchronization

/// Async acquisition under contention inside one process, with the synchronous path as the
/// reference in the same run:
/// - `loop`: W waiters (threads for sync, tasks for async) each take and release one lock
///   in a loop for a fixed time; acquisitions per second.
/// - `drain`: N tasks queue behind a lock a thread holds; after the release, how long until
///   every one has had it (per-waiter cost), and the most threads the process had.
struct AsyncBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "async", abstract: "Async lock acquisition under contention vs the sync path.")

    @Option var seconds = 2.0
    @Option(help: "Directory to work in: the pool goes into pmll-asyncbench inside it, removed afterwards.") var directory = "/dev/shm"
    @Flag var json = false

    struct Row: Codable {
        let scenario: String
        let path: String
        let waiters: Int
        let acquisitionsPerSecond: Double
        let microsecondsPerWaiter: Double?
        let maxThreads: Int
    }

    func run() async throws {
        let directory = try benchWorkDirectory(in: self.directory, tag: "pmll-asyncbench")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pool = try Pool.open(path: directory + "/async.pool")
        let lock = try pool.lock(named: "bench/async", level: .package)
        var rows: [Row] = []
        for waiters in [2, 16] {
            rows.append(try syncLoop(lock, threads: waiters))
            rows.append(try await asyncLoop(lock, tasks: waiters))
        }
        rows.append(try await asyncLoop(lock, tasks: 1000))
        for waiters in [1000, 10_000] { rows.append(try await drain(lock, tasks: waiters)) }
        if json { try printJSONRows(rows); return }
        print("Contended acquisitions in one process (\(seconds) s per loop row; drain: N tasks behind a held lock, after its release)")
        var table = [["scenario", "path", "waiters", "acq/s", "ratio to sync", "us per waiter", "max threads"]]
        for row in rows {
            let sync = rows.first { $0.path == "sync" && $0.waiters == row.waiters }
            table.append([row.scenario, row.path, "\(row.waiters)", String(format: "%.0f", row.acquisitionsPerSecond),
                          sync.map { String(format: "%.2f", row.acquisitionsPerSecond / $0.acquisitionsPerSecond) } ?? "-",
                          row.microsecondsPerWaiter.map { String(format: "%.1f", $0) } ?? "-", "\(row.maxThreads)"])
        }
        print(TextTable.render(table))
    }

    func syncLoop(_ lock: LockHandle, threads: Int) throws -> Row {
        let state = LoopState()
        let end = monotonicNanoseconds() + Int64(seconds * 1e9)
        let sampler = state.sampleThreads()
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            var n = 0
            while monotonicNanoseconds() < end {
                try? lock.withLock { _ in n += 1 }
            }
            state.count.add(n, ordering: .relaxed)
        }
        sampler.stop()
        return Row(scenario: "loop", path: "sync", waiters: threads, acquisitionsPerSecond: Double(state.count.load(ordering: .relaxed)) / seconds,
                   microsecondsPerWaiter: nil, maxThreads: state.maxThreads.load(ordering: .relaxed))
    }

    func asyncLoop(_ lock: LockHandle, tasks: Int) async throws -> Row {
        let state = LoopState()
        let end = monotonicNanoseconds() + Int64(seconds * 1e9)
        let sampler = state.sampleThreads()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    var n = 0
                    while monotonicNanoseconds() < end {
                        try? await lock.withLock { _ async in n += 1 }
                    }
                    state.count.add(n, ordering: .relaxed)
                }
            }
        }
        sampler.stop()
        return Row(scenario: "loop", path: "async", waiters: tasks, acquisitionsPerSecond: Double(state.count.load(ordering: .relaxed)) / seconds,
                   microsecondsPerWaiter: nil, maxThreads: state.maxThreads.load(ordering: .relaxed))
    }

    func drain(_ lock: LockHandle, tasks: Int) async throws -> Row {
        let state = LoopState()
        let sampler = state.sampleThreads()
        try await withThrowingTaskGroup(of: Void.self) { group in
            let holder = Thread {
                try? lock.withLock { _ in
                    state.holding.store(true, ordering: .releasing)
                    while state.count.load(ordering: .acquiring) < tasks { usleep(1000) }   // every task queued
                    usleep(200_000)
                    state.released.store(monotonicNanoseconds(), ordering: .releasing)
                }
            }
            holder.start()
            while !state.holding.load(ordering: .acquiring) { usleep(100) }
            for _ in 0..<tasks {
                group.addTask {
                    state.count.add(1, ordering: .releasing)
                    try await lock.withLock { _ async in state.last.max(monotonicNanoseconds()) }
                }
            }
            try await group.waitForAll()
        }
        sampler.stop()
        let elapsed = Double(state.last.load(ordering: .relaxed) - state.released.load(ordering: .acquiring))
        return Row(scenario: "drain", path: "async", waiters: tasks, acquisitionsPerSecond: Double(tasks) / (elapsed / 1e9),
                   microsecondsPerWaiter: elapsed / 1e3 / Double(tasks), maxThreads: state.maxThreads.load(ordering: .relaxed))
    }
}

final class LoopState: Sendable {
    let count = Atomic<Int>(0)
    let maxThreads = Atomic<Int>(0)
    let stopped = Atomic<Bool>(false)
    let released = Atomic<Int64>(0), last = Atomic<Int64>(0)
    let holding = Atomic<Bool>(false)

    /// Samples this process's thread count every 2 ms until stopped.
    func sampleThreads() -> LoopState {
        let t = Thread {
            while !self.stopped.load(ordering: .relaxed) {
                self.maxThreads.max(threadCountOfThisProcess())
                usleep(2000)
            }
        }
        t.start()
        return self
    }

    func stop() { stopped.store(true, ordering: .relaxed); usleep(5000) }
}
