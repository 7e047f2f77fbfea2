import Foundation
import PMLLCore
import PMLLEtcd
import PMLL
import PMLLLocks
import PMLLQueues
import PMLLStressSupport
import Testing

/// The etcd backend against real etcd members started by each test (Docs/Etcd.md).
@Suite("etcd backend")
struct EtcdTests {
    /// `pmll` with an etcd pool (handed to pmll-etcd, as users call it).
    func pmll(_ arguments: [String], environment: [String: String] = [:], timeout: Double = 60) throws -> (status: Int32, stdout: String, stderr: String) {
        try run(Binaries.pmll, arguments, environment: environment, timeout: timeout)
    }

    @Test("processes taking a lock exclude each other, and fenced read-modify-writes lose no update")
    func mutualExclusionAcrossProcesses() throws {
        let cluster = try EtcdCluster()
        defer { cluster.stop() }
        let scratch = Scratch()
        let pool = cluster.address("mutex")
        let log = scratch.file("history")
        // Each critical section: read n, note start, pause, write n+1 fenced by the token,
        // note end. Overlapping sections or a lost update would show in the history.
        let section = """
            v=$("$PMLL" state get n 2>/dev/null || echo 0); echo "start $PMLL_FENCING_TOKEN" >> \(log); sleep 0.02; \
            "$PMLL" state set --fence counter=$PMLL_FENCING_TOKEN n $((v+1)) || exit 9; echo "end $PMLL_FENCING_TOKEN" >> \(log)
            """
        let loop = "for i in 1 2 3 4 5 6; do \"$PMLL\" lock counter -- sh -c '\(section)' || exit $?; done"
        let environment = ["PMLL_POOL": pool, "PMLL": Binaries.pmll]
        let workers = try (0..<4).map { _ in try Child("/bin/sh", ["-c", loop], environment: environment) }
        defer { workers.forEach { $0.stopIfRunning() } }
        for worker in workers { #expect(worker.wait(timeout: 120) == 0, "\(worker.stderr)") }
        let n = try pmll(["state", "get", "n"], environment: environment)
        #expect(n.stdout == "24", "lost updates: \(n)")
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 48)
        var last: Int64 = 0
        for pair in stride(from: 0, to: lines.count - 1, by: 2) {
            let start = lines[pair].split(separator: " "), end = lines[pair + 1].split(separator: " ")
            #expect(start.first == "start" && end.first == "end" && start.last == end.last, "overlapping sections at line \(pair): \(lines[pair]) / \(lines[pair + 1])")
            let token = Int64(start.last ?? "") ?? 0
            #expect(token > last, "tokens must increase in commit order: \(token) after \(last)")
            last = token
        }
    }

