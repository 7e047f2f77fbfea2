import Foundation
import PMLL
import Synchronization
import Testing

@Suite("Hardened queues", .serialized)
struct QueueTests {
    struct LogLine {
        let begin: Bool
        let queue: String
        let ticket: UInt64
        let pid: Int32
        let time: Int64
    }

    func readLog(_ path: String) throws -> [LogLine] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { line in
            let f = line.split(separator: " ")
            return LogLine(begin: f[0] == "B", queue: String(f[1]), ticket: UInt64(f[2])!, pid: Int32(f[3])!, time: Int64(f[4])!)
        }
    }

    @Test func eightProcessesRunInStrictTicketOrderWithoutOverlap() throws {
        let scratch = Scratch()
        let pool = scratch.file("q.pool"), log = scratch.file("log")
        let children = try (0..<8).map { _ in
            try Child.worker("queue-ops", "--pool", pool, "--queue", "cache", "--count", "10", "--log", log, "--sleep-milliseconds", "1")
        }
        for child in children { #expect(child.wait(timeout: 120) == 0, "\(child.stderr)") }
        let lines = try readLog(log)
        #expect(lines.count == 160)
        var previous: UInt64?
        for pair in stride(from: 0, to: lines.count - 1, by: 2) {
            let b = lines[pair], e = lines[pair + 1]
            #expect(b.begin && !e.begin, "operations overlap at line \(pair)")
            #expect(b.ticket == e.ticket && b.pid == e.pid)
            if let previous { #expect(b.ticket > previous, "ticket \(b.ticket) ran after \(previous)") }
            previous = b.ticket
        }
        #expect(Set(lines.map(\.pid)).count == 8)   // interleaved from all processes
        let stats = try Pool.open(path: pool).queue(named: "cache").stats
        #expect(stats.completed == 80 && stats.pending == 0 && stats.failed == 0)
    }

    @Test func differentQueuesRunInParallel() throws {
        let scratch = Scratch()
        let pool = scratch.file("p.pool"), log = scratch.file("log")
        let slow = try Child.worker("queue-ops", "--pool", pool, "--queue", "slow", "--count", "1", "--log", log, "--sleep-milliseconds", "1500")
        _ = try #require(slow.waitForEvent("started"))
        usleep(300_000)
        let fast = try Child.worker("queue-ops", "--pool", pool, "--queue", "fast", "--count", "1", "--log", log, "--sleep-milliseconds", "0")
        #expect(fast.wait() == 0)
        #expect(slow.wait() == 0)
        let lines = try readLog(log)
        let slowBegin = try #require(lines.first { $0.queue == "slow" && $0.begin })
        let slowEnd = try #require(lines.first { $0.queue == "slow" && !$0.begin })
        let fastEnd = try #require(lines.first { $0.queue == "fast" && !$0.begin })
        #expect(fastEnd.time > slowBegin.time && fastEnd.time < slowEnd.time, "queue 'fast' waited for queue 'slow'")
    }

    /// SIGKILL one process while its operation runs and another while its operation is
    /// queued behind it: the queue goes on, both records are abandoned, and recovery calls
    /// each handler exactly once, leaving the repaired state consistent.
    @Test func deadOwnersAreSkippedAndRecoveredOnce() async throws {
        let scratch = Scratch()
        let pool = scratch.file("r.pool"), log = scratch.file("log"), state = scratch.file("state")
        let runner = try Child.worker("queue-hold", "--pool", pool, "--queue", "tree", "--state-file", state)
        let running = try #require(runner.waitForEvent("running"))
        let queued = try Child.worker("queue-ops", "--pool", pool, "--queue", "tree", "--count", "1", "--log", log)
        let observer = try Pool.open(path: pool)
        let tree = try observer.queue(named: "tree")
        for _ in 0..<2000 where !tree.records.contains(where: { $0.ownerPid == queued.pid && $0.state == .queued }) { usleep(1000) }
        #expect(tree.records.contains { $0.ownerPid == queued.pid && $0.state == .queued })
        queued.kill(); queued.wait()
        runner.kill(); runner.wait()

        let next = try Child.worker("queue-ops", "--pool", pool, "--queue", "tree", "--count", "1", "--log", log)
        #expect(next.wait(timeout: 30) == 0)
        let records = tree.records
        let abandoned = records.filter { $0.state == .abandoned }
        #expect(Set(abandoned.map(\.ownerPid)) == [runner.pid, queued.pid])
        #expect(abandoned.first { $0.ownerPid == runner.pid }?.ticket == UInt64(running["ticket"] as! Int))
        #expect(records.last?.state == .succeeded)
        #expect(try String(contentsOfFile: state, encoding: .utf8) == "partial")

        let calls = CallCounter()
        let handlers: [String: RecoveryHandler] = [
            "install": { record in
                calls.add("install")
                try "clean".write(toFile: String(decoding: record.payload, as: UTF8.self), atomically: true, encoding: .utf8)
            },
            "append": { _ in calls.add("append") },
        ]
        let report = try await observer.recover(handlers: handlers)
        #expect(report.items.count == 2 && report.items.allSatisfy { $0.outcome == .recovered })
        #expect(calls.counts == ["install": 1, "append": 1])
        #expect(try String(contentsOfFile: state, encoding: .utf8) == "clean")
        let again = try await observer.recover(handlers: handlers)
        #expect(again.items.isEmpty)
        #expect(calls.counts == ["install": 1, "append": 1])
        #expect(try observer.abandonedOperations().isEmpty)
        #expect(tree.stats.abandoned == 2 && tree.stats.recovered == 2)
    }

    @Test func unknownKindDuringRecoveryIsReportedNotDropped() async throws {
        let scratch = Scratch()
        let pool = scratch.file("u.pool"), state = scratch.file("state")
        let runner = try Child.worker("queue-hold", "--pool", pool, "--queue", "u", "--state-file", state)
        _ = try #require(runner.waitForEvent("running"))
        runner.kill(); runner.wait()
        let p = try Pool.open(path: pool)
        let first = try await p.recover(handlers: [:])
        #expect(first.items.count == 1 && first.items[0].outcome == .noHandler && first.items[0].record.kind == "install")
        #expect(try p.abandonedOperations().count == 1)
        let failing = try await p.recover(handlers: ["install": { _ in throw CancellationError() }])
        if case .handlerFailed = failing.items.first?.outcome {} else { Issue.record("expected handlerFailed: \(failing.items)") }
        #expect(try p.abandonedOperations().count == 1)
        let second = try await p.recover(handlers: ["install": { _ in }])
        #expect(second.items.map(\.outcome) == [.recovered])
        #expect(try p.abandonedOperations().isEmpty)
    }

    @Test func recoveryKilledMidwayIsRunAgain() async throws {
        let scratch = Scratch()
        let pool = scratch.file("k.pool"), state = scratch.file("state")
        let keeper = try Child.worker("hold", "--pool", pool, "--lock", "keep")   // no volatile reset in between
        defer { keeper.kill(); keeper.wait() }
        _ = try #require(keeper.waitForEvent("acquired"))
        let runner = try Child.worker("queue-hold", "--pool", pool, "--queue", "tree", "--state-file", state)
        _ = try #require(runner.waitForEvent("running"))
        runner.kill(); runner.wait()
        // Recovery is killed inside the handler, holding the queue's submit lock.
        let recoverer = try Child.worker("recover", "--pool", pool, "--kind", "install")
        _ = try #require(recoverer.waitForEvent("handling"))
        recoverer.kill(); recoverer.wait()
        let p = try Pool.open(path: pool)
        #expect(try p.abandonedOperations().count == 1)   // not marked: the handler never returned
        let calls = CallCounter()
        let report = try await p.recover(handlers: ["install": { _ in calls.add("install") }])
        #expect(report.items.map(\.outcome) == [.recovered])
        #expect(calls.counts == ["install": 1])
        // The queue is usable again: the dead recoverer's submit lock was taken over.
        #expect(try await p.queue(named: "tree").execute(kind: "after", timeout: .seconds(10)) { _ in 1 } == 1)
    }

    /// Regression (found by pmll-stress): an abandoned operation nobody had recovered yet
    /// blocked its ring slot, so after one wrap every submission failed. Now it is parked in
    /// the state store and recovery still finds it, exactly once.
    @Test func abandonedOperationsDoNotBlockTheRingAndAreStillRecovered() async throws {
        let scratch = Scratch()
        let path = scratch.file("ring.pool"), state = scratch.file("state")
        var options = PoolOptions()
        options.queueRing = 4
        let keeper = try Pool.open(path: path, options: options)   // no volatile reset in between
        let runner = try Child.worker("queue-hold", "--pool", path, "--queue", "small", "--state-file", state)
        _ = try #require(runner.waitForEvent("running"))
        runner.kill(); runner.wait()
        let q = try keeper.queue(named: "small")
        for i in 0..<10 { #expect(try await q.execute(kind: "after", timeout: .seconds(10)) { _ in i } == i) }
        let abandoned = try keeper.abandonedOperations()
        #expect(abandoned.map(\.kind) == ["install"] && abandoned.first?.ownerPid == runner.pid)
        let calls = CallCounter()
        let report = try await keeper.recover(handlers: ["install": { record in
            calls.add(String(decoding: record.payload, as: UTF8.self))
        }])
        #expect(report.items.map(\.outcome) == [.recovered])
        #expect(calls.counts == [state: 1])
        #expect(try keeper.abandonedOperations().isEmpty)
        #expect(try await keeper.recover(handlers: ["install": { _ in calls.add("again") }]).items.isEmpty)
        #expect(throws: PMLLError.self) { try keeper.transaction { tx in try tx.set("pmll:abandoned/x", "no") } }
    }

    @Test func retriesWithBackoffUpToTheLimitAndCallsTheErrorHandler() async throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("b.pool"))
        var configuration = QueueConfiguration()
        configuration.retry = RetryPolicy(maxRetries: 3, baseDelay: .milliseconds(5), maxDelay: .milliseconds(20))
        let q = try pool.queue(named: "net", persistent: false, configuration: configuration)
        struct Flaky: Error {}
        struct Fatal: Error {}

        let attempts = CallCounter()
        let value = try await q.execute(kind: "download") { op in
            attempts.add("a")
            if op.attempt < 3 { throw RetryableError(Flaky()) }
            return op.attempt
        }
        #expect(value == 3)
        #expect(q.records.last?.attempts == 3 && q.records.last?.state == .succeeded)

        let errors = CallCounter()
        await #expect(throws: Flaky.self) {
            try await q.execute(kind: "download", onError: { _ in errors.add("e") }) { _ -> Int in throw RetryableError(Flaky()) }
        }
        #expect(q.records.last?.attempts == 4 && q.records.last?.state == .failed)   // 1 + maxRetries
        #expect(errors.counts == ["e": 1])

        await #expect(throws: Fatal.self) {
            try await q.execute(kind: "download", onError: { _ in errors.add("e") }) { _ -> Int in throw Fatal() }
        }
        #expect(q.records.last?.attempts == 1)
        #expect(errors.counts == ["e": 2])
        #expect(q.stats.retried == 2 + 3 && q.stats.failed == 2 && q.stats.completed == 1)
        // A failed operation does not block the queue.
        #expect(try await q.execute(kind: "after") { _ in 1 } == 1)
    }

    @Test func backoffDelaysStayWithinTheirCaps() {
        let policy = RetryPolicy(maxRetries: 10, baseDelay: .milliseconds(10), maxDelay: .milliseconds(50))
        for retry in 1...8 {
            let cap = min(50, 10 << (retry - 1))
            let samples = (0..<200).map { _ in policy.delay(beforeRetry: retry) }
            #expect(samples.allSatisfy { $0 >= .zero && $0 <= .milliseconds(cap) })
            #expect(samples.contains { $0 > .milliseconds(cap) / 2 }, "no jitter spread at retry \(retry)")
        }
    }

    @Test func badInputIsRejectedBeforeAnythingIsRecorded() async throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("i.pool"))
        let q = try pool.queue(named: "x")
        await #expect(throws: PMLLError.payloadTooLarge(bytes: 1025, limit: 1024)) {
            try await q.execute(kind: "k", payload: [UInt8](repeating: 1, count: 1025)) { _ in }
        }
        await #expect(throws: PMLLError.self) { try await q.execute(kind: "", payload: []) { _ in } }
        await #expect(throws: PMLLError.self) { try await q.execute(kind: String(repeating: "k", count: 64)) { _ in } }
        #expect(q.records.isEmpty)
        #expect(throws: PMLLError.self) { try pool.queue(named: "") }
        #expect(throws: PMLLError.self) { try pool.queue(named: String(repeating: "q", count: 245)) }
        #expect(throws: PMLLError.queueMismatch(name: "x", reason: "it is persistent")) { try pool.queue(named: "x", persistent: false) }
        #expect(throws: PMLLError.self) { try pool.lock(named: "pmll:queue/x", level: .package) }
        // 1024 bytes is fine and comes back intact.
        let payload = (0..<1024).map { UInt8($0 % 251) }
        try await q.execute(kind: "k", payload: payload) { op in #expect(op.payload == payload) }
        #expect(q.records.last?.payload == payload)
    }

    @Test func waitingForTheTurnHonoursTimeoutAndLeavesNoBlockingTicket() async throws {
        let scratch = Scratch()
        let path = scratch.file("t.pool"), state = scratch.file("state")
        let runner = try Child.worker("queue-hold", "--pool", path, "--queue", "t", "--state-file", state)
        defer { runner.kill(); runner.wait() }
        _ = try #require(runner.waitForEvent("running"))
        let pool = try Pool.open(path: path)
        let q = try pool.queue(named: "t")
        do {
            _ = try await q.execute(kind: "late", timeout: .milliseconds(200)) { _ in Issue.record("ran out of turn") }
            Issue.record("no timeout")
        } catch PMLLError.queueTimeout(_, _, let blockedBy) {
            #expect(blockedBy?.ownerPid == runner.pid && blockedBy?.kind == "install")
        }
        #expect(q.records.last?.state == .void)
        let task = Task { try await q.execute(kind: "cancelled") { _ in } }
        try await Task.sleep(for: .milliseconds(100))
        task.cancel()
        await #expect(throws: PMLLError.self) { try await task.value }
        runner.kill(); runner.wait()
        // The voided tickets do not block: the next operation runs once the runner is gone.
        #expect(try await q.execute(kind: "next", timeout: .seconds(10)) { _ in 7 } == 7)
    }

    /// With the owner check at a minute, nothing moves by polling: every turn must be handed
    /// on by the finisher's wake of the next ticket's turn word, and a ticket voided behind
    /// a running operation must be passed by that operation's finish (its waiter is gone, so
    /// nobody else would move `serving`). Fails with the wake on `serving_word` instead of
    /// the turn word, and without the pass over finished records: either way C runs only at
    /// its deadline (checked: 29.9 and 29.7 s).
    @Test func turnsAreHandedOnByTheFinisherNotByPolling() async throws {
        let scratch = Scratch()
        var options = PoolOptions()
        options.ownerCheckInterval = .seconds(60)
        let pool = try Pool.open(path: scratch.file("turns.pool"), options: options)
        let q = try pool.queue(named: "turns")
        let done = CallCounter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<20 {
                group.addTask {
                    for _ in 0..<5 {
                        try await q.execute(kind: "turn", timeout: .seconds(30)) { _ in done.add("op") }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(done.counts["op"] == 100)

        // A runs until released; B gives up behind it (voided); C waits behind B.
        let release = Mutex(false)
        let running = Task {
            try await q.execute(kind: "a", timeout: .seconds(30)) { _ in
                done.add("a")
                while !release.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
            }
        }
        while done.counts["a"] == nil { try await Task.sleep(for: .milliseconds(5)) }
        await #expect(throws: PMLLError.self) {
            try await q.execute(kind: "b", timeout: .milliseconds(100)) { _ in Issue.record("b ran out of turn") }
        }
        #expect(q.records.last?.state == .void)
        let waiting = Task { try await q.execute(kind: "c", timeout: .seconds(30)) { _ in 3 } }
        try await Task.sleep(for: .milliseconds(100))
        let released = ContinuousClock.now
        release.withLock { $0 = true }
        try await running.value
        #expect(try await waiting.value == 3)
        // Without the pass, C would run at its deadline (its own last look moves `serving`).
        #expect(ContinuousClock.now - released < .seconds(10), "C waited \(ContinuousClock.now - released) after A finished")
    }

    /// A worker that ran one operation on queue "q" of a new pool, stopped at pause point
    /// `point` of its `finish`; the pool and the queue as this process sees them.
    private func finisherStopped(at point: String, in scratch: Scratch) throws -> (Child, Pool, HardenedQueue) {
        let path = scratch.file("finisher.pool")
        let stopped = try Child.worker("queue-ops", "--pool", path, "--queue", "q", "--count", "1", "--log", scratch.file("log"),
                                       "--sleep-milliseconds", "0", environment: ["PMLL_PAUSE_AT": point])
        do {
            try stopped.waitUntilStopped()
            let pool = try Pool.open(path: path)
            return (stopped, pool, try pool.queue(named: "q"))
        } catch {
            stopped.killTree()
            throw error
        }
    }

    /// A finished operation is passed on by its owner (after its barrier on pmem, beside it
    /// on an msync pool), not by a waiter that sees it finished: with the owner stopped after
    /// writing its end and before its pass (pause point `queue.ended`), the next operation
    /// waits through hundreds of owner checks and runs once the owner continues. (Waiters used to pass a finished
    /// record at sight, which could start the next operation before the finisher's barrier.)
    @Test func aFinishedOperationIsPassedOnByItsOwner() async throws {
        let scratch = Scratch()
        let (stopped, _, q) = try finisherStopped(at: "queue.ended", in: scratch)
        defer { stopped.killTree() }
        #expect(q.records.last?.state == .succeeded)
        await #expect(throws: PMLLError.self) {
            try await q.execute(kind: "next", timeout: .milliseconds(300)) { _ in Issue.record("ran before the finisher passed the turn on") }
        }
        kill(stopped.pid, SIGCONT)
        #expect(stopped.wait() == 0)
        #expect(try await q.execute(kind: "after", timeout: .seconds(10)) { _ in 1 } == 1)
        #expect(q.records.map(\.state) == [.succeeded, .void, .succeeded])
    }

    /// On an msync pool the finisher passes the turn before its own barrier, which then runs
    /// beside the next operation's: with the finisher stopped just before that barrier (pause
    /// point `queue.end-barrier`), the next operation runs at once. (Passed after the barrier,
    /// it would wait for the stopped finisher, as it does on real pmem.)
    @Test func theTurnIsPassedBeforeTheFinishersBarrier() async throws {
        let scratch = Scratch()
        let (stopped, pool, q) = try finisherStopped(at: "queue.end-barrier", in: scratch)
        defer { stopped.killTree() }
        if pool.status().persistentMemory {
            await #expect(throws: PMLLError.self) { try await q.execute(kind: "next", timeout: .milliseconds(300)) { _ in 2 } }
        } else {
            #expect(try await q.execute(kind: "next", timeout: .seconds(10)) { _ in 2 } == 2)
            #expect(q.records.map(\.state) == [.succeeded, .succeeded])
        }
        kill(stopped.pid, SIGCONT)
        #expect(stopped.wait() == 0)
    }

    @Test func batchesRunContiguously() async throws {
        let scratch = Scratch()
        let path = scratch.file("batch.pool"), log = scratch.file("log")
        let others = try (0..<2).map { _ in try Child.worker("queue-ops", "--pool", path, "--queue", "b", "--count", "20", "--log", log) }
        let pool = try Pool.open(path: path)
        let q = try pool.queue(named: "b")
        let fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        defer { close(fd) }
        let ops = (0..<5).map { i in
            BatchOperation(kind: "batch") { op -> Int in
                let line = "B b \(op.ticket) \(getpid()) 0\nE b \(op.ticket) \(getpid()) 0\n"
                _ = line.withCString { write(fd, $0, strlen($0)) }
                return i
            }
        }
        let results = try await q.executeBatch(ops)
        #expect(results.compactMap { try? $0.get() } == [0, 1, 2, 3, 4])
        for other in others { #expect(other.wait() == 0) }
        let mine = try readLog(log).enumerated().filter { $0.element.pid == getpid() && $0.element.begin }.map(\.offset)
        #expect(mine.count == 5)
        #expect(mine.last! - mine.first! == 8, "batch interleaved with other operations: lines \(mine)")
    }
}

final class CallCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [String: Int] = [:]
    func add(_ key: String) { lock.lock(); values[key, default: 0] += 1; lock.unlock() }
    var counts: [String: Int] { lock.lock(); defer { lock.unlock() }; return values }
}
