import Foundation
import PMLL
import Testing

@Suite("pmll command", .serialized)
struct CLITests {
    @Test func runsTheCommandAndPassesItsStatusThrough() throws {
        let scratch = Scratch()
        let pool = scratch.file("cli.pool")
        let ok = try run(Binaries.pmll, ["lock", "--pool", pool, "x", "--", "sh", "-c", "echo in; exit 3"])
        #expect(ok.status == 3)
        #expect(ok.stdout == "in")
        let env = try run(Binaries.pmll, ["lock", "--pool", pool, "--level", "filesystem", "y", "--", "sh", "-c", "echo $PMLL_HELD_LOCKS"])
        #expect(env.stdout == "3:y")
    }

    /// The README's main job: worker processes contend, the holder is SIGKILLed, a survivor
    /// takes over and repairs. Its report must say so, with a takeover time that is not
    /// negative (the kill was stamped after `kill()` returned, and the survivor could see the
    /// death first: "-0.10 ms after the kill").
    @Test func theDemoKillsAHolderAndASurvivorTakesOver() throws {
        let scratch = Scratch()
        let demo = try run(Binaries.pmll, ["demo", "--pool", scratch.file("demo.pool"), "--workers", "3", "--iterations", "8", "--hold-milliseconds", "10"], timeout: 120)
        #expect(demo.status == 0, "\(demo.stderr)")
        #expect(demo.stdout.contains("verdict: OK"), "\(demo.stdout)")
        #expect(demo.stdout.contains("1 owner deaths"), "\(demo.stdout)")
        let takeover = try #require(demo.stdout.split(separator: "\n").first { $0.hasPrefix("takeover: ") }, "\(demo.stdout)")
        let milliseconds = try #require(takeover.split(separator: " ").dropLast(4).last.flatMap { Double($0) }, "\(takeover)")
        #expect(milliseconds >= 0, "\(takeover)")
    }

    /// Start-up (issue 23, Docs/Benchmarks.md): a `pmll lock` process maps no shared object but
    /// libc, libm and the loader. The Swift runtime, Foundation, libstdc++, GCC's unwinder,
    /// liburing and libsodium are linked in (CSupport/StaticLibs); each shared one cost 2-5 % of
    /// a `pmll lock`, and a build that silently falls back to one fails here. COMMAND reads
    /// the maps of its parent, the `pmll` process.
    @Test func aLockProcessMapsOnlyLibcLibmAndTheLoader() throws {
        let scratch = Scratch()
        let r = try run(Binaries.pmll, ["lock", "--pool", scratch.file("maps.pool"), "x", "--", "/bin/sh", "-c",
                                        "grep -o '/[^ ]*[.]so[^ ]*' /proc/$PPID/maps | sort -u"])
        #expect(r.status == 0, "\(r)")
        let objects = Set(r.stdout.split(separator: "\n").map { String($0.split(separator: "/").last ?? "") })
        #expect(!objects.isEmpty, "no shared object seen at all: the probe is broken (\(r))")
        #expect(objects.isSubset(of: ["libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2"]), "\(objects.sorted())")
    }

    @Test func timeoutExits75AndNamesTheHolder() throws {
        let scratch = Scratch()
        let pool = scratch.file("t.pool")
        let holder = try Child(Binaries.pmll, ["lock", "--pool", pool, "t", "--", "sleep", "30"])
        defer { holder.killTree(); holder.wait() }
        try waitUntilHeld(pool: pool, lock: "t")
        let result = try run(Binaries.pmll, ["lock", "--pool", pool, "--timeout", "0.8", "t", "--", "true"])
        #expect(result.status == 75)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.allSatisfy { $0.hasPrefix("pmll: ") })
        #expect(lines.contains { $0.contains("waiting for lock 't' held by pid \(holder.pid) (sleep)") })
        #expect(lines.last?.contains("timed out") == true)
        #expect(lines.last?.contains("pid \(holder.pid) (sleep)") == true)
    }

    @Test func deathOfTheHolderIsPassedToTheNextCommand() throws {
        let scratch = Scratch()
        let pool = scratch.file("d.pool")
        let holder = try Child(Binaries.pmll, ["lock", "--pool", pool, "d", "--", "sleep", "30"])
        try waitUntilHeld(pool: pool, lock: "d")
        holder.killTree()
        holder.wait()
        let next = try run(Binaries.pmll, ["lock", "--pool", pool, "--timeout", "10", "d", "--", "sh", "-c", "echo died=$PMLL_PREVIOUS_OWNER_DIED"])
        #expect(next.status == 0)
        #expect(next.stdout == "died=1")
        #expect(next.stderr.contains("pmll: warning: lock 'd': previous holder pid \(holder.pid)"))
        let after = try run(Binaries.pmll, ["lock", "--pool", pool, "d", "--", "sh", "-c", "echo died=$PMLL_PREVIOUS_OWNER_DIED"])
        #expect(after.stdout == "died=")
    }

