import ArgumentParser
import Foundation
import PMLL
import PMLLStressSupport
import Synchronization

/// Many tasks of this one process await one lock (or one queue) that a thread holds for
/// `hold` seconds; reports when each got its turn, the most threads the process had, and
/// how cancelled waiters ended. The async-waiter tests and `pmll-bench async` run it.
struct AsyncWaiters: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "async-waiters")
    @OptionGroup var common: Common
    @Option var waiters = 1000
    @Option(help: "Seconds a thread of this process holds the lock while the waiters queue (0: none).") var hold = 1.0
    @Option(help: "lock or queue") var mode = "lock"
    @Option(help: "Cancel every other waiter this many seconds into the hold (negative: never).") var cancelAfter = -1.0
    @Option(help: "Wait this long for a go file to exist before starting the hold (several processes start together).") var goFile: String?
    @Option(help: "Each granted waiter appends 'pid monotonic-ns' here.") var log: String?

    func run() async throws {
        let (pool, lock) = try common.open()
        let queue = mode == "queue" ? try pool.queue(named: common.lock, persistent: false) : nil
        let logFD = log.map { open($0, O_WRONLY | O_CREAT | O_APPEND, 0o600) }
        let c = Counters()
        let sampler = Thread {
            while !c.done.load(ordering: .relaxed) {
                c.maxThreads.max(threadCountOfThisProcess())
                usleep(2000)
            }
        }
        sampler.start()
        if let goFile { while access(goFile, F_OK) != 0 { usleep(1000) } }
        let released = Atomic<Int64>(0)
        let holding = Atomic<Bool>(false)
        let holder = Thread {
            try? lock.withLock { _ in
                holding.store(true, ordering: .releasing)
                usleep(UInt32(hold * 1e6))
                released.store(monotonic(), ordering: .releasing)
            }
        }
        if queue == nil && hold > 0 {
            holder.start()
            while !holding.load(ordering: .acquiring) { usleep(100) }
        }
        let start = monotonic()
        await withTaskGroup(of: Void.self) { group in
            var tasks: [Task<Void, Never>] = []
            for i in 0..<waiters {
                let task = Task {
                    do {
                        if let queue {
                            try await queue.execute(kind: "count", timeout: .some(nil)) { _ in
                                _ = c.granted.add(1, ordering: .relaxed)
                                c.lastGrant.max(monotonic())
                                if let logFD { appendLine(logFD, "\(getpid()) \(monotonic())") }
                            }
                        } else {
                            try await lock.withLock { _ async in
                                _ = c.granted.add(1, ordering: .relaxed)
                                c.lastGrant.max(monotonic())
                                if let logFD { appendLine(logFD, "\(getpid()) \(monotonic())") }
                            }
                        }
                    } catch PMLLError.cancelled, PMLLError.queueCancelled {
                        _ = c.cancelled.add(1, ordering: .relaxed)
                        c.lastCancel.max(monotonic())
                    } catch {
                        _ = c.failed.add(1, ordering: .relaxed)
                        FileHandle.standardError.write(Data("waiter \(i): \(error)\n".utf8))
                    }
                }
                tasks.append(task)
                group.addTask { await task.value }
            }
            if cancelAfter >= 0 {
                let victims = stride(from: 0, to: tasks.count, by: 2).map { tasks[$0] }
                group.addTask {
                    try? await Task.sleep(for: .milliseconds(Int64(cancelAfter * 1000)))
                    let at = monotonic()
                    for t in victims { t.cancel() }
                    emit(["event": "cancelling", "at": Int(at)])
                }
            }
        }
        c.done.store(true, ordering: .relaxed)
        let end = monotonic()
        let releasedAt = released.load(ordering: .acquiring)
        emit(["event": "done", "pid": Int(getpid()), "granted": c.granted.load(ordering: .relaxed),
              "cancelled": c.cancelled.load(ordering: .relaxed), "failed": c.failed.load(ordering: .relaxed),
              "start": Int(start), "released": Int(releasedAt), "end": Int(end),
              "lastGrant": Int(c.lastGrant.load(ordering: .relaxed)), "lastCancel": Int(c.lastCancel.load(ordering: .relaxed)),
              "maxThreads": c.maxThreads.load(ordering: .relaxed)])
        withExtendedLifetime(pool) {}
    }
}

final class Counters: Sendable {
    let granted = Atomic<Int>(0), cancelled = Atomic<Int>(0), failed = Atomic<Int>(0)
    let lastGrant = Atomic<Int64>(0), lastCancel = Atomic<Int64>(0)
    let maxThreads = Atomic<Int>(threadCountOfThisProcess())
    let done = Atomic<Bool>(false)
}
