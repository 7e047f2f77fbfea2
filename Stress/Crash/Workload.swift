import ArgumentParser
import Foundation
import PMLL
import PMLLStressSupport

/// The scripted workload the crash suite kills: bank transfers in transactions under the
/// accounts' locks, persistent queue operations, plain lock scopes, and new lock names (the
/// lock table grows). Every completed transfer, queue operation and set of new names is
/// acknowledged in an fsynced file: the oracle of what must survive.
struct Workload: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "workload", shouldDisplay: false)
    @Option var pool: String
    @Option var ack: String
    @Option var steps = 24
    @Option var seed: UInt64 = 1

    static let accounts = 4
    static let fillKeys = 6
    static let manyKeys = 600
    static let newLocks = 12

    static func fillValue(step: Int, key: Int) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: 40_000 + key * 1000) { buffer, count in
            for i in 0..<buffer.count { buffer[i] = UInt8(truncatingIfNeeded: step &* 7 &+ key &* 13 &+ i) }
            count = buffer.count
        }
    }

    static func tree(for pool: String) -> String { pool + ".tree" }
    /// Steps a run may have reached: one past the last acknowledged.
    static func steps(_ acks: [Substring]) -> Int {
        (acks.compactMap { $0.split(separator: " ").last.flatMap { Int($0) } }.max() ?? 0) + 2
    }
    static let initialBalance = 100

    func run() async throws {
        ParentWatch.armFromEnvironment()
        var rng = SplitMix(seed: seed)
        let pool = try Pool.open(path: pool)
        let queue = try pool.queue(named: "crash-q")
        let locks = try (0..<Self.accounts).map { try pool.lock(named: "acct/\($0)", level: .package) }
        let misc = try pool.lock(named: "misc", level: .filesystem)
        let fd = open(ack, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        func acknowledge(_ line: String) {
            _ = (line + "\n").withCString { write(fd, $0, strlen($0)) }
            fdatasync(fd)
        }
        let tree = Self.tree(for: pool.path)
        try? FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        for step in 0..<steps {
            switch step % 4 {
            case 0 where step % 8 == 4:
                try conflictingTransfer(pool, step: step, rng: &rng)
                acknowledge("tx \(step)")
            case 0:
                let a = Int(rng.next() % UInt64(Self.accounts))
                let b = (a + 1 + Int(rng.next() % UInt64(Self.accounts - 1))) % Self.accounts
                let amount = Int(rng.next() % 30) + 1
                try await pool.withLocks([locks[a], locks[b]]) { _ in
                    try pool.transaction { tx in
                        let from = Int(try tx.getString("acct/\(a)") ?? "0")!
                        let to = Int(try tx.getString("acct/\(b)") ?? "0")!
                        let moved = min(from, amount)
                        try tx.set("acct/\(a)", String(from - moved))
                        try tx.set("acct/\(b)", String(to + moved))
                        try tx.set("seq", String(step))
                        // A larger record too, so that extents and the bitmap change.
                        try tx.set("history", String(repeating: "\(step),", count: 40 + step))
                    }
                }
                acknowledge("tx \(step)")
            case 1:
                let ticket = try await queue.execute(kind: "step", payload: Array("\(step)".utf8), timeout: .seconds(10)) { $0.ticket }
                acknowledge("q \(ticket)")
            case 3 where step % 8 == 7:
                // Keys and large values past what the pool was created with: the key index
                // and the block space grow (crash points growth.*).
                // And enough small keys that its undo log overflows its slot into an area.
                try pool.transaction { tx in
                    for i in 0..<Self.fillKeys { try tx.set("fill/\(step)/\(i)", Self.fillValue(step: step, key: i)) }
                    for i in 0..<Self.manyKeys { try tx.set("many/\(step)/\(i)", "\(step).\(i)") }
                }
                acknowledge("fill \(step)")
            case 2:
                // Both files always carry the same version: the batch is all or nothing.
                let version = Array("\(step)".utf8)
                _ = try pool.apply(FileBatch([.write(path: "a", data: version, mode: 0o644), .write(path: "b", data: version, mode: 0o644)]),
                                   root: tree, atomic: true)
                acknowledge("batch \(step)")
            default:
                try await misc.withLock(timeout: .seconds(10)) { _ in }
                // New lock names past the table the pool was created with: the lock table
                // grows (an extension through the growth directory, then its header).
                for i in 0..<Self.newLocks { try await pool.lock(named: "grow/\(step)/\(i)", level: .network).withLock(timeout: .seconds(10)) { _ in } }
                acknowledge("locks \(step)")
            }
        }
    }
}