    /// `rm` of a pool under a holder: a second `lock` must not create a fresh pool there (whose
    /// lock 'd' would be free while the holder still holds the old one's); it is refused with
    /// 75 naming the holder, and creates the pool once the holder has exited.
    @Test func aPoolDeletedUnderAHolderIsNotCreatedAgainUntilTheHolderExits() throws {
        let scratch = Scratch()
        let pool = scratch.file("gone.pool")
        let marker = scratch.file("second-ran")
        let holder = try Child(Binaries.pmll, ["lock", "--pool", pool, "d", "--", "sleep", "30"])
        try waitUntilHeld(pool: pool, lock: "d")
        #expect(unlink(pool) == 0)
        let refused = try run(Binaries.pmll, ["lock", "--pool", pool, "--timeout", "1", "d", "--", "touch", marker])
        #expect(refused.status == 75, "\(refused.stderr)")
        #expect(refused.stderr.hasPrefix("pmll: pool '\(pool)' was deleted or replaced while pid \(holder.pid) (pmll) still has its former file open"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: marker) && !FileManager.default.fileExists(atPath: pool))
        holder.killTree()
        holder.wait()
        let later = try run(Binaries.pmll, ["lock", "--pool", pool, "d", "--", "touch", marker])
        #expect(later.status == 0, "\(later.stderr)")
        #expect(FileManager.default.fileExists(atPath: marker))
    }

    /// `mv` of another pool over one in use: a second `lock` must not attach to the file moved
    /// in (its lock 'd' is free while the holder still holds the former file's); it is refused
    /// with 75 naming the holder, and attaches once the holder has exited. Both pools had been
    /// attached after their times settled, so their memos said "nothing to look for" (the
    /// directory's in one, the file's own in the other): the move must still be seen.
    @Test func aPoolReplacedUnderAHolderIsNotAttachedUntilTheHolderExits() throws {
        let scratch = Scratch()
        let pool = scratch.file("live.pool"), other = scratch.file("other.pool")
        let marker = scratch.file("second-ran")
        #expect(try run(Binaries.pmll, ["lock", "--pool", other, "x", "--", "true"]).status == 0)
        #expect(try run(Binaries.pmll, ["lock", "--pool", pool, "x", "--", "true"]).status == 0)
        Thread.sleep(forTimeInterval: 0.3)
        #expect(try run(Binaries.pmll, ["lock", "--pool", pool, "x", "--", "true"]).status == 0)
        #expect(try run(Binaries.pmll, ["lock", "--pool", other, "x", "--", "true"]).status == 0)
        #expect(readU64(pool, field: 576 / 8) != 0, "the header's unreplaced_memo was not stored")
        #expect(readU64(other, field: 584 / 8) != 0, "the moved file's unreplaced_file_memo was not stored")
        let holder = try Child(Binaries.pmll, ["lock", "--pool", pool, "d", "--", "sleep", "30"])
        try waitUntilHeld(pool: pool, lock: "d")
        #expect(rename(other, pool) == 0)
        let refused = try run(Binaries.pmll, ["lock", "--pool", pool, "--timeout", "1", "d", "--", "touch", marker])
        #expect(refused.status == 75, "\(refused.stderr)")
        #expect(refused.stderr.hasPrefix("pmll: pool '\(pool)' was deleted or replaced while pid \(holder.pid) (pmll) still has its former file open"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: marker))
        holder.killTree()
        holder.wait()
        let later = try run(Binaries.pmll, ["lock", "--pool", pool, "d", "--", "touch", marker])
        #expect(later.status == 0, "\(later.stderr)")
        #expect(FileManager.default.fileExists(atPath: marker))
    }

    /// `lock` puts off swift-log's bootstrap until the library makes a logger (start-up,
    /// issue 23): a line it logs must still come through the command's handler, at the level
    /// `PMLL_LOG_LEVEL` sets (default warning), in the command's format. A lone open after a
    /// holder was killed resets the pool's volatile state and logs that at debug level.
    @Test func aLockThatLogsStillUsesTheCommandsLogHandler() throws {
        let scratch = Scratch()
        let pool = scratch.file("log.pool")
        for level in ["debug", ""] {
            let holder = try Child(Binaries.pmll, ["lock", "--pool", pool, "h", "--", "sleep", "30"])
            try waitUntilHeld(pool: pool, lock: "h")
            holder.killTree()
            holder.wait()
            let r = try run(Binaries.pmll, ["lock", "--pool", pool, "x", "--", "true"],
                            environment: level.isEmpty ? [:] : ["PMLL_LOG_LEVEL": level])
            #expect(r.status == 0, "\(r)")
            if level == "debug" {
                #expect(r.stderr.contains(" debug pmll.pool: dead slots=1 ") && r.stderr.contains("pool volatile state reset"), "\(r)")
            } else {
                #expect(r.stderr.isEmpty, "a debug line passed the default level: \(r)")
            }
        }
    }