    @Test("waiters get the lock in the order they arrived")
    func fifoOrder() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster()
            defer { cluster.stop() }
            let address = cluster.address("fifo")
            let holder = try await EtcdPool.open(url: address)
            let lock = try await holder.lock(named: "line", level: .package)
            let order = OrderRecorder()
            var pools: [EtcdPool] = []
            try await lock.withLock { _ in
                var tasks: [Task<Void, any Error>] = []
                for i in 0..<5 {
                    let participant = try await EtcdPool.open(url: address)
                    pools.append(participant)
                    let theirs = try await participant.lock(named: "line", level: .package)
                    tasks.append(Task.detached(executorPreference: EtcdExecutor.shared) { try await theirs.withLock { _ in order.append(i) } })
                    // The next one arrives only once this one waits (its key is in the queue).
                    try await waitUntil { try await holder.lockStatus().first?.waiters == i + 1 }
                }
                _ = tasks
            }
            try await waitUntil { order.values.count == 5 }
            #expect(order.values == [0, 1, 2, 3, 4])
            for p in pools { await p.close() }
            await holder.close()
        }
    }

    @Test("a deadline or a cancellation ends the wait and withdraws the waiter; the holder is named")
    func deadlineAndCancellation() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster()
            defer { cluster.stop() }
            let address = cluster.address("deadline")
            let a = try await EtcdPool.open(url: address)
            let b = try await EtcdPool.open(url: address)
            let lockA = try await a.lock(named: "x", level: .package)
            let lockB = try await b.lock(named: "x", level: .package)
            try await lockA.withLock { _ in
                // B is another participant: its attempts run in tasks of their own (the hierarchy
                // check would otherwise see this task holding 'x').
                let start = ContinuousClock.now
                let timedOut = await Task.detached(executorPreference: EtcdExecutor.shared) { try await lockB.withLock(timeout: .milliseconds(300)) { _ in 1 } }.result
                guard case .failure(PMLLError.timeout(let lock, let holder)) = timedOut else {
                    Issue.record("expected a timeout, got \(timedOut)")
                    return
                }
                #expect(lock == "x")
                #expect(holder?.pid == getpid())
                #expect(start.duration(to: .now) < .seconds(5))
                #expect(try await Task.detached(executorPreference: EtcdExecutor.shared) { try await lockB.withLockIfAvailable { _ in 1 } }.value == nil)
                let waiting = Task.detached(executorPreference: EtcdExecutor.shared) { try await lockB.withLock { _ in 1 } }
                try await waitUntil { try await a.lockStatus().first?.waiters == 1 }
                waiting.cancel()
                await #expect(throws: PMLLError.cancelled(lock: "x")) { try await waiting.value }
                try await waitUntil { try await a.lockStatus().first?.waiters == 0 }
            }
            #expect(try await lockB.withLock { $0.fencingToken } > 0)
            await a.close()
            await b.close()
        }
    }

    @Test("levels are recorded and the hierarchy is enforced on etcd locks too, by the typed API as well")
    func levelsAndHierarchy() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster()
            defer { cluster.stop() }
            let pool = try await EtcdPool.open(url: cluster.address("levels"))
            let fs = try await pool.lock(named: "tree", level: .filesystem)
            await #expect(throws: PMLLError.levelMismatch(name: "tree", existing: .filesystem, requested: .package)) {
                _ = try await pool.lock(named: "tree", level: .package)
            }
            let other = try await EtcdPool.open(url: cluster.address("levels"))
            await #expect(throws: PMLLError.levelMismatch(name: "tree", existing: .filesystem, requested: .network)) {
                _ = try await other.lock(named: "tree", level: .network)
            }
            let package = try await pool.lock(named: "pkg", level: .package)
            let network = try await pool.lock(named: "net", level: .network)
            try await package.withLock { _ in
                try await fs.withLock { _ in try await network.withLock { _ in } }
            }
            try await fs.withLock { _ in
                await #expect(throws: PMLLError.hierarchyViolation(held: fs.id, requested: package.id)) {
                    try await package.withLock { _ in }
                }
            }
            await #expect(throws: PMLLError.self) { _ = try await pool.lock(named: "", level: .package) }

            // The typed API (Tests/CompileFail/etcd_*.swift for what must not compile): nested
            // in order, the innermost grant fences commits, an inconsistency mark reaches the
            // next holder; the runtime check still stands behind it.
            let typedPackage = try await pool.lock("pkg", Package.self), typedNetwork = try await pool.lock("net", Network.self)
            try await pool.withLockContext { root in
                try await root.withLock(package: typedPackage) { p in
                    guard let fence = p.fence else { Issue.record("no fence in a held context"); return }
                    try await pool.transaction(fencedBy: [fence]) { try $0.set("typed", "1") }
                    let shared = try await p.withSharedLock(network: typedNetwork) { n in n.grant?.shared }
                    #expect(shared == true)
                    p.markInconsistent()
                }
            }
            #expect(try await pool.value(for: "typed") == Array("1".utf8))
            let told = try await package.withLock { $0.previousOwnerDeath?.cause }
            #expect(told == .releasedInconsistent)
            await #expect(throws: PMLLError.levelMismatch(name: "tree", existing: .filesystem, requested: .package)) {
                _ = try await pool.lock("tree", Package.self)
            }
            try await fs.withLock { _ in
                await #expect(throws: PMLLError.hierarchyViolation(held: fs.id, requested: package.id)) {
                    try await pool.withLockContext { root in try await root.withLock(package: typedPackage) { _ in } }
                }
                let shown = try await other.lockStatus().first { $0.name == "tree" }
                #expect(shown?.level == LockLevel.filesystem.rawValue && shown?.holder != nil, "\(String(describing: shown))")
            }
            await pool.close()
            await other.close()
        }
    }

    @Test("a holder killed with SIGKILL is reported to the next holder within its TTL + 1 s")
    func killedHolder() throws {
        let cluster = try EtcdCluster()
        defer { cluster.stop() }
        let environment = ["PMLL_POOL": cluster.address("death", ttl: 2)]
        let holder = try Child(Binaries.pmll, ["lock", "x", "--", "sleep", "60"], environment: environment)
        defer { holder.stopIfRunning() }
        try waitForHolder(environment, lock: "x")
        let killed = Date()
        holder.killParentFirst()
        holder.wait()
        let next = try pmll(["lock", "x", "--", "sh", "-c", "echo $PMLL_PREVIOUS_OWNER_DIED"], environment: environment)
        let took = Date().timeIntervalSince(killed)
        #expect(next.status == 0)
        #expect(next.stdout == "1")
        #expect(next.stderr.contains("died while holding the lock"), "\(next.stderr)")
        #expect(took < 3.0, "next holder after \(took) s; TTL 2 s")
        // The death is reported once: the holder after it released cleanly.
        let after = try pmll(["lock", "x", "--", "sh", "-c", "echo ${PMLL_PREVIOUS_OWNER_DIED:-0}"], environment: environment)
        #expect(after.stdout == "0")
    }

    @Test("pmll lock, flock and queue exec on an etcd pool say whom they wait for, as on a local pool; flock -n says nothing")
    func waitLinesNameTheHolder() throws {
        let cluster = try EtcdCluster()
        defer { cluster.stop() }
        let scratch = Scratch()
        let environment = ["PMLL_POOL": cluster.address("waiting")]
        let held = scratch.file("held"), turn = scratch.file("turn"), flocked = scratch.file("flocked"), file = scratch.file("f")

        let holder = try Child(Binaries.pmll, ["lock", "L", "--", "sh", "-c", "touch \(held); sleep 2"], environment: environment)
        defer { holder.stopIfRunning() }
        try waitUntilSync { FileManager.default.fileExists(atPath: held) }
        let waiter = try pmll(["lock", "L", "--", "true"], environment: environment)
        #expect(waiter.status == 0, "\(waiter.stderr)")
        #expect(waiter.stderr.contains("pmll: waiting for lock 'L' held by pid \(holder.pid) ("), "\(waiter.stderr)")
        holder.wait()

        let running = try Child(Binaries.pmll, ["queue", "exec", "q", "--", "sh", "-c", "touch \(turn); sleep 2"], environment: environment)
        defer { running.stopIfRunning() }
        try waitUntilSync { FileManager.default.fileExists(atPath: turn) }
        let behind = try pmll(["queue", "exec", "q", "--", "true"], environment: environment)
        #expect(behind.status == 0, "\(behind.stderr)")
        #expect(behind.stderr.contains("pmll: waiting in queue 'q' behind ticket ") && behind.stderr.contains(" of pid \(running.pid) ("), "\(behind.stderr)")
        running.wait()

        let flockHolder = try Child(Binaries.pmll, ["flock", file, "sh", "-c", "touch \(flocked); sleep 2"], environment: environment)
        defer { flockHolder.stopIfRunning() }
        try waitUntilSync { FileManager.default.fileExists(atPath: flocked) }
        let refused = try pmll(["flock", "-n", file, "true"], environment: environment)
        #expect(refused.status == 1 && !refused.stderr.contains("waiting"), "\(refused.stderr)")
        let queued = try pmll(["flock", file, "true"], environment: environment)
        #expect(queued.status == 0 && queued.stderr.contains("pmll: waiting for lock '") && queued.stderr.contains("held by pid \(flockHolder.pid) ("), "\(queued.stderr)")
    }

    @Test("a holder paused past its TTL loses the lock: its fenced commit is rejected and the new holder's write stays")
    func pausedHolderIsFenced() throws {
        let cluster = try EtcdCluster()
        defer { cluster.stop() }
        let scratch = Scratch()
        let environment = ["PMLL_POOL": cluster.address("pause", ttl: 2), "PMLL": Binaries.pmll]
        let go = scratch.file("go"), rc = scratch.file("rc"), token = scratch.file("token")
        let script = """
            echo $PMLL_FENCING_TOKEN > \(token); while [ ! -f \(go) ]; do sleep 0.05; done; \
            "$PMLL" state set --fence L=$PMLL_FENCING_TOKEN k stale; echo $? > \(rc)
            """
        let first = try Child(Binaries.pmll, ["lock", "L", "--", "sh", "-c", script], environment: environment)
        defer { first.stopIfRunning() }
        try waitUntilSync { FileManager.default.fileExists(atPath: token) }
        // Pause the holder (the process whose lease keeps the lock); its COMMAND goes on.
        let holderPid = first.pid
        kill(holderPid, SIGSTOP)
        let second = try pmll(["lock", "L", "--", "sh", "-c", "\"$PMLL\" state set --fence L=$PMLL_FENCING_TOKEN k fresh && echo $PMLL_FENCING_TOKEN"],
                              environment: environment, timeout: 30)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stderr.contains("died while holding"), "\(second.stderr)")
        _ = FileManager.default.createFile(atPath: go, contents: nil)
        try waitUntilSync { FileManager.default.fileExists(atPath: rc) }
        kill(holderPid, SIGCONT)
        let firstStatus = first.wait()
        let staleStatus = (try? String(contentsOfFile: rc, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(staleStatus == "75", "the stale holder's fenced commit must be rejected (exit 75)")
        #expect(firstStatus == 75, "the paused holder learns it lost the lock: \(first.stderr)")
        #expect(first.stderr.contains("lost"), "\(first.stderr)")
        let value = try pmll(["state", "get", "k"], environment: environment)
        #expect(value.stdout == "fresh")
        let firstToken = Int64((try String(contentsOfFile: token, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        #expect((Int64(second.stdout) ?? 0) > firstToken)
    }

    @Test("a lease that expires while the body runs: commits under it are refused and the release says the lock was lost")
    func expiredLeaseInProcess() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster()
            defer { cluster.stop() }
            let address = cluster.address("expiry", ttl: 2)
            let stale = try await EtcdPool.open(url: address)
            let fresh = try await EtcdPool.open(url: address)
            let lock = try await stale.lock(named: "L", level: .package)
            var heldToken: Int64 = 0
            do {
                try await lock.withLock { grant in
                    heldToken = grant.fencingToken
                    stale.stopRenewingLease()
                    // Another participant gets the lock once the lease is gone, and writes.
                    let theirs = try await fresh.lock(named: "L", level: .package)
                    let token = grant.fencingToken
                    try await Task.detached(executorPreference: EtcdExecutor.shared) {
                        try await theirs.withLock { newer in
                            #expect(newer.fencingToken > token)
                            #expect(newer.previousOwnerDeath?.cause == .processDied)
                            try await fresh.transaction(fencedBy: [newer.fence]) { try $0.set("k", "fresh") }
                        }
                    }.value
                    do {
                        try await stale.transaction(fencedBy: [grant.fence]) { try $0.set("k", "stale") }
                        Issue.record("a stale holder committed")
                    } catch let PMLLError.lockLost(name, token, _) {
                        #expect(name == "L" && token == grant.fencingToken)
                    }
                }
                Issue.record("the release did not say the lock was lost")
            } catch let PMLLError.lockLost(name, token, reason) {
                #expect(name == "L" && token == heldToken, "\(reason)")
            }
            #expect(try await fresh.value(for: "k") == Array("fresh".utf8))
            await stale.close()
            await fresh.close()
        }
    }

    @Test("a read-only transaction over several keys sees one snapshot: a commit between its reads re-runs it")
    func readOnlySnapshot() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster()
            defer { cluster.stop() }
            let reader = try await EtcdPool.open(url: cluster.address("snapshot"))
            let writer = try await EtcdPool.open(url: cluster.address("snapshot"))
            try await writer.transaction { tx in try tx.set("a", "1"); try tx.set("b", "1") }
            let runs = OrderRecorder()
            let seen = try await reader.transaction { tx -> [String] in
                runs.append(0)
                let a = String(decoding: try await tx.value(for: "a") ?? [], as: UTF8.self)
                if runs.values.count == 1 {   // another process commits between the two reads
                    try await writer.transaction { w in try w.set("a", "2"); try w.set("b", "2") }
                }
                let b = String(decoding: try await tx.value(for: "b") ?? [], as: UTF8.self)
                return [a, b]
            }
            #expect(seen == ["2", "2"], "a mixed snapshot was returned: \(seen)")
            #expect(runs.values.count == 2)
            await reader.close()
            await writer.close()
        }
    }

    @Test("bad addresses, unreachable clusters and local-only commands: one pmll: line and a documented status")
    func errors() throws {
        let bad = try pmll(["status", "--pool", "etcd://nohost/x"])
        #expect(bad.status == 66 && bad.stderr.hasPrefix("pmll: ") && bad.stderr.contains("HOST:PORT"), "\(bad)")
        let ttl = try pmll(["status", "--pool", "etcd://127.0.0.1:2379/x?ttl=1"])
        #expect(ttl.status == 66 && ttl.stderr.contains("ttl"), "\(ttl)")
        let down = try pmll(["lock", "--pool", "etcd://127.0.0.1:\(EtcdCluster.freePort())/x", "x", "--", "true"])
        #expect(down.status == 69 && down.stderr.hasPrefix("pmll: ") && down.stderr.contains("unavailable"), "\(down)")
        let batch = try pmll(["batch", "apply", "--root", "/tmp", "/dev/null"], environment: ["PMLL_POOL": "etcd://127.0.0.1:1/x"])
        #expect(batch.status == 64 && batch.stderr.contains("not available on etcd pools"), "\(batch)")
        let parsed = try EtcdAddress(parsing: "etcd://a:1,b:2/p/q?ttl=7")
        #expect(parsed.endpoints == ["http://a:1", "http://b:2"] && parsed.prefix == "p/q" && parsed.ttlSeconds == 7)
        #expect(parsed.description == "etcd://a:1,b:2/p/q?ttl=7")
    }

    @Test("queue operations run in submission order across processes; a killed one is abandoned, then recovered once")
    func queueOrderAbandonAndRecover() throws {
        let cluster = try EtcdCluster()
        defer { cluster.stop() }
        let scratch = Scratch()
        let environment = ["PMLL_POOL": cluster.address("queues", ttl: 2)]
        let log = scratch.file("log"), go = scratch.file("go")
        let first = try Child(Binaries.pmll, ["queue", "exec", "q", "--", "sh", "-c", "while [ ! -f \(go) ]; do sleep 0.02; done; echo first >> \(log)"], environment: environment)
        defer { first.stopIfRunning() }
        try waitForHolder(environment, lock: "pmll:queue/q")
        var others: [Child] = []
        defer { others.forEach { $0.stopIfRunning() } }
        for i in 1...3 {
            others.append(try Child(Binaries.pmll, ["queue", "exec", "q", "--", "sh", "-c", "echo op\(i) $PMLL_TICKET >> \(log)"], environment: environment))
            try waitUntilSync {
                let status = try? pmll(["status", "--json"], environment: environment)
                return status?.stdout.contains("\"waiters\":\(i)") == true
            }
        }
        _ = FileManager.default.createFile(atPath: go, contents: nil)
        #expect(first.wait() == 0)
        for other in others { #expect(other.wait() == 0, "\(other.stderr)") }
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(lines.map { $0.split(separator: " ").first.map(String.init) ?? "" } == ["first", "op1", "op2", "op3"], "\(lines)")
        let tickets = lines.dropFirst().compactMap { Int64($0.split(separator: " ").last ?? "") }
        #expect(tickets == tickets.sorted() && tickets.count == 3)

        // A holder killed while its operation runs: the next operation marks it abandoned.
        let victim = try Child(Binaries.pmll, ["queue", "exec", "q", "--", "sleep", "60"], environment: environment)
        defer { victim.stopIfRunning() }
        try waitForHolder(environment, lock: "pmll:queue/q")
        victim.killParentFirst()
        victim.wait()
        #expect(try pmll(["queue", "exec", "q", "--", "true"], environment: environment).status == 0)
        let shown = try pmll(["queue", "show", "q", "--json"], environment: environment)
        #expect(shown.stdout.contains("\"abandoned\""), "\(shown.stdout)")
        let recovered = try pmll(["recover", "--exec-handler", "echo $PMLL_ABANDONED_ARGV >> \(scratch.file("handled"))"], environment: environment)
        #expect(recovered.status == 0 && recovered.stdout.contains("recovered:"), "\(recovered)")
        #expect(try String(contentsOfFile: scratch.file("handled"), encoding: .utf8).contains("sleep"))
        let again = try pmll(["recover", "--exec-handler", "false"], environment: environment)
        #expect(again.status == 0 && !again.stdout.contains("recovered:"), "recovered twice: \(again)")
        // A failing COMMAND is recorded failed, with its status kept.
        let failed = try pmll(["queue", "exec", "q", "--", "sh", "-c", "exit 3"], environment: environment)
        #expect(failed.status == 3)
        #expect(try pmll(["queue", "show", "q"], environment: environment).stdout.contains("failed"))
        struct Shown: Decodable { struct Stats: Decodable { var completed, failed, abandoned, recovered, pending: UInt64 }; var stats: Stats }
        let stats = try JSONDecoder().decode(Shown.self, from: Data(try pmll(["queue", "show", "q", "--json"], environment: environment).stdout.utf8)).stats
        #expect((stats.completed, stats.failed, stats.abandoned, stats.recovered, stats.pending) == (5, 1, 1, 1, 0), "\(stats)")
        let status = try pmll(["status"], environment: environment)
        #expect(status.stdout.contains("q: 0 pending, 5 completed, 1 failed, 0 retried, 1 abandoned, 1 recovered"), "\(status.stdout)")
    }

    @Test("recovery policies on etcd: a dry run changes nothing; quarantine, release; a failing handler is quarantined after max attempts; retry runs the command again")
    func recoveryPolicies() throws {
        let cluster = try EtcdCluster()
        defer { cluster.stop() }
        let scratch = Scratch()
        let environment = ["PMLL_POOL": cluster.address("policies", ttl: 2)]
        /// Leaves an abandoned operation running `script` in queue q; its ticket.
        func abandon(_ script: String) throws -> String {
            let victim = try Child(Binaries.pmll, ["queue", "exec", "q", "--", "sh", "-c", script], environment: environment)
            defer { victim.stopIfRunning() }
            try waitForHolder(environment, lock: "pmll:queue/q")
            victim.killParentFirst()
            victim.wait()
            #expect(try pmll(["queue", "exec", "q", "--", "true"], environment: environment).status == 0)
            struct Shown: Decodable { struct R: Decodable { var ticket: Int64; var state: String }; var records: [R] }
            let shown = try JSONDecoder().decode(Shown.self, from: Data(try pmll(["queue", "show", "q", "--json"], environment: environment).stdout.utf8))
            return String(shown.records.last { $0.state == "abandoned" }?.ticket ?? -1)
        }
        let first = try abandon("sleep 60")
        let dry = try pmll(["recover", "--dry-run", "--policy", "kind:exec=quarantine"], environment: environment)
        #expect(dry.status == 0 && dry.stdout.contains("would quarantine it"), "\(dry)")
        #expect(try pmll(["queue", "show", "q"], environment: environment).stdout.contains("\(first)\tabandoned"))
        let quarantined = try pmll(["recover", "--policy", "kind:exec=quarantine"], environment: environment)
        #expect(quarantined.stdout.contains("quarantined (policy quarantine)"), "\(quarantined)")
        #expect(try pmll(["recover", "--quarantined"], environment: environment).stdout.contains("ticket \(first)"))
        #expect(try pmll(["recover", "--release", "q/\(first)"], environment: environment).status == 0)
        let again = try pmll(["recover", "--release", "q/\(first)"], environment: environment)
        #expect(again.status == 1 && again.stderr.hasPrefix("pmll: "), "\(again)")

        // A handler that keeps failing: counted, then quarantined at --max-attempts.
        _ = try abandon("sleep 60")
        let failing = try pmll(["recover", "--exec-handler", "false", "--max-attempts", "2"], environment: environment)
        #expect(failing.status == 65 && failing.stdout.contains("handler failed"), "\(failing)")
        let second = try pmll(["recover", "--exec-handler", "false", "--max-attempts", "2"], environment: environment)
        #expect(second.stdout.contains("quarantined (its handler failed 2 time(s)"), "\(second)")

        // Retry: the recorded command runs again, as a new operation of the queue.
        let marker = scratch.file("marker"), log = scratch.file("log")
        _ = try abandon("if [ -f \(marker) ]; then echo again >> \(log); else touch \(marker); sleep 60; fi")
        let retried = try pmll(["recover", "--policy", "default=retry"], environment: environment)
        #expect(retried.status == 0 && retried.stdout.contains("retried: "), "\(retried)")
        #expect((try? String(contentsOfFile: log, encoding: .utf8)) == "again\n")
        let done = try pmll(["recover", "--acknowledge"], environment: environment)
        #expect(done.stdout.contains("no abandoned operations"), "\(done)")
        #expect(try pmll(["recover", "--policy", "sometimes=retry"], environment: environment).status == 64)
    }

    @Test("old queue records are trimmed to the newest ones, and the statistics still count them all")
    func queueRecordsAreTrimmed() async throws {
        let cluster = try EtcdCluster()
        defer { cluster.stop() }
        let address = cluster.address("trim")
        try await onEtcdThread {
            let pool = try await EtcdPool.open(url: address)
            let queue = try pool.queue(named: "t", keepRecords: 5)
            for i in 0..<(5 + EtcdQueue.trimSlack + 6) { _ = try await queue.execute(kind: "k") { _ in i } }
            _ = try? await queue.execute(kind: "k", retry: RetryPolicy(maxRetries: 0)) { _ -> Int in throw CancellationError() }
            let kept = try await queue.records()
            #expect(kept.count <= 5 + EtcdQueue.trimSlack && kept.count >= 5, "\(kept.count) records kept")
            #expect(kept.last?.state == .failed)
            let stats = try await queue.stats
            #expect(stats.completed == UInt64(5 + EtcdQueue.trimSlack + 6) && stats.failed == 1, "\(stats)")
            #expect(stats.waitHistogram.reduce(0, +) == stats.completed + stats.failed)
            await pool.close()
        }
    }

    @Test("shared holders share; an exclusive holder excludes them; a queued writer keeps later readers out; a dead reader is no death")
    func sharedHolds() throws {
        let cluster = try EtcdCluster()
        defer { cluster.stop() }
        let scratch = Scratch()
        let environment = ["PMLL_POOL": cluster.address("shared", ttl: 2)]
        let log = scratch.file("log")
        let stamp = { (tag: String) in "echo \(tag) start $(date +%s%N) >> \(log); sleep 0.6; echo \(tag) end $(date +%s%N) >> \(log)" }
        // The first readers hold until `go`: on a loaded machine three `pmll` start-ups can
        // be further apart than any fixed hold, and the test must see them hold together.
        let go = scratch.file("go")
        let held = { (tag: String) in
            "echo \(tag) start $(date +%s%N) >> \(log); while [ ! -f \(go) ]; do sleep 0.05; done; sleep 0.1; echo \(tag) end $(date +%s%N) >> \(log)"
        }
        var readers: [Child] = []
        defer { readers.forEach { $0.stopIfRunning() } }
        for i in 1...3 {
            readers.append(try Child(Binaries.pmll, ["lock", "--shared", "R", "--", "sh", "-c", held("r\(i)")], environment: environment))
        }
        try waitUntilSync {
            let status = try? pmll(["status", "--json"], environment: environment)
            return (status?.stdout.components(separatedBy: "\"fencingToken\"").count ?? 0) - 1 == 3
        }
        let writer = try Child(Binaries.pmll, ["lock", "R", "--", "sh", "-c", stamp("w")], environment: environment)
        defer { writer.stopIfRunning() }
        try waitUntilSync { (try? pmll(["status", "--json"], environment: environment))?.stdout.contains("\"waiters\":1") == true }
        let late = try Child(Binaries.pmll, ["lock", "--shared", "R", "--", "sh", "-c", stamp("r4")], environment: environment)
        defer { late.stopIfRunning() }
        try waitUntilSync { (try? pmll(["status", "--json"], environment: environment))?.stdout.contains("\"waiters\":2") == true }
        _ = FileManager.default.createFile(atPath: go, contents: nil)
        for child in readers + [writer, late] { #expect(child.wait() == 0, "\(child.stderr)") }
        var start: [String: Int64] = [:], end: [String: Int64] = [:]
        for line in try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count == 3, let t = Int64(f[2]) else { continue }
            if f[1] == "start" { start[String(f[0])] = t } else { end[String(f[0])] = t }
        }
        let readersEnd = ["r1", "r2", "r3"].compactMap { end[$0] }.max() ?? 0
        let readersStart = ["r1", "r2", "r3"].compactMap { start[$0] }.max() ?? .max
        #expect(readersStart < (["r1", "r2", "r3"].compactMap { end[$0] }.min() ?? 0), "the three readers held the lock together")
        #expect((start["w"] ?? 0) > readersEnd, "the writer ran after every reader")
        #expect((start["r4"] ?? 0) > (end["w"] ?? .max), "a reader that came after the queued writer ran after it")

        // A reader killed while a writer waits: the writer goes on after the reader's lease,
        // and is not told of a death (readers do not change what the lock protects).
        let dying = try Child(Binaries.pmll, ["lock", "--shared", "R", "--", "sleep", "60"], environment: environment)
        defer { dying.stopIfRunning() }
        try waitForHolder(environment, lock: "R")
        let waiting = try Child(Binaries.pmll, ["lock", "R", "--", "sh", "-c", "echo ${PMLL_PREVIOUS_OWNER_DIED:-0}"], environment: environment)
        defer { waiting.stopIfRunning() }
        try waitUntilSync { (try? pmll(["status", "--json"], environment: environment))?.stdout.contains("\"waiters\":1") == true }
        dying.killParentFirst()
        dying.wait()
        #expect(waiting.wait(timeout: 30) == 0)
        #expect(waiting.stdout == "0", "a reader's death reported to a writer")
    }

    @Test("pmll flock on an etcd pool: util-linux's scenario, -F refused, COMMAND not found is 69")
    func flockOnEtcd() throws {
        let cluster = try EtcdCluster()
        defer { cluster.stop() }
        let scratch = Scratch()
        let environment = ["PMLL_POOL": cluster.address("flock", ttl: 2)]
        let file = scratch.file("lockfile")
        // 4 s: the three non-blocking calls below must all land while it holds, each a `pmll` start-up
        // (slower on a loaded machine).
        let holder = try Child(Binaries.pmll, ["flock", "--shared", file, "sleep", "4"], environment: environment)
        defer { holder.stopIfRunning() }
        try waitForHolder(environment, lock: file)
        let start = Date()
        #expect(try pmll(["flock", "--nonblock", "--conflict-exit-code", "123", file, "true"], environment: environment).status == 123)
        #expect(try pmll(["flock", "--shared", "-n", file, "true"], environment: environment).status == 0)
        // Through a relative path: the same lock (the canonical path names it).
        let relative = try run("/bin/sh", ["-c", "cd \(scratch.path) && \(Binaries.pmll) flock -xn -E 7 lockfile true"], environment: environment)
        #expect(relative.status == 7, "\(relative)")
        #expect(try pmll(["flock", "--timeout", "5", file, "true"], environment: environment).status == 0)
        let waited = Date().timeIntervalSince(start)
        #expect(waited > 1 && waited < 10, "\(waited)")
        #expect(holder.wait() == 0)
        let noFork = try pmll(["flock", "-F", file, "true"], environment: environment)
        #expect(noFork.status == 64 && noFork.stderr.contains("not available on etcd pools"), "\(noFork)")
        #expect(try pmll(["flock", file, "/nonexistent/command"], environment: environment).status == 69)
        let shell = try pmll(["flock", file, "-c", "exit 5"], environment: environment)
        #expect(shell.status == 5)
        // COMMAND's own `--pool` is COMMAND's: flock's pool is $PMLL_POOL only (here a local one).
        let local = try pmll(["flock", file, "echo", "--pool", cluster.address("not-this")], environment: ["PMLL_POOL": scratch.file("local.pool")])
        #expect(local.status == 0 && local.stdout.hasPrefix("--pool etcd://"), "\(local)")
    }

    @Test("TLS: a pool speaks HTTPS to members that require a client certificate; without the certificate or the CA it is refused, a missing file is a bad address")
    func tls() throws {
        let cluster = try EtcdCluster(tls: true)
        defer { cluster.stop() }
        let files = try #require(cluster.tls)
        let environment = ["PMLL_POOL": cluster.address("tls", ttl: 2)]
        let locked = try pmll(["lock", "L", "--", "sh", "-c", "pmll=\(Binaries.pmll); $pmll state set --fence L=$PMLL_FENCING_TOKEN k v"], environment: environment)
        #expect(locked.status == 0, "\(locked)")
        #expect(try pmll(["state", "get", "k"], environment: environment).stdout == "v")
        let url = cluster.members[0].url
        let noCertificate = try pmll(["state", "get", "--pool", "etcd://\(url)/tls?ca=\(files.ca)", "k"])
        #expect(noCertificate.status == 69 && noCertificate.stderr.hasPrefix("pmll: "), "\(noCertificate)")
        let plain = try pmll(["state", "get", "--pool", "etcd://\(url)/tls", "k"])
        #expect(plain.status == 69, "\(plain)")
        let missing = try pmll(["state", "get", "--pool", "etcd://\(url)/tls?ca=/nonexistent.pem&cert=\(files.clientCertificate)&key=\(files.clientKey)", "k"])
        #expect(missing.status == 66 && missing.stderr.contains("TLS files"), "\(missing)")
        let half = try pmll(["state", "get", "--pool", "etcd://\(url)/tls?cert=\(files.clientCertificate)", "k"])
        #expect(half.status == 66 && half.stderr.contains("cert and key go together"), "\(half)")
    }

    // MARK: helpers

    func waitForHolder(_ environment: [String: String], lock: String) throws {
        try waitUntilSync {
            let status = try? pmll(["status", "--json"], environment: environment)
            return status?.stdout.contains("\"name\":\"\(lock)\"") == true && status?.stdout.contains("\"fencingToken\"") == true
        }
    }
}

