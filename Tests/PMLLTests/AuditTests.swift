import Foundation
import PMLL
import Testing

/// The audit log (Docs/Audit.md) with real processes: records of every kind written by `pmll`
/// commands, a writer and a drainer SIGKILLed mid-append, and `pmll audit verify` catching each
/// kind of tampering.
@Suite("Audit log", .serialized)
struct AuditTests {
    static func events(_ pool: String) throws -> [[String: Any]] {
        let shown = try run(Binaries.pmll, ["audit", "show", "--json", "--pool", pool])
        #expect(shown.status == 0, "\(shown.stderr)")
        return shown.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    static func verify(_ pool: String, _ extra: [String] = []) throws -> (status: Int32, stdout: String, stderr: String) {
        try run(Binaries.pmll, ["audit", "verify", "--pool", pool] + extra)
    }

    /// The log numbers its records 1, 2, ... without a hole, holds one commit record for each
    /// of `keys`, and verifies.
    static func expectEachCommitOnce(_ pool: String, keys: [String]) throws {
        let records = try events(pool)
        #expect(records.compactMap { $0["seq"] as? Int } == Array(1...records.count), "\(records)")
        for key in keys {
            #expect(records.filter { ($0["object"] as? String ?? "").contains("keys: \(key)") }.count == 1, "\(key): \(records)")
        }
        #expect(try verify(pool).status == 0)
    }

    @Test func everyKindOfEventIsRecordedByRealProcesses() throws {
        let scratch = Scratch()
        let pool = scratch.file("a.pool"), tree = scratch.file("tree"), batch = scratch.file("batch.json")
        func pmll(_ arguments: [String], _ env: [String: String] = [:]) throws -> (status: Int32, stdout: String, stderr: String) {
            try run(Binaries.pmll, arguments, environment: env)
        }
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        #expect(try pmll(["state", "set", "--pool", pool, "pkg/a=1", "pkg/b=2"]).status == 0)                  // store.commit
        let steps = scratch.file("steps.json")
        try #"{"audit": {"queue_steps": true}}"#.write(toFile: steps, atomically: true, encoding: .utf8)
        #expect(try pmll(["queue", "exec", "--pool", pool, "--config", steps, "q", "--", "true"]).status == 0)   // submit, start, complete
        #expect(try pmll(["queue", "exec", "--pool", pool, "q", "--", "false"]).status == 1)                     // queue.fail
        // Killed in its turn: abandoned when the next operation finds it, then recovered.
        let running = try Child(Binaries.pmll, ["queue", "exec", "--pool", pool, "q", "--", "sleep", "30"])
        #expect(running.waitForEvent("never", timeout: 0.5) == nil)
        running.killParentFirst()
        running.wait()
        #expect(try pmll(["queue", "exec", "--pool", pool, "q", "--", "true"]).status == 0)                      // queue.abandon
        #expect(try pmll(["recover", "--pool", pool, "--acknowledge"]).status == 0)                              // queue.recover, admin.recover
        // A holder killed: the next holder takes over and is told.
        let holder = try Child(Binaries.pmll, ["lock", "--pool", pool, "cache", "--", "sleep", "30"])
        #expect(holder.waitForEvent("never", timeout: 0.5) == nil)
        holder.killParentFirst()
        holder.wait()
        #expect(try pmll(["lock", "--pool", pool, "cache", "--", "true"]).status == 0)                           // lock.owner-death
        let busy = try Child(Binaries.pmll, ["lock", "--pool", pool, "busy", "--", "sleep", "5"])
        defer { busy.killTree(); busy.wait() }
        #expect(busy.waitForEvent("never", timeout: 0.5) == nil)
        #expect(try pmll(["lock", "--pool", pool, "--timeout", "0.2", "busy", "--", "true"]).status == 75)       // lock.timeout
        let nested = try pmll(["lock", "--pool", pool, "--level", "network", "n", "--", Binaries.pmll, "lock", "--pool", pool, "--level", "package", "p", "--", "true"])
        #expect(nested.status == 64, "\(nested.stderr)")                                                        // lock.hierarchy-violation
        try #"[{"op": "write", "path": "one.txt", "data": "1"}]"#.write(toFile: batch, atomically: true, encoding: .utf8)
        #expect(try pmll(["batch", "apply", "--pool", pool, "--root", tree, "--atomic", batch]).status == 0)     // batch.apply
        try "untrusted RWQ\n".write(toFile: scratch.file("k.pub"), atomically: true, encoding: .utf8)
        let unsigned = try pmll(["batch", "apply", "--pool", pool, "--root", tree, "--atomic", "--trusted-key", scratch.file("k.pub"), batch])
        #expect(unsigned.status == 77 || unsigned.status == 65, "\(unsigned.stderr)")
        // An insert killed once logged, before its record was written: the next opener rolls it back.
        #expect(try pmll(["state", "set", "--pool", pool, "pkg/new=3"], ["PMLL_CRASH_AT": "tx.undo-logged"]).status == 137)
        #expect(try pmll(["state", "get", "--pool", pool, "pkg/new"]).status == 1)                              // store.rollback
        #expect(try pmll(["check", "--pool", pool]).status == 0)                                                 // admin.check
        #expect(try pmll(["backup", "--pool", pool, scratch.file("a.backup")]).status == 0)                      // admin.backup
        #expect(try pmll(["audit", "seal", "--pool", pool]).status == 0)                                         // admin.seal
        let policy = scratch.file("policy.json")
        try #"{"rules": [{"name": "not-root", "action": "lock", "match": "denied/*", "users": [12345]}]}"#.write(toFile: policy, atomically: true, encoding: .utf8)
        #expect(try pmll(["policy", "set", "--pool", pool, policy]).status == 0)                                 // admin.policy
        #expect(try pmll(["lock", "--pool", pool, "denied/x", "--", "true"]).status == 77)                       // access.denied
        #expect(try pmll(["policy", "clear", "--pool", pool]).status == 0)
        // A writer killed after claiming its slot: a gap record, and the chain still verifies.
        #expect(try pmll(["state", "set", "--pool", pool, "pkg/c=1"], ["PMLL_CRASH_AT": "audit.claimed"]).status == 137)

        let records = try Self.events(pool)
        let kinds = Set(records.compactMap { $0["event"] as? String })
        for kind in ["store.commit", "queue.submit", "queue.start", "queue.complete", "queue.fail", "queue.abandon", "queue.recover",
                     "admin.recover", "lock.owner-death", "lock.timeout", "lock.hierarchy-violation", "batch.apply", "store.rollback",
                     "admin.check", "admin.backup", "admin.seal", "admin.policy", "admin.reset", "access.denied", "gap"] + (unsigned.status == 77 ? ["signature.rejected"] : []) {
            #expect(kinds.contains(kind), "no \(kind) record in \(kinds.sorted())")
        }
        // Numbers run 1, 2, 3, ... and every record names its process.
        #expect(records.compactMap { $0["seq"] as? Int } == Array(1...records.count))
        for r in records where r["event"] as? String != "gap" {
            #expect((r["pid"] as? Int ?? 0) > 0 && !(r["command"] as? String ?? "").isEmpty, "\(r)")
        }
        let gap = try #require(records.first { $0["event"] as? String == "gap" })
        #expect((gap["object"] as? String ?? "").contains("died while appending"), "\(gap)")
        #expect(records.contains { ($0["object"] as? String ?? "").contains("keys: pkg/a pkg/b") })
        let verified = try Self.verify(pool)
        #expect(verified.status == 0, "\(verified.stderr)")
        #expect(verified.stdout.contains("1 signed checkpoint(s) verified"), "\(verified.stdout)")
    }

    /// A queue operation is one record when it ends, saying when it was submitted and started
    /// (its attempt, how long it waited and ran); every step is recorded only when asked for
    /// (`audit.queue_steps`). An operation that never ran, or whose process died, still has
    /// its one record.
    @Test func aQueueOperationIsOneRecordUnlessItsStepsAreAskedFor() throws {
        let scratch = Scratch()
        let pool = scratch.file("q.pool")
        // Keeps the pool open: the dead operations below are found by the next operation,
        // not by the volatile reset of a process that opens the pool alone.
        let holder = try Child(Binaries.pmll, ["lock", "--pool", pool, "open", "--", "sleep", "30"])
        defer { holder.stopIfRunning() }
        #expect(holder.waitForEvent("never", timeout: 0.5) == nil)
        #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "q", "--", "true"]).status == 0)
        var records = try Self.events(pool).filter { ($0["event"] as? String ?? "").hasPrefix("queue.") }
        #expect(records.map { $0["event"] as? String ?? "" } == ["queue.complete"], "\(records)")
        let complete = records.first?["object"] as? String ?? ""
        #expect(complete.hasPrefix("queue 'q' ticket 0 kind 'exec' attempt 1, waited ") && complete.hasSuffix(" ns"), "\(complete)")

        let steps = scratch.file("steps.json")
        try #"{"audit": {"queue_steps": true}}"#.write(toFile: steps, atomically: true, encoding: .utf8)
        #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "--config", steps, "q", "--", "true"]).status == 0)
        records = try Self.events(pool).filter { ($0["object"] as? String ?? "").hasPrefix("queue 'q' ticket 1 ") }
        #expect(records.map { $0["event"] as? String ?? "" } == ["queue.submit", "queue.start", "queue.complete"], "\(records)")

        // Behind a running operation: one that gives up waiting, and one whose process is killed.
        let running = try Child(Binaries.pmll, ["queue", "exec", "--pool", pool, "q", "--", "sleep", "30"])
        defer { running.stopIfRunning() }
        #expect(running.waitForEvent("never", timeout: 0.5) == nil)
        #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "--timeout", "0.2", "q", "--", "true"]).status == 75)
        let queued = try Child(Binaries.pmll, ["queue", "exec", "--pool", pool, "q", "--", "true"])
        defer { queued.stopIfRunning() }
        #expect(queued.waitForEvent("never", timeout: 0.5) == nil)
        queued.killParentFirst()
        queued.wait()
        running.killParentFirst()
        running.wait()
        #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "q", "--", "true"]).status == 0)
        records = try Self.events(pool)
        func object(_ ticket: Int) -> String? {
            records.first { ($0["object"] as? String ?? "").hasPrefix("queue 'q' ticket \(ticket) ") }?["object"] as? String
        }
        let gaveUp = try #require(object(3), "\(records)")
        #expect(gaveUp.contains(": never ran (gave up waiting for its turn), submitted at ") && !gaveUp.contains("started at"), "\(gaveUp)")
        let killedRunning = try #require(object(2), "\(records)")
        #expect(killedRunning.contains(" died while running, attempt 1, submitted at ") && killedRunning.contains(", started at "), "\(killedRunning)")
        let killedQueued = try #require(object(4), "\(records)")
        #expect(killedQueued.contains(" died while queued, submitted at "), "\(killedQueued)")

        // Killed once its final state is written: its record was appended before that state.
        #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "q", "--", "true"], environment: ["PMLL_CRASH_AT": "queue.ended"]).status == 137)
        #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "q", "--", "true"]).status == 0)
        records = try Self.events(pool)
        let ended = records.filter { ($0["object"] as? String ?? "").hasPrefix("queue 'q' ticket 6 ") }
        #expect(ended.map { $0["event"] as? String ?? "" } == ["queue.complete"], "\(records)")
        #expect(try Self.verify(pool).status == 0)
    }

    /// A writer killed after taking its number and before claiming its slot: nothing names it,
    /// so the drain waits for the stall time (1 s) and then writes a gap; the records behind it
    /// wait only that long.
    @Test func aWriterKilledBetweenItsNumberAndItsSlotIsAGapAfterOneSecond() throws {
        let scratch = Scratch()
        let pool = scratch.file("r.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "a=1"]).status == 0)
        // Someone keeps the pool open, so that no volatile reset (where every writer is gone
        // and gaps are written at once) hides the wait.
        let holder = try Child(Binaries.pmll, ["lock", "--pool", pool, "open", "--", "sleep", "30"])
        defer { holder.killTree(); holder.wait() }
        #expect(holder.waitForEvent("never", timeout: 0.5) == nil)
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "b=2"], environment: ["PMLL_CRASH_AT": "audit.reserved"]).status == 137)
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "c=3"]).status == 0)   // its drain sees the slot first
        usleep(1_300_000)
        let records = try Self.events(pool)
        let gap = try #require(records.first { $0["event"] as? String == "gap" }, "\(records)")
        #expect((gap["object"] as? String ?? "").contains("never wrote it"), "\(gap)")
        #expect(records.contains { ($0["object"] as? String ?? "").contains("keys: c") })
        #expect(records.compactMap { $0["seq"] as? Int } == Array(1...records.count))
        let verified = try Self.verify(pool)
        #expect(verified.status == 0, "\(verified.stderr)")
    }

    /// On tmpfs, where records carry no checksum (a version 3 ring), a writer killed after
    /// claiming its slot is still a gap record among the others' records, and the chain verifies.
    @Test func aWriterKilledMidRecordOnTmpfsIsAGap() throws {
        let scratch = Scratch(in: "/dev/shm")
        let pool = scratch.file("t.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "a=1"]).status == 0)
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "b=2"], environment: ["PMLL_CRASH_AT": "audit.claimed"]).status == 137)
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "c=3"]).status == 0)
        let records = try Self.events(pool)
        let gap = try #require(records.first { $0["event"] as? String == "gap" }, "\(records)")
        #expect((gap["object"] as? String ?? "").contains("died while appending"), "\(gap)")
        for key in ["a", "c"] { #expect(records.contains { ($0["object"] as? String ?? "").contains("keys: \(key)") }, "\(records)") }
        #expect(records.compactMap { $0["seq"] as? Int } == Array(1...records.count))
        let verified = try Self.verify(pool)
        #expect(verified.status == 0, "\(verified.stderr)")
    }

    /// A drainer killed after writing records and before saying so in the ring: the next one
    /// finds them in the file and does not write them again.
    @Test func aDrainerKilledAfterWritingLeavesNoDuplicates() throws {
        let scratch = Scratch()
        let pool = scratch.file("d.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "a=1"]).status == 0)
        let killed = try run(Binaries.pmll, ["state", "set", "--pool", pool, "b=2"], environment: ["PMLL_CRASH_AT": "audit.written"])
        #expect(killed.status == 137)
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "c=3"]).status == 0)
        try Self.expectEachCommitOnce(pool, keys: ["a", "b", "c"])
    }

    /// A process's drains keep the audit file open from one to the next (AuditDrainSession);
    /// a drainer of another process killed between its write and its publish leaves the file
    /// longer than that process's last drain left it, with the ring unchanged. The next drain
    /// must find those lines as a fresh drain would (not write the record again).
    @Test func aDrainKeptOpenSeesLinesAnotherDrainerLeftBeforeItDied() throws {
        let scratch = Scratch()
        let path = scratch.file("k.pool")
        let pool = try Pool.open(path: path)
        try pool.transaction { tx in try tx.set("a", "1") }
        #expect(try pool.drainAuditLog() >= 1)   // this process's drain now holds the file open
        let killed = try run(Binaries.pmll, ["state", "set", "--pool", path, "b=2"], environment: ["PMLL_CRASH_AT": "audit.written"])
        #expect(killed.status == 137)
        try pool.transaction { tx in try tx.set("c", "3") }
        #expect(try pool.drainAuditLog() >= 1)
        try Self.expectEachCommitOnce(path, keys: ["a", "b", "c"])
    }

    /// A commit's record carries the wall-clock time of its commit point, which the commit
    /// derives from its own monotonic reading (no second read of the clock): each record's
    /// time lies between the wall clock read before the transaction and after it, on the
    /// parallel path (a value replaced in its slot) and the exclusive one (a new key), with
    /// the clocks' difference read again after pauses longer than it is kept.
    @Test func aCommitRecordCarriesTheWallClockTimeOfItsCommit() throws {
        let scratch = Scratch()
        let path = scratch.file("t.pool")
        let pool = try Pool.open(path: path)
        try pool.transaction { tx in try tx.set("a", "0") }   // from now on, sets of a replace it in place
        func wallClock() -> Int64 {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
        }
        var spans: [(key: String, before: Int64, after: Int64)] = []
        for i in 0..<40 {
            let key = i % 2 == 0 ? "a" : "new\(i)"
            let before = wallClock()
            try pool.transaction { tx in try tx.set(key, "\(i)") }
            spans.append((key, before, wallClock()))
            if i % 8 == 0 { usleep(30_000) }
        }
        _ = try pool.drainAuditLog()
        let commits = try AuditLog.records(directory: path + ".audit").filter { $0.event == "store.commit" }.suffix(spans.count)
        #expect(commits.count == spans.count)
        // The wall clock may be slewed meanwhile (at most 500 ppm): a millisecond is far more than that moves it.
        let slack: Int64 = 1_000_000
        for (record, span) in zip(commits, spans) {
            #expect(record.object == "keys: \(span.key)", "\(record.object)")
            #expect(record.timeNanoseconds >= span.before - slack && record.timeNanoseconds <= span.after + slack,
                    "\(span.key): \(record.timeNanoseconds) not in \(span.before)...\(span.after)")
        }
    }

    /// A file moved away while a process keeps it open for its drains: the next drain writes
    /// where the pool's files belong, as a drain that opens the path would, not into the moved file.
    @Test func aDrainKeptOpenFollowsTheFilesPathNotAMovedFile() throws {
        let scratch = Scratch()
        let path = scratch.file("m.pool")
        let pool = try Pool.open(path: path)
        try pool.transaction { tx in try tx.set("a", "1") }
        #expect(try pool.drainAuditLog() >= 1)
        let file = path + ".audit/000001.log", moved = scratch.file("moved.log")
        #expect(rename(file, moved) == 0)
        try pool.transaction { tx in try tx.set("b", "2") }
        #expect(try pool.drainAuditLog() >= 1)
        let kept = try String(contentsOfFile: file, encoding: .utf8)
        #expect(kept.contains("keys: b") && !kept.contains("keys: a"), "\(kept)")
        #expect(!(try String(contentsOfFile: moved, encoding: .utf8)).contains("keys: b"))
    }

    /// A drainer stopped (SIGSTOP) while it holds the drain: another process still closes the
    /// pool at once, leaving its records in the ring; an explicit drain gives up with a
    /// timeout instead of waiting for as long as the drainer stays stopped; once it runs
    /// again, every record reaches the files once, in order.
    @Test func aDrainerStoppedHoldingTheDrainHoldsNoOneUp() throws {
        let scratch = Scratch()
        let pool = scratch.file("s.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "a=1"]).status == 0)
        let stopped = try Child(Binaries.pmll, ["state", "set", "--pool", pool, "b=2"], environment: ["PMLL_PAUSE_AT": "audit.written"])
        defer { stopped.stopIfRunning() }
        try stopped.waitUntilStopped()

        let other = try run(Binaries.pmll, ["state", "set", "--pool", pool, "c=3"], timeout: 30)
        #expect(other.status == 0, "\(other.stderr)")
        let shown = try run(Binaries.pmll, ["audit", "show", "--pool", pool], timeout: 30)
        #expect(shown.status == 75, "\(shown)")
        #expect(shown.stderr.hasPrefix("pmll: timed out"), "\(shown.stderr)")

        stopped.kill(SIGCONT)
        #expect(stopped.wait() == 0)
        try Self.expectEachCommitOnce(pool, keys: ["a", "b", "c"])
    }

    /// Behind a drainer stopped while it holds the drain, the ring fills; a process that keeps
    /// committing waits once (5 s), then drops its records at once while the drain stays where
    /// it was, and says at exit how many it could not report (one wait per record would make
    /// the 136 commits past the ring's 64 slots take 11 minutes).
    @Test func aFullRingBehindAStoppedDrainerCostsOneWaitNotOnePerRecord() throws {
        let scratch = Scratch()
        let pool = scratch.file("f.pool")
        do {
            var options = PoolOptions()
            options.auditRingSlots = 64
            let p = try Pool.open(path: pool, options: options)
            try p.transaction { tx in try tx.set("k", "0") }
        }
        let stopped = try Child(Binaries.pmll, ["state", "set", "--pool", pool, "b=2"], environment: ["PMLL_PAUSE_AT": "audit.written"])
        defer { stopped.stopIfRunning() }
        try stopped.waitUntilStopped()

        let counter = try run(Binaries.worker, ["tx-counter", "--pool", pool, "--threads", "1", "--count", "200", "--key", "k"], timeout: 60)
        #expect(counter.status == 0, "\(counter.stderr)")
        #expect(counter.stderr.contains("not reported in the audit log"), "\(counter.stderr)")

        stopped.kill(SIGCONT)
        #expect(stopped.wait() == 0)
        #expect(try Self.verify(pool).status == 0)
        #expect(try Pool.open(path: pool).value(for: "k").map { String(decoding: $0, as: UTF8.self) } == "200")
    }

    @Test func verifyCatchesAFlippedByteARemovedRecordAReorderedPairAndATruncation() throws {
        let scratch = Scratch()
        let pool = scratch.file("t.pool")
        for i in 0..<6 { #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "k\(i)=v\(i)"]).status == 0) }
        #expect(try run(Binaries.pmll, ["audit", "seal", "--pool", pool]).status == 0)
        let file = pool + ".audit/000001.log"
        let good = try String(contentsOfFile: file, encoding: .utf8)
        var lines = good.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.count >= 8)
        func refused(_ text: String, _ expected: String) throws {
            try text.write(toFile: file, atomically: false, encoding: .utf8)
            let r = try Self.verify(pool)
            #expect(r.status == 65 && r.stderr.hasPrefix("pmll: audit log of pool") && r.stderr.contains(expected), "\(r.status) \(r.stderr)")
            try good.write(toFile: file, atomically: false, encoding: .utf8)
        }
        var flipped = lines
        flipped[3] = flipped[3].replacingOccurrences(of: "keys: k2", with: "keys: k9")
        try refused(flipped.joined(separator: "\n"), "record 3 (000001.log line 4) does not match its hash")
        var removed = lines
        removed.remove(at: 3)
        try refused(removed.joined(separator: "\n"), "record 3 is missing")
        var swapped = lines
        swapped.swapAt(3, 4)
        try refused(swapped.joined(separator: "\n"), "out of order")
        try refused(lines.prefix(4).joined(separator: "\n") + "\n", "missing: the log was truncated")
        // A checkpoint with an altered head is caught by its signature.
        let checkpoints = pool + ".audit/checkpoints.log"
        let sealed = try String(contentsOfFile: checkpoints, encoding: .utf8)
        try sealed.replacingOccurrences(of: "\"size\":", with: "\"size\":1").write(toFile: checkpoints, atomically: false, encoding: .utf8)
        let r = try Self.verify(pool)
        #expect(r.status == 65 && r.stderr.contains("bad signature"), "\(r.stderr)")
        try sealed.write(toFile: checkpoints, atomically: false, encoding: .utf8)
        lines.removeAll()
        #expect(try Self.verify(pool).status == 0)
    }

    /// A pool restored from a backup continues the chain its files already hold.
    @Test func aRestoredPoolContinuesTheChain() throws {
        let scratch = Scratch()
        let pool = scratch.file("r.pool"), backup = scratch.file("r.backup")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "a=1"]).status == 0)
        #expect(try run(Binaries.pmll, ["backup", "--pool", pool, backup]).status == 0)
        for i in 0..<3 { #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "b\(i)=2"]).status == 0) }
        #expect(try run(Binaries.pmll, ["restore", "--pool", pool, backup]).status == 0)
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "c=3"]).status == 0)
        let records = try Self.events(pool)
        #expect(records.compactMap { $0["seq"] as? Int } == Array(1...records.count))
        #expect(records.last?["object"] as? String == "keys: c")
        #expect(try Self.verify(pool).status == 0)
    }

    /// Small files: the log rotates, every file continues the one before, and a missing
    /// middle file is named.
    @Test func rotatedFilesChainAndAMissingOneIsNamed() throws {
        let scratch = Scratch()
        let path = scratch.file("rot.pool")
        var options = PoolOptions()
        options.auditFileBytes = 4096
        do {
            let pool = try Pool.open(path: path, options: options)
            for i in 0..<200 { try pool.transaction(isolation: .none) { tx in try tx.set("k\(i)", "v") } }
            let v = try pool.verifyAuditLog()
            #expect(v.problem == nil && v.records >= 200 && v.files >= 5, "\(v)")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: path + ".audit").filter { $0.hasSuffix(".log") }.sorted()
        #expect(files.count >= 5)
        try FileManager.default.removeItem(atPath: path + ".audit/" + files[2])
        let r = try Self.verify(path)
        #expect(r.status == 65 && r.stderr.contains("audit file \(files[2]) is missing"), "\(r.stderr)")
    }

    /// Someone who may read the audit files but not open the pool (here: a pool that belongs to
    /// another user) still shows and verifies the log, from the files alone.
    @Test func theLogIsReadFromItsFilesWhenThePoolCannotBeOpened() throws {
        let scratch = Scratch()
        let pool = scratch.file("o.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "a=1"]).status == 0)
        #expect(chown(pool, 65534, 65534) == 0)
        #expect(try run(Binaries.pmll, ["lock", "--pool", pool, "x", "--", "/bin/true"]).status == 77)
        let status = try run(Binaries.pmll, ["status", "--pool", pool])
        #expect(status.status == 0 && status.stdout.contains("(read-only view)"), "\(status)")
        let shown = try run(Binaries.pmll, ["audit", "show", "--pool", pool])
        #expect(shown.status == 0 && shown.stdout.contains("store.commit ok: keys: a"), "\(shown.stdout) \(shown.stderr)")
        #expect(try Self.verify(pool).status == 0)
        let file = pool + ".audit/000001.log"
        try (try String(contentsOfFile: file, encoding: .utf8)).replacingOccurrences(of: "keys: a", with: "keys: b").write(toFile: file, atomically: false, encoding: .utf8)
        let r = try Self.verify(pool)
        #expect(r.status == 65 && r.stderr.contains("record 1"), "\(r.stderr)")
    }
}