    @Test func commandKilledBySignalMarksTheLock() throws {
        let scratch = Scratch()
        let pool = scratch.file("s.pool")
        let killed = try run(Binaries.pmll, ["lock", "--pool", pool, "s", "--", "sh", "-c", "kill -9 $$"])
        #expect(killed.status == 128 + 9)
        let next = try run(Binaries.pmll, ["lock", "--pool", pool, "s", "--", "sh", "-c", "echo died=$PMLL_PREVIOUS_OWNER_DIED"])
        #expect(next.stdout == "died=1")
        #expect(next.stderr.contains("released the lock without finishing"))
    }

    /// While a COMMAND runs on, `pmll lock` drops its program text's page-table entries, so
    /// that killed while it holds the lock it is torn down sooner and a waiter that shares its
    /// CPU takes over sooner (Docs/Benchmarks.md, "Program text dropped while COMMAND runs").
    /// COMMAND reads how much of its parent's executable text is mapped after 300 ms (several
    /// MB without the drop); the status still passes through and the lock is released after it.
    @Test func aLongCommandLeavesItsWaitingParentLittleToTearDown() throws {
        let scratch = Scratch()
        let pool = scratch.file("text.pool")
        let measure = """
            sleep 0.3; exe=$(readlink /proc/$PPID/exe)
            awk -v exe="$exe" '/^[0-9a-f]+-[0-9a-f]+ / { m = ($6 == exe && $2 ~ /^r-x/) } m && /^Rss:/ { kb += $2 } END { print kb + 0 }' /proc/$PPID/smaps
            exit 7
            """
        let r = try run(Binaries.pmll, ["lock", "--pool", pool, "text", "--", "/bin/sh", "-c", measure])
        #expect(r.status == 7, "\(r)")
        let mapped = try #require(Int(r.stdout), "\(r)")
        #expect(mapped < 1024, "\(mapped) kB of the pmll executable's text still mapped after 300 ms of COMMAND")
        let next = try run(Binaries.pmll, ["lock", "--pool", pool, "--timeout", "5", "text", "--", "true"])
        #expect(next.status == 0, "\(next)")
    }

    @Test func sigintCancelsTheWait() throws {
        let scratch = Scratch()
        let pool = scratch.file("i.pool")
        let holder = try Child(Binaries.pmll, ["lock", "--pool", pool, "i", "--", "sleep", "30"])
        defer { holder.killTree(); holder.wait() }
        try waitUntilHeld(pool: pool, lock: "i")
        let waiter = try Child(Binaries.pmll, ["lock", "--pool", pool, "i", "--", "true"])
        try waitForWaiters(pool: pool, lock: "i")
        waiter.kill(SIGINT)
        #expect(waiter.wait(timeout: 5) == 130)
        #expect(waiter.stderr.contains("pmll: wait for lock 'i' cancelled"))
    }

    /// Scripts run `pmll lock` in loops (issue 23): on a free lock the process starts no thread
    /// for the wait (only the exit-watch thread runs beside main while COMMAND runs), takes its
    /// options in any order and form without swift-argument-parser, and frees its pool slot
    /// before it exits, so the next process has nothing to clean up or audit.
    @Test func freeLockRunsLeanAndLeavesNothingBehind() throws {
        let scratch = Scratch()
        let pool = scratch.file("lean.pool")
        // An empty configuration: a machine's own (scheduled checks) would add a thread.
        let config = scratch.file("config.json")
        try "{}".write(toFile: config, atomically: true, encoding: .utf8)
        let threads = try run(Binaries.pmll, ["lock", "--pool", pool, "--config", config, "x", "--", "sh", "-c", "grep ^Threads: /proc/$PPID/status"])
        #expect(threads.status == 0)
        #expect(threads.stdout == "Threads:\t2", "\(threads.stdout)")
        for args in [
            ["lock", "x", "--pool", pool, "--", "sh", "-c", "echo $PMLL_HELD_LOCKS"],
            ["lock", "--pool=\(pool)", "--level=network", "--timeout=5", "--shared", "y", "--", "sh", "-c", "echo $PMLL_HELD_LOCKS"],
            ["lock", "--exclusive", "--level", "1", "--pool", pool, "z", "--", "sh", "-c", "echo $PMLL_HELD_LOCKS"],
        ] {
            let result = try run(Binaries.pmll, args)
            #expect(result.status == 0, "\(args): \(result.stderr)")
            #expect(result.stdout == ["x": "2:x", "y": "4:y", "z": "1:z"][args.first { ["x", "y", "z"].contains($0) }!], "\(args): \(result.stdout)")
        }
        // Forms the fast path leaves to swift-argument-parser, with its messages.
        let repeated = try run(Binaries.pmll, ["lock", "--pool", pool, "--pool", pool, "x", "--", "true"])
        #expect(repeated.status == 0, "\(repeated.stderr)")
        let both = try run(Binaries.pmll, ["lock", "--pool", pool, "--shared", "--exclusive", "x", "--", "true"])
        #expect(both.status == 64 && both.stderr.hasPrefix("pmll: ") && both.stderr.contains("--shared"), "\(both.stderr)")
        // Each run above detached cleanly: no later open found a dead process's slot.
        let audit = try run(Binaries.pmll, ["audit", "show", "--pool", pool])
        #expect(audit.status == 0)
        #expect(!audit.stdout.contains("admin.reset"), "\(audit.stdout)")
    }

