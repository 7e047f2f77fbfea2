import Foundation
import Testing

/// Async waiters never borrow threads: many tasks of one process awaiting one lock or one
/// queue all get their turn, with the process's thread count bounded (issue 21). Each
/// scenario runs in a `pmll-worker async-waiters` process, which samples its own
/// /proc/self/status while the waiters wait.
@Suite struct AsyncWaiterTests {
    /// Runs the worker to completion and returns its final report.
    func report(_ arguments: String..., timeout: Double = 120) throws -> [String: Any] {
        let child = try Child(Binaries.worker, ["async-waiters"] + arguments)
        #expect(child.wait(timeout: timeout) == 0, "\(child.stderr)")
        return try #require(child.events.first { $0["event"] as? String == "done" }, "\(child.stdout) \(child.stderr)")
    }

    /// A constant the thread count must stay under, whatever the number of waiters: the
    /// main thread, the cooperative pool (one per core), Dispatch's few, the sampler, the
    /// holder and PMLL's waiter thread. Before the waiter thread, every waiter took one.
    static let threadBound = 8 + ProcessInfo.processInfo.activeProcessorCount

    @Test(arguments: [100, 10_000])
    func waitersOfOneProcessAllGetTheLock(waiters: Int) throws {
        let scratch = Scratch()
        let r = try report("--pool", scratch.file("w.pool"), "--waiters", "\(waiters)", "--hold", "0.5")
        #expect(r["granted"] as? Int == waiters)
        #expect(r["failed"] as? Int == 0)
        #expect((r["maxThreads"] as! Int) <= Self.threadBound)
        // Every grant came after the holder's release.
        #expect((r["lastGrant"] as! Int) >= (r["released"] as! Int))
    }

    @Test(arguments: [100, 10_000])
    func queueOperationsOfOneProcessAllRun(operations: Int) throws {
        let scratch = Scratch()
        let r = try report("--pool", scratch.file("q.pool"), "--mode", "queue", "--waiters", "\(operations)")
        #expect(r["granted"] as? Int == operations)
        #expect(r["failed"] as? Int == 0)
        #expect((r["maxThreads"] as! Int) <= Self.threadBound)
    }

    /// Half of 10,000 waiters are cancelled half a second into a 3-second hold: every one of
    /// them ends while the lock is still held, and the other half get the lock after it.
    @Test func cancellingHalfTheWaitersEndsThemWhileTheLockIsHeld() throws {
        let scratch = Scratch()
        let child = try Child(Binaries.worker, ["async-waiters", "--pool", scratch.file("c.pool"), "--waiters", "10000",
                                                "--hold", "3", "--cancel-after", "0.5"])
        #expect(child.wait(timeout: 120) == 0, "\(child.stderr)")
        let r = try #require(child.events.first { $0["event"] as? String == "done" })
        let cancelledAt = try #require(child.events.first { $0["event"] as? String == "cancelling" }?["at"] as? Int)
        #expect(r["cancelled"] as? Int == 5000)
        #expect(r["granted"] as? Int == 5000)
        #expect(r["failed"] as? Int == 0)
        #expect((r["lastCancel"] as! Int) < (r["released"] as! Int))
        #expect((r["lastCancel"] as! Int) >= cancelledAt)
    }

    /// 4 processes × 1,000 async waiters behind one holder: the lock goes round the
    /// processes rather than draining one process's waiters first. Each process's median
    /// grant must fall in the middle half of the global grant order (draining one process at
    /// a time would put them at 1/8, 3/8, 5/8 and 7/8).
    @Test func waitersOfSeveralProcessesShareTheLockFairly() throws {
        let scratch = Scratch()
        let pool = scratch.file("f.pool"), log = scratch.file("grants"), go = scratch.file("go")
        let holder = try Child.worker("hold", "--pool", pool, "--lock", "worker", "--seconds", "3")
        _ = try #require(holder.waitForEvent("acquired"))
        let waiters = try (0..<4).map { _ in
            try Child(Binaries.worker, ["async-waiters", "--pool", pool, "--waiters", "1000", "--hold", "0",
                                        "--go-file", go, "--log", log])
        }
        _ = FileManager.default.createFile(atPath: go, contents: nil)
        for w in waiters { #expect(w.wait(timeout: 120) == 0, "\(w.stderr)") }
        holder.wait()
        let grants = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
            .map { $0.split(separator: " ") }.sorted { Int($0[1])! < Int($1[1])! }.map { Int32($0[0])! }
        #expect(grants.count == 4000)
        for w in waiters {
            let positions = grants.indices.filter { grants[$0] == w.pid }
            #expect(positions.count == 1000)
            let median = positions[positions.count / 2]
            #expect(median >= 1000 && median <= 3000, "process \(w.pid)'s median grant is #\(median) of 4000")
        }
    }
}