/// Runs a test body on the etcd backend's own thread: in the full suite, blocking tests hold
/// Swift's two cooperative threads for seconds at a time, and a test that measures a 300 ms
/// timeout must not wait that long to see it.
func onEtcdThread<T>(_ body: () async throws -> T) async throws -> T {
    try await withTaskExecutorPreference(EtcdExecutor.shared, operation: body)
}

final class TicketLog: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [UInt64] = []
    private var inside = 0
    func append(_ i: UInt64) { lock.lock(); items.append(i); lock.unlock() }
    /// False if another operation is inside.
    func enter() -> Bool { lock.lock(); defer { lock.unlock() }; inside += 1; return inside == 1 }
    func leave() { lock.lock(); inside -= 1; lock.unlock() }
    var values: [UInt64] { lock.lock(); defer { lock.unlock() }; return items }
}

final class OrderRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Int] = []
    func append(_ i: Int) { lock.lock(); items.append(i); lock.unlock() }
    var values: [Int] { lock.lock(); defer { lock.unlock() }; return items }
}

func waitUntil(timeout: Double = 20, _ condition: () async throws -> Bool) async throws {
    let end = Date().addingTimeInterval(timeout)
    while try await !condition() {
        guard Date() < end else { throw EtcdUnavailable(message: "condition not met in \(timeout) s") }
        try await Task.sleep(for: .milliseconds(20))
    }
}