    @Test func usageErrorsAndExitCodes() throws {
        let scratch = Scratch()
        let pool = scratch.file("u.pool")
        for (args, status) in [
            (["lock", "--pool", pool, "x"], 64),                         // no COMMAND
            (["lock", "--pool", pool, "", "--", "true"], 64),            // empty name
            (["lock", "--pool", pool, "--level", "bogus", "x", "--", "true"], 64),
            (["lock", "--pool", pool, "--timeout", "-1", "x", "--", "true"], 64),
            (["frobnicate"], 64),
            (["status", "--pool", scratch.file("missing.pool")], 66),
            (["lock", "--pool", pool, "x", "--", "/nonexistent/cmd"], 127),
        ] {
            let result = try run(Binaries.pmll, args)
            #expect(result.status == Int32(status), "\(args): \(result.stderr)")
            #expect(result.stderr.hasPrefix("pmll: "), "\(args): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(args): \(result.stderr)")
        }
        let help = try run(Binaries.pmll, ["--help"])
        #expect(help.status == 0)
        #expect(help.stdout.contains("75 timeout"))
        // A missing batch root is named as the batch root, not as a pool.
        let batch = scratch.file("b.json")
        try #"[{"op":"write","path":"a","data":"x"}]"#.write(toFile: batch, atomically: true, encoding: .utf8)
        let root = try run(Binaries.pmll, ["batch", "apply", "--pool", pool, "--root", scratch.file("no-such-root"), batch])
        #expect(root.status == 66)
        #expect(root.stderr == "pmll: batch root '\(scratch.file("no-such-root"))': No such file or directory\n", "\(root.stderr)")
    }

    @Test func nestedLockCommandsFollowTheHierarchy() throws {
        let scratch = Scratch()
        let pool = scratch.file("n.pool")
        let pmll = Binaries.pmll
        let good = try run(pmll, ["lock", "--pool", pool, "--level", "registry", "r", "--", pmll, "lock", "--pool", pool, "--level", "package", "p", "--", "true"])
        #expect(good.status == 0)
        let bad = try run(pmll, ["lock", "--pool", pool, "--level", "package", "p", "--", pmll, "lock", "--pool", pool, "--level", "registry", "r", "--", "true"])
        #expect(bad.status == 64)
        #expect(bad.stderr.contains("pmll: lock hierarchy violation: cannot take 'r' (level 1 registry) while holding 'p' (level 2 package)"))
    }

    @Test func statusJSONIsStable() throws {
        let scratch = Scratch()
        let pool = scratch.file("j.pool")
        let holder = try Child(Binaries.pmll, ["lock", "--pool", pool, "--level", "network", "held", "--", "sleep", "30"])
        defer { holder.killTree(); holder.wait() }
        try waitUntilHeld(pool: pool, lock: "held")
        _ = try run(Binaries.pmll, ["lock", "--pool", pool, "free", "--", "true"])
        let result = try run(Binaries.pmll, ["status", "--pool", pool, "--json"])
        #expect(result.status == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        let locks = try #require(json["locks"] as? [[String: Any]])
        #expect(Set(locks[0].keys).isSuperset(of: ["name", "level", "state", "waiters", "acquisitions", "contended", "timeouts", "ownerDeaths", "maxWaitNanoseconds", "totalWaitNanoseconds", "ownerDiedPending"]))
        let held = try #require(locks.first { $0["name"] as? String == "held" })
        #expect(held["state"] as? String == "held")
        #expect(held["level"] as? String == "network")
        #expect((held["holder"] as? [String: Any])?["pid"] as? Int == Int(holder.pid))
        #expect((held["holder"] as? [String: Any])?["commandName"] as? String == "sleep")
        let table = try run(Binaries.pmll, ["status", "--pool", pool])
        #expect(table.stdout.contains("held"))
        #expect(table.stdout.contains("\(holder.pid) sleep"))
    }
}

