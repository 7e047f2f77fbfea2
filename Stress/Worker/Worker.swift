public import ArgumentParser
import Foundation
import Synchronization
public import PMLL

/// `pmll-worker`: the real processes that the test suite and benchmarks spawn, kill and
/// inspect. Each subcommand prints one JSON object per line on stdout for the parent.
@main
struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmll-worker",
        abstract: "Test and benchmark worker processes for PMLL.",
        subcommands: [Counter.self, Hold.self, Churn.self, Robust8.self, Nested.self, Hammer.self, QueueOps.self, QueueHold.self, Recover.self, Bank.self, TxSet.self, TxCounter.self, TxConflict.self, AsyncWaiters.self, ReadWriteMix.self, MetricsProbe.self, Fill.self, ManyLocks.self]
    )
}

struct Common: ParsableArguments {
    @Option var pool: String
    @Option var lock: String = "worker"
    @Option var level: LockLevel = .package

    func open() throws -> (Pool, LockHandle) {
        let pool = try Pool.open(path: pool)
        return (pool, try pool.lock(named: lock, level: level))
    }
}

extension LockLevel: ExpressibleByArgument {
    public static var allValueStrings: [String] { allCases.map(\.description) }
    public var defaultValueDescription: String { description }
}

/// Read-modify-write of a counter file under the lock, from several threads.
struct Counter: ParsableCommand {
    @OptionGroup var common: Common
    @Option var file: String
    @Option var iterations = 1000
    @Option var threads = 1

    func run() throws {
        let (_, lock) = try common.open()
        let fd = open(file, O_RDWR | O_CREAT, 0o600)
        guard fd >= 0 else { throw ExitCode(2) }
        let errors = LockedCounter()
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for _ in 0..<iterations {
                do {
                    try lock.withLock { _ in
                        var value: UInt64 = 0
                        _ = pread(fd, &value, 8, 0)
                        value += 1
                        _ = pwrite(fd, &value, 8, 0)
                    }
                } catch {
                    errors.add()
                }
            }
        }
        emit(["event": "done", "errors": errors.value])
    }
}

/// Takes the lock, reports what it found, holds it for `seconds`, releases.
struct Hold: ParsableCommand {
    @OptionGroup var common: Common
    @Option var seconds: Double = 3600
    @Option var timeout: Double?
    @Flag var inconsistent = false
    @Flag(help: "Hold the lock shared.") var shared = false
    @Option(help: "Shared holds taken and released first (a thread tries the reader bias on a lock it has held biased).") var warm = 0

    func run() throws {
        let (pool, lock) = try common.open()
        do {
            let wait: Duration? = timeout.map { .milliseconds(Int64($0 * 1000)) }
            for _ in 0..<warm { try lock.withSharedLock(timeout: wait) { _ in } }
            let hold = shared ? { (body: (inout LockGrant) throws -> Void) in try lock.withSharedLock(timeout: wait, body) }
                              : { (body: (inout LockGrant) throws -> Void) in try lock.withLock(timeout: wait, body) }
            try hold { grant in
                emit(["event": "acquired", "pid": Int(getpid()), "ownerDied": grant.previousOwnerDeath != nil,
                      "created": pool.openReport.created, "reset": pool.openReport.volatileReset?.rawValue ?? "",
                      "deadPid": Int(grant.previousOwnerDeath?.pid ?? 0),
                      "cause": grant.previousOwnerDeath?.cause.rawValue ?? ""])
                if seconds > 0 { usleep(UInt32(min(seconds, 3600) * 1e6)) }
                if inconsistent { grant.markInconsistent() }
            }
            emit(["event": "released"])
        } catch let error as PMLLError {
            if case .timeout(_, let holder) = error {
                emit(["event": "timeout", "holderPid": Int(holder?.pid ?? 0)])
                throw ExitCode(75)
            }
            emit(["event": "error", "error": error.description])
            throw ExitCode(1)
        }
    }
}

/// Loops forever on one lock. The critical section writes a marker, bumps a counter and
/// clears the marker; the next holder after an interrupted section must be told the
/// owner died. File layout (u64 each): counter, marker, deaths seen, violations.
struct Churn: ParsableCommand {
    @OptionGroup var common: Common
    @Option var file: String