/// A transfer under no user lock that meets a conflict on its first attempt: after it has
/// read both accounts, another thread commits a transfer touching one of them, so the first
/// commit fails validation (crash point `tx.conflict`) and the body runs again. A conflicting
/// commit must leave no trace, whatever the instruction it is killed at.
func conflictingTransfer(_ pool: Pool, step: Int, rng: inout SplitMix) throws {
    let a = Int(rng.next() % UInt64(Workload.accounts))
    let b = (a + 1) % Workload.accounts, c = (a + 2) % Workload.accounts
    let amount = Int(rng.next() % 30) + 1
    var attempt = 0
    try pool.transaction { tx in
        attempt += 1
        let from = Int(try tx.getString("acct/\(a)") ?? "0")!
        let to = Int(try tx.getString("acct/\(b)") ?? "0")!
        if attempt == 1 {
            let done = DispatchSemaphore(value: 0)
            Thread {
                _ = try? pool.transaction { tx in
                    let x = Int(try tx.getString("acct/\(c)") ?? "0")!, y = Int(try tx.getString("acct/\(a)") ?? "0")!
                    try tx.set("acct/\(c)", String(x - min(x, 1)))
                    try tx.set("acct/\(a)", String(y + min(x, 1)))
                }
                done.signal()
            }.start()
            done.wait()
        }
        let moved = min(from, amount)
        try tx.set("acct/\(a)", String(from - moved))
        try tx.set("acct/\(b)", String(to + moved))
        try tx.set("seq", String(step))
    }
}