func waitUntilHeld(pool: String, lock: String, timeout: Double = 20) throws {
    let end = Date().addingTimeInterval(timeout)
    while Date() < end {
        if FileManager.default.fileExists(atPath: pool),
           let p = try? Pool.open(path: pool, options: { var o = PoolOptions(); o.create = false; return o }()),
           let handle = try? p.existingLock(named: lock), handle.currentHolder != nil {
            return
        }
        usleep(10_000)
    }
    Issue.record("lock \(lock) never became held")
}

/// Waits until at least `count` processes wait for `lock`: a fixed sleep lost that race on a loaded machine.
func waitForWaiters(pool: String, lock: String, count: Int = 1, timeout: Double = 20) throws {
    let end = Date().addingTimeInterval(timeout)
    while Date() < end {
        if let p = try? Pool.open(path: pool, options: { var o = PoolOptions(); o.create = false; return o }()),
           let status = Optional(p.status()), let entry = status.locks.first(where: { $0.name == lock }), entry.waiters >= count {
            return
        }
        usleep(10_000)
    }
    Issue.record("\(count) waiter(s) for lock \(lock) never arrived")
}

/// Waits until `queue` has a record in `state`: a fixed sleep before killing its process lost the race on a
/// loaded CI machine (the process had not yet started the operation, so nothing was abandoned).
func waitForRecord(pool: String, queue: String, state: String = "running", count: Int = 1, timeout: Double = 20) throws {
    let end = Date().addingTimeInterval(timeout)
    while Date() < end {
        if FileManager.default.fileExists(atPath: pool),
           let records = queueRecords(pool: pool, queue: queue), records.filter({ $0["state"] as? String == state }).count >= count {
            return
        }
        usleep(20_000)
    }
    Issue.record("fewer than \(count) operation(s) of queue \(queue) became \(state)")
}

/// The records of `queue` as `pmll queue show --json` gives them; nil if it could not.
func queueRecords(pool: String, queue: String) -> [[String: Any]]? {
    guard let shown = try? run(Binaries.pmll, ["queue", "show", "--pool", pool, "--json", queue]), shown.status == 0,
          let json = try? JSONSerialization.jsonObject(with: Data(shown.stdout.utf8)) as? [String: Any] else { return nil }
    return json["records"] as? [[String: Any]]
}

/// An operation submitted after `suspended` (stopped while queued) runs within 5 s, then
/// `suspended`, resumed, runs; returns the queue's records.
func lateRunsThenTheResumedOne(pool: String, log: String, suspended: Child) throws -> [[String: Any]] {
    let late = try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "--timeout", "5", "jobs", "--", "sh", "-c", "echo late >> \(log)"])
    #expect(late.status == 0, "\(late)")
    _ = Foundation.kill(suspended.pid, SIGCONT)
    #expect(suspended.wait(timeout: 10) == 0)
    #expect(try String(contentsOfFile: log, encoding: .utf8) == "late\nsuspended\n")
    return try #require(queueRecords(pool: pool, queue: "jobs"))
}

/// `pmll queue exec` of `echo suspended >> log` in queue `jobs`, queued behind a running
/// operation, then stopped (SIGSTOP) while it waits.
func stoppedWhileQueued(pool: String, log: String, _ options: [String] = []) throws -> Child {
    let suspended = try Child(Binaries.pmll, ["queue", "exec", "--pool", pool] + options + ["jobs", "--", "sh", "-c", "echo suspended >> \(log)"])
    try waitForRecord(pool: pool, queue: "jobs", state: "queued")
    _ = Foundation.kill(suspended.pid, SIGSTOP)
    return suspended
}

/// `pmll queue exec` of `sleep 30` in queue `jobs`, once its operation runs (the caller kills it).
func runningOperation(pool: String, _ options: [String] = []) throws -> Child {
    let busy = try Child(Binaries.pmll, ["queue", "exec", "--pool", pool] + options + ["jobs", "--", "sleep", "30"])
    try waitForRecord(pool: pool, queue: "jobs")
    return busy
}