func waitUntilSync(timeout: Double = 20, _ condition: () throws -> Bool) throws {
    let end = Date().addingTimeInterval(timeout)
    while try !condition() {
        guard Date() < end else { throw EtcdUnavailable(message: "condition not met in \(timeout) s") }
        usleep(20_000)
    }
}

@Suite("etcd lease keep-alive")
struct EtcdKeepAliveTests {
    @Test("the lease is renewed while every cooperative thread of the process is blocked")
    func keepAliveWithBlockedThreads() async throws {
        let cluster = try EtcdCluster()
        defer { cluster.stop() }
        let pool = try await EtcdPool.open(url: cluster.address("blocked", ttl: 2))
        // Block this thread and (with a second task) the other cooperative thread for
        // longer than the TTL: only the event loop's keep-alive can save the lease.
        let other = Task.detached(executorPreference: EtcdExecutor.shared) { _ = usleep(5_000_000) }
        _ = usleep(5_000_000)
        await other.value
        let lock = try await pool.lock(named: "x", level: .package)
        #expect(try await lock.withLock { $0.fencingToken } > 0)
        await pool.close()
    }
}

@Suite("etcd backend: three members")
struct EtcdClusterTests {
    static func leader(of cluster: EtcdCluster, among chosen: [Int]? = nil) throws -> Int? { cluster.leader(among: chosen) }