    func run() throws {
        let (_, lock) = try common.open()
        let fd = open(file, O_RDWR | O_CREAT, 0o600)
        guard fd >= 0 else { throw ExitCode(2) }
        emit(["event": "started", "pid": Int(getpid())])
        func field(_ i: Int) -> UInt64 { var v: UInt64 = 0; _ = pread(fd, &v, 8, off_t(i * 8)); return v }
        func set(_ i: Int, _ v: UInt64) { var v = v; _ = pwrite(fd, &v, 8, off_t(i * 8)) }
        while true {
            try lock.withLock(timeout: .seconds(30)) { grant in
                let marker = field(1)
                if grant.previousOwnerDeath != nil {
                    set(2, field(2) + 1)
                    set(1, 0)
                } else if marker != 0 {
                    set(3, field(3) + 1)   // interrupted section, nobody told: a violation
                    set(1, 0)
                }
                set(1, UInt64(getpid()))
                set(0, field(0) + 1)
                set(1, 0)
            }
        }
    }
}

/// glibc tst-robust8: several threads randomly lock, time out and unlock many locks,
/// then the process kills itself with everything in whatever state it is in.
struct Robust8: ParsableCommand {
    @Option var pool: String
    @Option var locks = 100
    @Option var threads = 9
    @Option var milliseconds = 200

    func run() throws {
        let pool = try Pool.open(path: pool)
        let handles = try (0..<locks).map { try pool.lock(named: "robust8/\($0)", level: .filesystem) }
        emit(["event": "started", "pid": Int(getpid())])
        for _ in 0..<threads {
            Thread.detachNewThread {
                while true {
                    let lock = handles.randomElement()!
                    _ = try? lock.withLock(timeout: .microseconds(Int64.random(in: 0...2000))) { _ in
                        usleep(UInt32.random(in: 0...200))
                    }
                }
            }
        }
        usleep(UInt32(milliseconds * 1000))
        kill(getpid(), SIGKILL)
    }
}

/// Typed API, all four levels nested in order, several package locks in one call.
struct Nested: ParsableCommand {
    @Option var pool: String
    @Option var file: String
    @Option var iterations = 100

    func run() throws {
        let pool = try Pool.open(path: pool)
        let registry = try pool.lock("nested/registry", Registry.self)
        let packages = try ["nested/pkg-b", "nested/pkg-a", "nested/pkg-c"].map { try pool.lock($0, Package.self) }
        let files = try pool.lock("nested/fs", FileSystem.self)
        let network = try pool.lock("nested/net", Network.self)
        let fd = open(file, O_RDWR | O_CREAT, 0o600)
        for i in 0..<iterations {
            try pool.withLockContext { root in
                if i % 2 == 0 {
                    try root.withLock(registry: registry) { r in
                        try r.withLocks(package: packages.shuffled()) { p in
                            try p.withLock(filesystem: files) { f in
                                try f.withLock(network: network) { _ in bump(fd) }
                            }
                        }
                    }
                } else {
                    // Skipping levels is fine: only the order matters.
                    try root.withLocks(package: Array(packages.prefix(2))) { p in
                        try p.withLock(network: network) { _ in bump(fd) }
                    }
                }
            }
        }
        emit(["event": "done"])
    }

    func bump(_ fd: Int32) {
        var v: UInt64 = 0
        _ = pread(fd, &v, 8, 0)
        v += 1
        _ = pwrite(fd, &v, 8, 0)
    }
}

/// Holds the lock for `holdMicroseconds` at a time and takes it again at once after each
/// release: a barging holder that starves waiters unless they are handed the lock.
struct Hammer: ParsableCommand {
    @OptionGroup var common: Common
    @Option var holdMicroseconds = 2000
    @Option var seconds = 10.0

    func run() throws {
        let (_, lock) = try common.open()
        emit(["event": "started"])
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            try lock.withLock { _ in _ = usleep(UInt32(holdMicroseconds)) }
        }
    }
}