@Suite("pmll queue and recover", .serialized)
struct QueueCLITests {
    @Test func queueExecRecordsArgvAndPassesStatusThrough() throws {
        let scratch = Scratch()
        let pool = scratch.file("q.pool")
        let first = try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "jobs", "--", "sh", "-c", "echo one; exit 4"])
        #expect(first.status == 4 && first.stdout == "one")
        #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "jobs", "--", "true"]).status == 0)
        let show = try run(Binaries.pmll, ["queue", "show", "--pool", pool, "--json", "jobs"])
        #expect(show.status == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(show.stdout.utf8)) as? [String: Any])
        let records = try #require(json["records"] as? [[String: Any]])
        #expect(records.map { $0["state"] as? String } == ["failed", "succeeded"])
        #expect(records[0]["lastError"] as? String == "exited with status 4")
        let payload = try #require(records[0]["payload"] as? [Int])
        #expect(String(decoding: payload.map(UInt8.init), as: UTF8.self) == #"["sh","-c","echo one; exit 4"]"#)
        let stats = try #require(json["stats"] as? [String: Any])
        #expect(stats["completed"] as? Int == 1 && stats["failed"] as? Int == 1)
        let status = try run(Binaries.pmll, ["status", "--pool", pool])
        #expect(status.stdout.contains("jobs"))
        #expect(try run(Binaries.pmll, ["queue", "show", "--pool", pool, "nope"]).status == 66)
        // Both `queue exec` processes detached before exiting: no later open found a dead
        // process's slot to free (an `admin.reset` record says one did).
        let audit = try run(Binaries.pmll, ["audit", "show", "--pool", pool])
        #expect(audit.status == 0)
        #expect(audit.stdout.contains("queue.fail") && !audit.stdout.contains("admin.reset"), "\(audit.stdout)")
    }

    @Test func queueExecTimesOutWith75AndIsCancelledBySIGINT() throws {
        let scratch = Scratch()
        let pool = scratch.file("t.pool")
        let busy = try runningOperation(pool: pool)
        defer { busy.killTree(); busy.wait() }
        let late = try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "--timeout", "0.3", "jobs", "--", "true"])
        #expect(late.status == 75)
        #expect(late.stderr.hasPrefix("pmll: timed out waiting in queue 'jobs'"))
        #expect(late.stderr.contains("pid \(busy.pid) (sleep)"))
        let waiting = try Child(Binaries.pmll, ["queue", "exec", "--pool", pool, "jobs", "--", "true"])
        try waitForRecord(pool: pool, queue: "jobs", state: "queued")
        waiting.kill(SIGINT)
        #expect(waiting.wait(timeout: 5) == 130)
    }

    /// Waiters name the operation they wait for, and say when its process is stopped.
    @Test func queueExecNamesTheOperationItWaitsForAndWhetherItIsStopped() throws {
        let scratch = Scratch()
        let pool = scratch.file("w.pool")
        let busy = try runningOperation(pool: pool)
        defer { busy.killTree(); busy.wait() }
        let running = try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "--timeout", "1", "jobs", "--", "true"])
        #expect(running.status == 75)
        #expect(running.stderr.hasPrefix("pmll: waiting in queue 'jobs' behind ticket 0 'exec' of pid \(busy.pid) (sleep, running)\n"), "\(running.stderr)")
        // A running operation keeps its turn while stopped, as a stopped holder keeps its lock.
        _ = Foundation.kill(busy.pid, SIGSTOP)
        let stopped = try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "--timeout", "1", "jobs", "--", "true"])
        #expect(stopped.status == 75)
        #expect(stopped.stderr.hasPrefix("pmll: waiting in queue 'jobs' behind ticket 0 'exec' of pid \(busy.pid) (sleep, running, stopped)\n"), "\(stopped.stderr)")
        _ = Foundation.kill(busy.pid, SIGCONT)
    }

    /// A `pmll queue exec` suspended (Ctrl-Z) while queued does not hold the queue: when its turn
    /// comes it is passed (its ticket void), and once resumed it runs at the end of the queue.
    @Test func aStoppedQueuedOperationIsPassedAndRunsOnceResumed() throws {
        let scratch = Scratch()
        let pool = scratch.file("p.pool"), log = scratch.file("order")
        let busy = try runningOperation(pool: pool)
        defer { busy.killTree(); busy.wait() }
        let suspended = try stoppedWhileQueued(pool: pool, log: log)
        busy.killTree()
        let records = try lateRunsThenTheResumedOne(pool: pool, log: log, suspended: suspended)
        // busy (abandoned), the suspended one's first ticket (void, passed), late, its second ticket.
        #expect(records.map { $0["state"] as? String } == ["abandoned", "void", "succeeded", "succeeded"], "\(records)")
        #expect((records[1]["lastError"] as? String ?? "").hasPrefix("passed: owner pid \(suspended.pid) was stopped"))
        let audit = try run(Binaries.pmll, ["audit", "show", "--pool", pool])
        #expect(audit.stdout.contains("queue.pass") && audit.stdout.contains("queue 'jobs' ticket 1 kind 'exec': owner pid \(suspended.pid) was stopped when its turn came, submitted at "), "\(audit.stdout)")
    }

    /// A passer killed after voiding a stopped process's ticket and before moving the turn on
    /// (crash point `queue.passed`) does not stop the queue: the next waiter moves the turn past
    /// the passed ticket (its owner, alive, never does), then past the passer's own, abandoned.
    @Test func aPasserKilledBeforeMovingTheTurnOnDoesNotStopTheQueue() throws {
        let scratch = Scratch()
        let pool = scratch.file("p.pool"), log = scratch.file("order")
        let busy = try runningOperation(pool: pool)
        defer { busy.killTree(); busy.wait() }
        let suspended = try stoppedWhileQueued(pool: pool, log: log)
        let passer = try Child(Binaries.pmll, ["queue", "exec", "--pool", pool, "jobs", "--", "sh", "-c", "echo passer >> \(log)"],
                               environment: ["PMLL_CRASH_AT": "queue.passed"])
        try waitForRecord(pool: pool, queue: "jobs", state: "queued", count: 2)
        busy.killTree()
        #expect(passer.wait(timeout: 20) == 128 + SIGKILL, "the passer dies at queue.passed")
        let records = try lateRunsThenTheResumedOne(pool: pool, log: log, suspended: suspended)
        // busy (abandoned), the suspended one's first ticket (void, passed), the passer's
        // (abandoned: it died queued), late, the suspended one's second ticket.
        #expect(records.map { $0["state"] as? String } == ["abandoned", "void", "abandoned", "succeeded", "succeeded"], "\(records)")
    }

    /// A passed operation's slot is not reused until its owner has seen that it was passed: the
    /// owner's start compares the slot's state, which must still be its own record's. With a
    /// ring of 2 the next submission needs that slot, and waits for the owner.
    @Test func aPassedOperationsSlotWaitsForItsOwner() throws {
        let scratch = Scratch()
        let pool = scratch.file("r.pool"), log = scratch.file("order"), config = scratch.file("ring.json")
        try #"{"pool": {"queue_ring": 2}}"#.write(toFile: config, atomically: true, encoding: .utf8)
        func exec(_ script: String, timeout: String = "5") throws -> (status: Int32, stdout: String, stderr: String) {
            try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "--config", config, "--timeout", timeout, "jobs", "--", "sh", "-c", script])
        }
        let busy = try runningOperation(pool: pool, ["--config", config])
        defer { busy.killTree(); busy.wait() }
        let suspended = try stoppedWhileQueued(pool: pool, log: log, ["--config", config])
        busy.killTree()
        #expect(try exec("echo first >> \(log)").status == 0)   // ticket 2: passes ticket 1
        // Ticket 3 would take ticket 1's slot, whose owner is still stopped.
        let blocked = try exec("echo blocked >> \(log)", timeout: "1")
        #expect(blocked.status == 75, "\(blocked)")
        #expect(blocked.stderr.contains("behind ticket 1 'exec' of pid \(suspended.pid)"), "\(blocked.stderr)")
        _ = Foundation.kill(suspended.pid, SIGCONT)
        #expect(suspended.wait(timeout: 10) == 0)
        #expect(try exec("echo last >> \(log)").status == 0)
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "first\nsuspended\nlast\n")
    }

    @Test func recoverReportsAndHandsAbandonedCommandsToTheHandler() throws {
        let scratch = Scratch()
        let pool = scratch.file("r.pool"), marker = scratch.file("handled")
        let keeper = try Child.worker("hold", "--pool", pool, "--lock", "keep")   // keeps the pool attached: no reset
        defer { keeper.kill(); keeper.wait() }
        _ = try #require(keeper.waitForEvent("acquired"))
        let victim = try Child(Binaries.pmll, ["queue", "exec", "--pool", pool, "jobs", "--", "sleep", "30"])
        try waitForRecord(pool: pool, queue: "jobs")
        // The parent first: killed after its `sleep`, it could see the COMMAND die and record
        // the operation failed (not abandoned) before its own SIGKILL (seen once in CI).
        victim.killParentFirst()
        victim.wait()
        let listed = try run(Binaries.pmll, ["recover", "--pool", pool])
        #expect(listed.status == 0)
        #expect(listed.stdout.contains("left (no handler for kind 'exec')"))
        #expect(listed.stdout.contains(#"["sleep","30"]"#))
        let handled = try run(Binaries.pmll, ["recover", "--pool", pool, "--exec-handler", "echo \"$PMLL_QUEUE $PMLL_TICKET $PMLL_ABANDONED_ARGV\" > \(marker)"])
        #expect(handled.stdout.contains("recovered: queue 'jobs' ticket 0"))
        #expect(try String(contentsOfFile: marker, encoding: .utf8) == "jobs 0 [\"sleep\",\"30\"]\n")
        #expect(try run(Binaries.pmll, ["recover", "--pool", pool]).stdout.contains("no abandoned operations"))
    }
}