/// Opens the pool after a crash (recovering on the way) and checks every invariant.
/// Prints one JSON line: {"violations": [...]}; exits 1 if there are any.
struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "verify", shouldDisplay: false)
    @Option var pool: String
    @Option var ack: String

    func run() async throws {
        ParentWatch.armFromEnvironment()
        var violations: [String] = []
        do {
            let pool = try Pool.open(path: pool)
            let report = try await pool.recover(handlers: ["step": { _ in }])
            for item in report.items where item.outcome != .recovered { violations.append("recovery left \(item.record.kind) \(item.record.ticket): \(item.outcome)") }
            if !(try pool.abandonedOperations()).isEmpty { violations.append("abandoned operations remain after recovery") }
            let check = try pool.check()
            violations += check.problems.map { "check: \($0)" }
            var total = 0
            for i in 0..<Workload.accounts {
                guard let value = try pool.value(for: "acct/\(i)"), let n = Int(String(decoding: value, as: UTF8.self)) else {
                    violations.append("account \(i) missing or unreadable")
                    continue
                }
                total += n
            }
            if total != Workload.accounts * Workload.initialBalance { violations.append("total is \(total), not \(Workload.accounts * Workload.initialBalance)") }
            let acks = (try? String(contentsOfFile: ack, encoding: .utf8))?.split(separator: "\n") ?? []
            let seq = Int(String(decoding: try pool.value(for: "seq") ?? Array("-1".utf8), as: UTF8.self)) ?? -1
            if let lastTx = acks.last(where: { $0.hasPrefix("tx ") }).flatMap({ Int($0.dropFirst(3)) }), seq < lastTx {
                violations.append("acknowledged transaction \(lastTx) lost (seq is \(seq))")
            }
            let records = try pool.queue(named: "crash-q").records
            for line in acks where line.hasPrefix("q ") {
                let ticket = UInt64(line.dropFirst(2))!
                if records.first(where: { $0.ticket == ticket })?.state != .succeeded {
                    violations.append("acknowledged queue operation \(ticket) is not recorded as succeeded")
                }
            }
            let fillSteps = Set(try pool.transaction(isolation: .none) { tx in try tx.keys(prefix: "fill/") }.compactMap { $0.split(separator: "/").dropFirst().first.flatMap { Int($0) } })
            let ackedFills = Set(acks.filter { $0.hasPrefix("fill ") }.compactMap { Int($0.dropFirst(5)) })
            for step in fillSteps.union(ackedFills).sorted() {
                let found = try (0..<Workload.fillKeys).map { try pool.value(for: "fill/\(step)/\($0)") }
                let present = found.filter { $0 != nil }.count
                if present != 0 && present != Workload.fillKeys { violations.append("fill \(step) half committed: \(present) of \(Workload.fillKeys) keys") }
                for (i, value) in found.enumerated() where value != nil && value != Workload.fillValue(step: step, key: i) {
                    violations.append("fill \(step) key \(i) has the wrong value")
                }
                if present == 0 && acks.contains("fill \(step)") { violations.append("acknowledged fill \(step) lost") }
                let many = try (0..<Workload.manyKeys).filter { try pool.value(for: "many/\(step)/\($0)") == Array("\(step).\($0)".utf8) }.count
                if many != (present == 0 ? 0 : Workload.manyKeys) { violations.append("fill \(step): \(many) of its \(Workload.manyKeys) small keys, with \(present) large ones") }
            }
            let tree = Workload.tree(for: pool.path)
            let a = try? String(contentsOfFile: tree + "/a", encoding: .utf8), b = try? String(contentsOfFile: tree + "/b", encoding: .utf8)
            if a != b { violations.append("file batch half applied: a=\(a ?? "-") b=\(b ?? "-")") }
            if let lastBatch = acks.last(where: { $0.hasPrefix("batch ") }).flatMap({ Int($0.dropFirst(6)) }), Int(a ?? "") ?? -1 < lastBatch {
                violations.append("acknowledged file batch \(lastBatch) lost (tree has \(a ?? "nothing"))")
            }
            if let leftovers = try? FileManager.default.contentsOfDirectory(atPath: tree).filter({ $0.hasPrefix(".pmll-") }), !leftovers.isEmpty {
                violations.append("staging files left: \(leftovers)")
            }
            for line in acks where line.hasPrefix("locks ") {
                let step = line.dropFirst(6)
                for i in 0..<Workload.newLocks where try pool.existingLock(named: "grow/\(step)/\(i)") == nil {
                    violations.append("lock grow/\(step)/\(i) of an acknowledged step is missing")
                }
            }
            let grown = (0..<Workload.steps(acks)).flatMap { step in (0..<Workload.newLocks).map { "grow/\(step)/\($0)" } }
            for name in (0..<Workload.accounts).map({ "acct/\($0)" }) + ["misc"] + grown {
                guard let lock = try pool.existingLock(named: name) else { continue }
                do { try await lock.withLock(timeout: .seconds(5)) { _ in } } catch { violations.append("lock \(name): \(error)") }
            }
            // The audit chain survives every kill: a killed writer leaves a gap record, a killed
            // drainer records the next drainer does not write again.
            if let problem = try pool.verifyAuditLog().problem { violations.append("audit log: \(problem)") }
        } catch {
            violations.append("verify failed: \(error)")
        }
        let data = try JSONSerialization.data(withJSONObject: ["violations": violations])
        print(String(decoding: data, as: UTF8.self))
        if !violations.isEmpty { throw ExitCode(1) }
    }
}