    @Test("a holder cut off with a minority (ip netns) loses the lock: the majority's next holder commits, the cut-off holder's fenced commit is refused, nothing acknowledged is lost")
    func partitionedHolderIsFenced() throws {
        let lab = try NetworkLab(hosts: 3)
        defer { lab.tearDown() }
        let cluster = try EtcdCluster(lab: lab)
        defer { cluster.stop() }
        let scratch = Scratch()
        let everyMember = cluster.address("partition", ttl: 2)
        let pmllPath = Binaries.pmll
        let go = scratch.file("go"), rc = scratch.file("rc"), token = scratch.file("token")
        // The holder runs on host 0, beside member 0.
        let script = """
            echo $PMLL_FENCING_TOKEN > \(token); while [ ! -f \(go) ]; do sleep 0.05; done; \
            \(pmllPath) state set --fence L=$PMLL_FENCING_TOKEN k stale; echo $? > \(rc)
            """
        let argv = lab.command(in: 0, [pmllPath, "lock", "--pool", everyMember, "L", "--", "sh", "-c", script])
        let holder = try Child(argv[0], Array(argv.dropFirst()), environment: ["PMLL_POOL": everyMember])
        defer { holder.stopIfRunning() }
        try waitUntilSync(timeout: 30) { FileManager.default.fileExists(atPath: token) }
        try lab.isolate(0)
        // The majority elects a leader of its own if it lost it (a few seconds on a loaded
        // machine); then, from this host, through the majority (members 1 and 2).
        try waitUntilSync(timeout: 30) {
            let leader = try? EtcdClusterTests.leader(of: cluster, among: [1, 2])
            return leader != nil
        }
        let majority = cluster.address("partition", ttl: 2, members: [1, 2])
        let second = try run(pmllPath, ["lock", "--pool", majority, "L", "--", "sh", "-c",
                                        "\(pmllPath) state set --pool \(majority) --fence L=$PMLL_FENCING_TOKEN k fresh && echo $PMLL_FENCING_TOKEN"],
                             timeout: 60)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stderr.contains("died while holding"), "the majority's next holder is told: \(second.stderr)")
        try lab.heal(0)
        _ = FileManager.default.createFile(atPath: go, contents: nil)
        // `echo $? > rc` creates the file before it writes: wait for the status, not the file.
        try waitUntilSync(timeout: 60) { ((try? String(contentsOfFile: rc, encoding: .utf8)) ?? "").hasSuffix("\n") }
        let stale = (try? String(contentsOfFile: rc, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(stale == "75", "the cut-off holder's fenced commit must be refused (exit 75), got \(stale ?? "nothing")")
        #expect(holder.wait(timeout: 60) == 75, "the cut-off holder learns it lost the lock: \(holder.stderr)")
        let value = try run(pmllPath, ["state", "get", "--pool", majority, "k"])
        #expect(value.stdout == "fresh")
        let first = Int64((try String(contentsOfFile: token, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        #expect((Int64(second.stdout) ?? 0) > first, "tokens increase in commit order")
    }

    @Test("a history under faults: processes increment under the lock while the leader is killed and a holder is paused past its TTL; acknowledged writes increase with their tokens and none is lost")
    func historyUnderFaults() throws {
        let cluster = try EtcdCluster(members: 3)
        defer { cluster.stop() }
        let scratch = Scratch()
        let log = scratch.file("acks")
        let environment = ["PMLL_POOL": cluster.address("history", ttl: 2), "PMLL": Binaries.pmll]
        // An acknowledged write is logged with its token and the value it wrote; failures
        // (a lost lock, an unknown outcome during the election) are allowed, lies are not.
        let section = """
            v=$("$PMLL" state get n 2>/dev/null); rc=$?; if [ $rc = 1 ]; then v=0; elif [ $rc != 0 ]; then exit 0; fi; sleep 0.05; \
            "$PMLL" state set --fence counter=$PMLL_FENCING_TOKEN n $((v+1)) && echo "$PMLL_FENCING_TOKEN $((v+1))" >> \(log)
            """
        let loop = "i=0; while [ $i -lt 10 ]; do i=$((i+1)); \"$PMLL\" lock --timeout 30 counter -- sh -c '\(section)'; done; exit 0"
        let workers = try (0..<3).map { _ in try Child("/bin/sh", ["-c", loop], environment: environment) }
        defer { workers.forEach { $0.stopIfRunning() } }
        usleep(1_500_000)
        if let leader = try EtcdClusterTests.leader(of: cluster) { cluster.kill(member: leader) }
        // Pause whoever holds the lock now past its TTL, then let it go on.
        let live = cluster.members.indices.first { cluster.members[$0].process?.isRunning == true } ?? 0
        let status = try run(Binaries.pmll, ["status", "--json", "--pool", cluster.address("history", ttl: 2, members: [live])], environment: environment, timeout: 30)
        if let range = status.stdout.range(of: #""pid":(\d+)"#, options: .regularExpression),
           let pid = Int32(status.stdout[range].dropFirst(6)) {
            kill(pid, SIGSTOP)
            usleep(3_500_000)
            kill(pid, SIGCONT)
        }
        for worker in workers { #expect(worker.wait(timeout: 180) == 0, "\(worker.stderr)") }
        let acks = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").compactMap { line -> (Int64, Int)? in
            let f = line.split(separator: " ")
            guard f.count == 2, let t = Int64(f[0]), let v = Int(f[1]) else { return nil }
            return (t, v)
        }
        #expect(acks.count >= 10, "too few acknowledged writes to judge: \(acks.count)")
        // In token order (a section paused between its commit and its `echo` logs late).
        let byToken = acks.sorted { $0.0 < $1.0 }
        for (a, b) in zip(byToken, byToken.dropFirst()) {
            #expect(b.0 > a.0, "token \(b.0) acknowledged twice")
            #expect(b.1 > a.1, "a lost update: value \(b.1) at token \(b.0) after value \(a.1) at token \(a.0)")
        }
        let final = try run(Binaries.pmll, ["state", "get", "n", "--pool", cluster.address("history", ttl: 2, members: [live])], environment: environment)
        #expect((Int(final.stdout) ?? 0) >= (acks.map(\.1).max() ?? 0), "an acknowledged write is gone: final \(final.stdout), largest acknowledged \(acks.map(\.1).max() ?? 0)")
    }

    @Test("a randomised history (pmll-stress etcd-history): a seeded nemesis kills, restarts and pauses members and holders while 3 processes increment; the history is sound")
    func randomisedHistory() throws {
        // Short here; `pmll-stress etcd-history --duration 600` is the long run (Docs/Etcd.md).
        let result = try run(Binaries.directory + "/pmll-stress", ["etcd-history", "--duration", "20", "--workers", "3",
                                                                   "--fault-interval", "1.5", "--seed", "20261202", "--json"], timeout: 240)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        struct Summary: Decodable { var acknowledged: Int; var faults: [String: Int]; var violations: [String] }
        let summary = try JSONDecoder().decode(Summary.self, from: Data(result.stdout.utf8))
        #expect(summary.violations.isEmpty)
        #expect(summary.faults.filter { $0.key != "none" }.values.reduce(0, +) >= 3, "the nemesis must have struck: \(summary.faults)")
        #expect(summary.acknowledged >= 10, "\(summary.acknowledged) acknowledged writes")
    }

    @Test("the history checker catches lost updates: without the fence, holders paused past their lease overwrite their successors")
    func unfencedControlLosesUpdates() throws {
        // The control that shows the checker above can fail, and what fencing prevents: the
        // same workers writing without `--fence` (as bare etcd locks do, Jepsen's finding).
        // Whether a pause lands mid-write is timing: three pauses in a run once caused no lost
        // update (seen in CI). The control must catch one within three runs (other seeds).
        var outputs: [String] = []
        for seed in [7, 8, 9] {
            let result = try run(Binaries.directory + "/pmll-stress", ["etcd-history", "--unfenced", "--faults", "pause-holder", "--think", "0.3",
                                                                       "--duration", "16", "--fault-interval", "1.5", "--seed", "\(seed)", "--json"], timeout: 240)
            outputs.append("\(result.status): \(result.stdout)\n\(result.stderr)")
            if result.status == 1 && result.stdout.contains("lost update") { return }
        }
        Issue.record("no lost update in three unfenced runs:\n\(outputs.joined(separator: "\n"))")
    }

    @Test("the leader killed while a lock is held and a waiter waits: the lock passes on, no death is invented, no write is lost")
    func leaderKilledWhileHeld() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster(members: 3)
            defer { cluster.stop() }
            // A 10 s lease: the holder must outlive the election. With 5 s, a CI machine busy
            // with the crash suite once took long enough over the election (and the new
            // leader's first renewals) that the lease ran out and the commit was refused.
            let address = cluster.address("leader", ttl: 10)
            let a = try await EtcdPool.open(url: address)
            let b = try await EtcdPool.open(url: address)
            let lockA = try await a.lock(named: "L", level: .package)
            let lockB = try await b.lock(named: "L", level: .package)
            var holderToken: Int64 = 0
            let waiting = try await lockA.withLock { grant in
                holderToken = grant.fencingToken
                try await a.transaction(fencedBy: [grant.fence]) { try $0.set("k", "1") }
                let waiting = Task.detached(executorPreference: EtcdExecutor.shared) {
                    try await lockB.withLock { newer -> (Int64, Bool) in
                        try await b.transaction(fencedBy: [newer.fence]) { tx in
                            let v = Int(String(decoding: try await tx.value(for: "k") ?? [], as: UTF8.self)) ?? 0
                            try tx.set("k", String(v + 1))
                        }
                        return (newer.fencingToken, newer.previousOwnerDeath != nil)
                    }
                }
                try await waitUntil { try await a.lockStatus().first?.waiters == 1 }
                let leader = try #require(try Self.leader(of: cluster))
                cluster.kill(member: leader)
                // The holder goes on through the other members (after the election).
                try await a.transaction(fencedBy: [grant.fence]) { tx in
                    let v = Int(String(decoding: try await tx.value(for: "k") ?? [], as: UTF8.self)) ?? 0
                    try tx.set("k", String(v + 1))
                }
                return waiting
            }
            let (token, toldOfDeath) = try await waiting.value
            #expect(token > holderToken)
            #expect(!toldOfDeath, "a clean hand-over reported as a death")
            #expect(try await a.value(for: "k") == Array("3".utf8), "every acknowledged increment survives")
            let statuses = try await a.lockStatus()
            #expect(statuses.first?.unrepairedDeath == nil, "a clean hand-over reported as a death")
            await a.close()
            await b.close()
        }
    }
}

@Suite("one interface over both backends")
struct CoordinationPoolTests {
    /// The same code against any backend: tasks of several participants increment a counter
    /// under a lock (no update lost), shared holds overlap, the typed errors are the same.
    static func exercise(_ open: @Sendable () async throws -> any CoordinationPool) async throws {
        let pools = try await [open(), open(), open()]
        try await withThrowingTaskGroup(of: Void.self) { group in
            for pool in pools {
                group.addTask {
                    for _ in 0..<5 {
                        try await pool.withLock(named: "counter", level: .package, shared: false, timeout: .seconds(60)) { hold in
                            #expect(!hold.shared)
                            try await pool.update("n", fencedBy: hold) { old in
                                Array(String((Int(String(decoding: old ?? Array("0".utf8), as: UTF8.self)) ?? 0) + 1).utf8)
                            }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try await pools[0].stateValue(for: "n") == Array("15".utf8))
        // Shared holds overlap: the second is taken while the first is held.
        try await pools[0].withLock(named: "index", level: .package, shared: true, timeout: nil) { _ in
            let other = pools[1]
            let inner = try await Task.detached(executorPreference: EtcdExecutor.shared) {
                try await other.withLock(named: "index", level: .package, shared: true, timeout: .seconds(5)) { $0.shared }
            }.value
            #expect(inner)
            let writer = pools[2]
            await #expect(throws: PMLLError.self) {
                try await Task.detached(executorPreference: EtcdExecutor.shared) {
                    try await writer.withLock(named: "index", level: .package, shared: false, timeout: .milliseconds(200)) { _ in }
                }.value
            }
        }
        await #expect(throws: PMLLError.levelMismatch(name: "counter", existing: .package, requested: .network)) {
            try await pools[0].withLock(named: "counter", level: .network, shared: false, timeout: nil) { _ in }
        }
        try await exerciseTransactions(pools)
        try await exerciseQueues(pools)
        for pool in pools { if let etcd = pool as? EtcdPool { await etcd.close() } }
    }

    /// Transactions over several keys through the same interface: concurrent transfers
    /// between two keys without a lock (serializable: conflicts re-run) keep the sum; one
    /// under a hold commits with its fence.
    static func exerciseTransactions(_ pools: [any CoordinationPool]) async throws {
        func number(_ bytes: [UInt8]?) -> Int { Int(String(decoding: bytes ?? Array("0".utf8), as: UTF8.self)) ?? -1 }
        try await pools[0].transaction(fencedBy: []) { tx in try tx.set("acct/a", Array("100".utf8)) }
        let runs = TicketLog()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for pool in pools {
                group.addTask {
                    for _ in 0..<5 {
                        try await pool.transaction(fencedBy: []) { tx in
                            runs.append(0)
                            let a = number(try await tx.value(for: "acct/a")), b = number(try await tx.value(for: "acct/b"))
                            try await Task.sleep(for: .milliseconds(2))   // widen the window for a conflict
                            try tx.set("acct/a", Array(String(a - 1).utf8))
                            try tx.set("acct/b", Array(String(b + 1).utf8))
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(number(try await pools[1].stateValue(for: "acct/a")) == 85)
        #expect(number(try await pools[1].stateValue(for: "acct/b")) == 15)
        #expect(runs.values.count > 15, "no conflict was met: the test did not test serializability")
        try await pools[2].withLock(named: "acct", level: .package, shared: false, timeout: .seconds(30)) { hold in
            try await pools[2].transaction(fencedBy: [hold]) { tx in
                try tx.remove("acct/b")
                try tx.set("acct/a", Array("100".utf8))
            }
        }
        #expect(try await pools[0].stateValue(for: "acct/b") == nil)
        #expect(number(try await pools[0].stateValue(for: "acct/a")) == 100)
    }

    /// Queues through the same interface: operations of three participants never overlap and
    /// run in ticket order; a retried operation is told its attempt; a batch reports each
    /// outcome; the statistics count all of it.
    static func exerciseQueues(_ pools: [any CoordinationPool]) async throws {
        let order = TicketLog()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for pool in pools {
                group.addTask {
                    for _ in 0..<4 {
                        try await pool.execute(queue: "jobs", kind: "step", payload: [1], timeout: .seconds(60), retry: nil) { op in
                            #expect(order.enter(), "two operations of one queue ran at once")
                            order.append(op.ticket)
                            try await Task.sleep(for: .milliseconds(5))
                            order.leave()
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(order.values.count == 12 && order.values == order.values.sorted(), "\(order.values)")
        struct Flaky: Error {}
        let attempts = try await pools[1].execute(queue: "jobs", kind: "flaky", payload: [], timeout: nil,
                                                  retry: RetryPolicy(maxRetries: 3, baseDelay: .milliseconds(1))) { op -> Int in
            if op.attempt < 3 { throw RetryableError(Flaky()) }
            return op.attempt
        }
        #expect(attempts == 3)
        let results = try await pools[2].executeBatch(queue: "jobs", [
            BatchOperation(kind: "a") { _ in 1 },
            BatchOperation(kind: "b") { _ -> Int in throw Flaky() },
            BatchOperation(kind: "c") { _ in 3 },
        ], timeout: nil, retry: RetryPolicy(maxRetries: 0))
        #expect(results.count == 3)
        #expect((try? results[0].get()) == 1 && (try? results[1].get()) == nil && (try? results[2].get()) == 3)
        let stats = try await pools[0].queueStatistics("jobs")
        #expect(stats.completed == 15 && stats.failed == 1 && stats.retried == 2 && stats.pending == 0, "\(stats)")
    }

    @Test("on a local pool file")
    func local() async throws {
        let scratch = Scratch()
        let path = scratch.file("c.pool")
        try await onEtcdThread { try await Self.exercise { try await Pool.open(url: path) } }
    }

    @Test("on an etcd cluster")
    func etcd() async throws {
        let cluster = try EtcdCluster()
        defer { cluster.stop() }
        let address = cluster.address("neutral")
        try await onEtcdThread { try await Self.exercise { try await Pool.open(url: address) } }
    }
}