@Suite("pmll state and check", .serialized)
struct StateCLITests {
    @Test func setCommitsPairsTogetherAndGetListDeleteWork() throws {
        let scratch = Scratch()
        let pool = scratch.file("s.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "pkg/a=installed", "pkg/b=x=y", "other=1"]).status == 0)
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", pool, "pkg/b"]).stdout == "x=y")
        let missing = try run(Binaries.pmll, ["state", "get", "--pool", pool, "pkg/zzz"])
        #expect(missing.status == 1 && missing.stderr == "pmll: no value for key 'pkg/zzz'\n")
        let list = try run(Binaries.pmll, ["state", "list", "--pool", pool, "--json", "pkg/"])
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: String]])
        #expect(entries == [["key": "pkg/a", "value": "installed"], ["key": "pkg/b", "value": "x=y"]])
        // One bad pair: nothing of the command is committed.
        let bad = try run(Binaries.pmll, ["state", "set", "--pool", pool, "pkg/a=removed", "=empty-key"])
        #expect(bad.status == 64 && bad.stderr.hasPrefix("pmll: invalid key"))
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", pool, "pkg/a"]).stdout == "installed")
        #expect(try run(Binaries.pmll, ["state", "delete", "--pool", pool, "pkg/a", "pkg/b"]).status == 0)
        #expect(try run(Binaries.pmll, ["state", "list", "--pool", pool]).stdout == "other=1")
        let status = try run(Binaries.pmll, ["status", "--pool", pool])
        #expect(status.stdout.contains("state store: 1/4096 key slots"))
    }

    /// `set --if` is a compare-and-swap: 3 shell loops each make 15 increments of one
    /// counter by read, then conditional set (retrying when the condition fails). Lost
    /// updates would leave the counter under 45.
    @Test func conditionalSetIsACompareAndSwapAcrossProcesses() throws {
        let scratch = Scratch()
        let pool = scratch.file("cas.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "n=0"]).status == 0)
        let script = """
            i=0; while [ $i -lt 15 ]; do
              v=$("$0" state get --pool "$1" n) || exit 9
              if "$0" state set --pool "$1" --if "n=$v" "n=$((v + 1))" 2>/dev/null; then i=$((i + 1)); fi
            done
            """
        let loops = try (0..<3).map { _ in try Child("/bin/sh", ["-c", script, Binaries.pmll, pool]) }
        for loop in loops { #expect(loop.wait(timeout: 120) == 0) }
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", pool, "n"]).stdout == "45")
        let refused = try run(Binaries.pmll, ["state", "set", "--pool", pool, "--if", "n=44", "--if-absent", "x", "n=0"])
        #expect(refused.status == 1 && refused.stderr == "pmll: condition failed: 'n' is '45', not '44'; nothing written\n")
        let absent = try run(Binaries.pmll, ["state", "delete", "--pool", pool, "--if-absent", "n", "n"])
        #expect(absent.status == 1 && absent.stderr == "pmll: condition failed: 'n' has a value; nothing written\n")
        #expect(try run(Binaries.pmll, ["state", "delete", "--pool", pool, "--if", "n=45", "n"]).status == 0)
        #expect(try run(Binaries.pmll, ["status", "--pool", pool]).stdout.contains(" conflicts, "))
    }

    @Test func checkExits0OnASoundPoolAnd65OnCorruption() throws {
        let scratch = Scratch()
        let pool = scratch.file("c.pool")
        let marker = "CHECKME-" + String(repeating: "v", count: 200)
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "k=\(marker)"]).status == 0)
        let good = try run(Binaries.pmll, ["check", "--pool", pool])
        #expect(good.status == 0 && good.stdout.hasSuffix("ok"))
        var bytes = try #require(FileManager.default.contents(atPath: pool))
        let at = try #require(bytes.firstRange(of: Array("CHECKME-".utf8))).lowerBound
        bytes[at + 3] ^= 0x20
        try bytes.write(to: URL(fileURLWithPath: pool))
        let bad = try run(Binaries.pmll, ["check", "--pool", pool])
        #expect(bad.status == 65)
        #expect(bad.stdout.contains("problem: record 'k' is corrupt: checksum mismatch"))
        let get = try run(Binaries.pmll, ["state", "get", "--pool", pool, "k"])
        #expect(get.status == 65 && get.stderr.hasPrefix("pmll: record 'k' is corrupt"))
    }
}