/// Runs `count` operations on a queue, each logging its begin and end (with the ticket and a
/// monotonic timestamp) to a shared append-only log.
struct QueueOps: AsyncParsableCommand {
    @Option var pool: String
    @Option var queue: String
    @Option var count = 10
    @Option var log: String
    @Option var sleepMilliseconds = 1
    @Option var kind = "append"
    @Flag var volatile = false
    @Flag(help: "Create the pool without an audit log (for benchmarks against builds that had none).") var noAudit = false

    func run() async throws {
        var options = PoolOptions()
        if noAudit { options.auditRingSlots = 0 }
        let pool = try Pool.open(path: pool, options: options)
        let q = try pool.queue(named: queue, persistent: !volatile)
        let fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        emit(["event": "started", "pid": Int(getpid())])
        for _ in 0..<count {
            try await q.execute(kind: kind, payload: Array("pid \(getpid())".utf8), timeout: .seconds(60)) { op in
                appendLine(fd, "B \(queue) \(op.ticket) \(getpid()) \(monotonic())")
                if sleepMilliseconds > 0 { try await Task.sleep(for: .milliseconds(sleepMilliseconds)) }
                appendLine(fd, "E \(queue) \(op.ticket) \(getpid()) \(monotonic())")
            }
        }
        emit(["event": "done"])
    }
}

/// Runs one "install" operation that marks a state file partial and never finishes, so that
/// the test can SIGKILL it while running.
struct QueueHold: AsyncParsableCommand {
    @Option var pool: String
    @Option var queue: String
    @Option var stateFile: String

    func run() async throws {
        let pool = try Pool.open(path: pool)
        let q = try pool.queue(named: queue)
        try await q.execute(kind: "install", payload: Array(stateFile.utf8), timeout: .seconds(60)) { op in
            try "partial".write(toFile: stateFile, atomically: false, encoding: .utf8)
            emit(["event": "running", "ticket": Int(op.ticket), "pid": Int(getpid())])
            try await Task.sleep(for: .seconds(3600))
        }
    }
}

/// Runs recovery with a handler for `kind` that announces itself and never returns, so the
/// test can kill recovery in the middle.
struct Recover: AsyncParsableCommand {
    @Option var pool: String
    @Option var kind: String

    func run() async throws {
        let pool = try Pool.open(path: pool)
        _ = try await pool.recover(handlers: [kind: { record in
            emit(["event": "handling", "ticket": Int(record.ticket)])
            try await Task.sleep(for: .seconds(3600))
        }])
    }
}

/// Moves money between accounts in transactions under the accounts' locks, and rewrites
/// package install records (status and file list, which must agree) under the package lock.
struct Bank: ParsableCommand {
    @Option var pool: String
    @Option var accounts = 8
    @Option var seconds = 10.0
    @Flag(help: "Transfers take no account locks: serializable transactions alone keep the total.") var lockless = false

    func run() throws {
        let pool = try Pool.open(path: pool)
        let locks = try (0..<accounts).map { try pool.lock(named: "acct/\($0)", level: .package) }
        let packages = try (0..<3).map { try pool.lock(named: "pkg/\($0)", level: .package) }
        emit(["event": "started", "pid": Int(getpid())])
        let end = Date().addingTimeInterval(seconds)
        var n = 0
        while Date() < end {
            n += 1
            if n % 5 == 0 {
                let p = Int.random(in: 0..<3)
                try packages[p].withLock(timeout: .seconds(30)) { _ in
                    try pool.transaction { tx in
                        let version = Int(try tx.getString("pkg/\(p)/status")?.split(separator: "-").last ?? "0") ?? 0
                        try tx.set("pkg/\(p)/status", "installed-\(version + 1)")
                        try tx.set("pkg/\(p)/files", String(repeating: "f", count: 100 + version % 200) + "-\(version + 1)")
                    }
                }
                continue
            }
            let a = Int.random(in: 0..<accounts)
            var b = Int.random(in: 0..<accounts - 1)
            if b >= a { b += 1 }
            let transfer = {
                try pool.transaction { tx in
                    let from = Int(try tx.getString("acct/\(a)") ?? "0")!
                    let to = Int(try tx.getString("acct/\(b)") ?? "0")!
                    let amount = min(from, Int.random(in: 1...50))
                    try tx.set("acct/\(a)", String(from - amount))
                    try tx.set("acct/\(b)", String(to + amount))
                }
            }
            if lockless {
                do { try transfer() } catch PMLLError.transactionConflict { }   // retries ran out: nothing written
            } else {
                try pool.withLocks([locks[a], locks[b]], timeout: .seconds(30)) { _ in try transfer() }
            }
        }
        emit(["event": "done", "transactions": n])
    }
}

/// Threads that each run `count` transactions adding one to a counter under no user lock
/// (read, add, write back). Prints {"event": "done", "committed": N, "conflicts": M}: with
/// serializable transactions the counter moves by exactly `committed`.
struct TxCounter: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tx-counter")
    @Option var pool: String
    @Option var threads = 4
    @Option var count = 500
    @Option var key = "counter"
    @Option(help: "serializable or none") var isolation = "serializable"

    func run() throws {
        let pool = try Pool.open(path: pool)
        let options = TransactionOptions(isolation: isolation == "none" ? .none : .serializable)
        let committed = Atomic<Int>(0), conflicts = Atomic<Int>(0), failures = Atomic<Int>(0)
        runOnJoinedThreads(threads) { [key, count] _ in
            for _ in 0..<count {
                do {
                    try pool.transaction(options: options) { tx in
                        let n = Int(try tx.getString(key) ?? "0") ?? 0
                        try tx.set(key, String(n + 1))
                    }
                    committed.add(1, ordering: .relaxed)
                } catch PMLLError.transactionConflict {
                    conflicts.add(1, ordering: .relaxed)
                } catch {
                    failures.add(1, ordering: .relaxed)
                    FileHandle.standardError.write(Data("tx-counter: \(error)\n".utf8))
                }
            }
        }
        emit(["event": "done", "committed": committed.load(ordering: .relaxed), "conflicts": conflicts.load(ordering: .relaxed),
              "errors": failures.load(ordering: .relaxed)])
    }
}

/// A transaction that reads `a`, lets another thread commit `a` = "theirs" on its first
/// attempt, then writes `b` = "mine": its first commit conflicts (crash point `tx.conflict`),
/// its second commits.
struct TxConflict: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tx-conflict")
    @Option var pool: String

    func run() throws {
        let pool = try Pool.open(path: pool)
        var attempts = 0
        try pool.transaction { tx in
            attempts += 1
            _ = try tx.get("a")
            if attempts == 1 {
                let done = DispatchSemaphore(value: 0)
                Thread {
                    do { try pool.transaction { tx in try tx.set("a", "theirs") } } catch { fatalError("\(error)") }
                    done.signal()
                }.start()
                done.wait()
            }
            try tx.set("b", "mine")
        }
        emit(["event": "committed", "attempts": attempts])
    }
}

/// One transaction setting KEY=VALUE pairs (for crash injection with PMLL_CRASH_AT), or
/// with no pairs just reads KEY (which rolls back a dead committer's transaction first).
struct TxSet: ParsableCommand {
    @Option var pool: String
    @Option(help: "Hold this package-level lock around the transaction.") var lock: String?
    @Option(help: "List the keys with this prefix first (a serializable key list: the commit is exclusive).") var list: String?
    @Argument var pairs: [String]

    func run() throws {
        let pool = try Pool.open(path: pool)
        let before = Persistence.barrierCount
        let commit = {
            try pool.transaction { tx in
                if let list { _ = try tx.keys(prefix: list) }
                for pair in pairs {
                    let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
                    if parts.count == 2 { try tx.set(parts[0], parts[1]) } else { _ = try tx.get(parts[0]) }
                }
            }
        }
        if let lock {
            try pool.lock(named: lock, level: .package).withLock { _ in try commit() }
        } else {
            try commit()
        }
        // Durable barriers of the transaction (0 on tmpfs), recovery of a dead one's included.
        emit(["event": "committed", "barriers": Int(Persistence.barrierCount - before)])
    }
}

func appendLine(_ fd: Int32, _ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(fd, $0, strlen($0)) }
}

func monotonic() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}

func emit(_ object: [String: Any]) {
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    var line = data
    line.append(0x0A)
    line.withUnsafeBytes { _ = write(1, $0.baseAddress, $0.count) }
}
