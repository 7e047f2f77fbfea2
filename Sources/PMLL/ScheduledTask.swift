import CPMLL
import FoundationEssentials
import Logging
import PMLLCore
import PMLLStore
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The last scheduled check of a pool, as recorded in it (`pmll status`, `pmll metrics`).
public struct CheckRecord: Codable, Sendable, Equatable {
    /// When it finished (ns since 1970).
    public let finishedAtNanoseconds: Int64
    public let durationNanoseconds: Int64
    public let pid: Int32
    public let ok: Bool
    /// The first problems found (at most 10).
    public let problems: [String]
    /// Scheduled checks run on this pool, by any process, and how many found problems.
    public let runs: UInt64
    public let failures: UInt64
}

/// Work done at a configured interval (consistency checks, backups), run by whichever process
/// that has it enabled finds it due: a process claims the next run in a serializable
/// transaction on the pool's record of that work, so that ten processes with it enabled still
/// do it once per interval. Checks: the full ``Pool/check()`` (online: the store under its
/// lock, the rest read atomically); a failure is logged (swift-log, `pmll.check`, error),
/// counted (swift-metrics `pmll_check_failures_total`) and recorded in the pool. Backups:
/// ``Pool/backup(rotatingIn:keep:timeout:)``, recorded the same way.
// @unchecked: `wake` is a futex word, accessed only through atomics and futex calls.
public final class ScheduledTask: @unchecked Sendable {
    private let stopRequested = Atomic<Bool>(false)
    private let wake = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    private let thread = Mutex<pthread_t?>(nil)
    static let logger = LibraryLogging.logger(label: "pmll.check")
    static let key = "pmll:check/last"
    static let claimKey = "pmll:check/claim"
    /// What one run does (a check, a backup), and the keys of its record and claim.
    struct Work: Sendable {
        let record: String
        let claim: String
        let run: @Sendable (Pool) -> Void
    }

    init(pool: Pool, interval: Duration, work: Work) throws(PMLLError) {
        wake.initialize(to: 0)
        let context = Unmanaged.passRetained(Box(pool: pool, interval: interval, work: work, owner: self)).toOpaque()
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.owner?.loop(pool: box.pool, interval: box.interval, work: box.work)
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<Box>.fromOpaque(context).release()
            throw .systemCall(name: "pthread_create (scheduled checks)", errno: Errno(rawValue: rc))
        }
        thread.withLock { $0 = t }
    }

    deinit { wake.deallocate() }

    private final class Box: @unchecked Sendable {
        let pool: Pool
        let interval: Duration
        let work: Work
        weak var owner: ScheduledTask?
        init(pool: Pool, interval: Duration, work: Work, owner: ScheduledTask) {
            self.pool = pool
            self.interval = interval
            self.work = work
            self.owner = owner
        }
    }

    /// Stops the checks and waits for a run in progress to finish.
    public func stop() {
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        pmll_store32(wake, 1)
        _ = pmll_futex_wake_private(wake, 1)
        if let t = thread.withLock({ t -> pthread_t? in defer { t = nil }; return t }) { pthread_join(t, nil) }
    }

    private func loop(pool: Pool, interval: Duration, work: Work) {
        let intervalNs = max(1_000_000, interval.nanoseconds)
        while !stopRequested.load(ordering: .sequentiallyConsistent) {
            let now = Clock.realtimeNanoseconds
            let due = Self.nextDue(pool, work, interval: intervalNs)
            if due <= now {
                if Self.claim(pool, work, interval: intervalNs, now: now) {
                    work.run(pool)
                } else if Self.nextDue(pool, work, interval: intervalNs) <= now {
                    // The claim itself failed (logged), and nobody else claimed: try again a
                    // little later rather than at once.
                    _ = pmll_futex_wait_private(wake, 0, Clock.monotonicNanoseconds + min(intervalNs, 1_000_000_000))
                }
                continue
            }
            // Sleep until due (re-read then: another process may have checked meanwhile).
            _ = pmll_futex_wait_private(wake, 0, Clock.monotonicNanoseconds + min(due - now, 3_600_000_000_000))
        }
    }

    /// When the next run is due: an interval after the last claim (every run is claimed first).
    static func nextDue(_ pool: Pool, _ work: Work, interval: Int64) -> Int64 {
        let claimed = (try? pool.value(for: work.claim)).flatMap { $0.map { Int64(String(decoding: $0, as: UTF8.self)) } } ?? nil
        return (claimed ?? 0) + interval
    }

    /// Claims the run due now; false when another process did first.
    static func claim(_ pool: Pool, _ work: Work, interval: Int64, now: Int64) -> Bool {
        do {
            return try pool.transaction { tx in
                let claimed = try tx.get(work.claim).flatMap { Int64(String(decoding: $0, as: UTF8.self)) } ?? 0
                guard claimed + interval <= now else { return false }
                try tx.setInternal(work.claim, Array(String(now).utf8))
                return true
            }
        } catch {
            logger.warning("could not claim scheduled work", metadata: ["pool": "\(pool.path)", "work": "\(work.record)", "error": "\(error)"])
            return false
        }
    }

    static let check = Work(record: key, claim: claimKey) { pool in run(pool) }

    static func run(_ pool: Pool) {
        let start = Clock.monotonicNanoseconds
        var problems: [String]
        do { problems = try pool.check().problems } catch { problems = ["the check could not run: \(error)"] }
        let duration = Clock.monotonicNanoseconds - start
        pool.telemetry.checks.increment()
        pool.telemetry.checkDuration.recordNanoseconds(duration)
        if !problems.isEmpty {
            pool.telemetry.checkFailures.increment()
            logger.error("scheduled check found problems", metadata: ["pool": "\(pool.path)", "problems": "\(problems.count)", "first": "\(problems[0])"])
        }
        do {
            try pool.internalTransaction { tx throws(PMLLError) in
                let previous = try tx.get(key).flatMap { try? JSONCoding.decode(CheckRecord.self, $0) }
                let record = CheckRecord(finishedAtNanoseconds: Clock.realtimeNanoseconds, durationNanoseconds: duration, pid: getpid(),
                                         ok: problems.isEmpty, problems: Array(problems.prefix(10)),
                                         runs: (previous?.runs ?? 0) + 1, failures: (previous?.failures ?? 0) + (problems.isEmpty ? 0 : 1))
                try tx.setInternal(key, JSONCoding.encode(record))
            }
        } catch {
            logger.error("could not record a scheduled check", metadata: ["pool": "\(pool.path)", "error": "\(error)"])
        }
    }

    /// The pool's last check record, if any scheduled check ever ran.
    static func record(_ pool: Pool) throws(PMLLError) -> CheckRecord? {
        guard pool.store.exists, let bytes = try pool.value(for: key) else { return nil }
        return try? JSONCoding.decode(CheckRecord.self, bytes)
    }
}

extension Pool {
    /// Starts consistency checks of this pool every `interval` (shared with every other
    /// process that has them enabled: one run per interval in all). Keep the returned object
    /// and `stop()` it before closing the pool.
    public func startScheduledChecks(every interval: Duration) throws(PMLLError) -> ScheduledTask {
        guard interval > .zero else { throw .invalidOptions(reason: "the check interval must be positive") }
        _ = try stateStore()
        return try ScheduledTask(pool: self, interval: interval, work: ScheduledTask.check)
    }

    /// Starts rotated backups of this pool into `directory` every `interval`, keeping the
    /// `keep` newest (shared with every other process that has them enabled).
    public func startScheduledBackups(every interval: Duration, into directory: String, keep: Int) throws(PMLLError) -> ScheduledTask {
        guard interval > .zero, keep >= 1 else { throw .invalidOptions(reason: "the backup interval must be positive and keep at least 1") }
        _ = try stateStore()
        return try ScheduledTask(pool: self, interval: interval, work: ScheduledTask.Work(record: BackupRecord.key, claim: BackupRecord.claimKey) { pool in
            BackupRecord.run(pool, directory: directory, keep: keep)
        })
    }

    /// The last scheduled check's record (nil if none ever ran).
    public func lastScheduledCheck() throws(PMLLError) -> CheckRecord? { try ScheduledTask.record(self) }

    /// The last scheduled backup's record (nil if none ever ran).
    public func lastScheduledBackup() throws(PMLLError) -> BackupRecord? {
        guard store.exists, let bytes = try value(for: BackupRecord.key) else { return nil }
        return try? JSONCoding.decode(BackupRecord.self, bytes)
    }
}

/// The last scheduled backup of a pool, as recorded in it.
public struct BackupRecord: Codable, Sendable, Equatable {
    public let finishedAtNanoseconds: Int64
    public let pid: Int32
    public let ok: Bool
    /// The backup written, or why none was.
    public let destination: String?
    public let error: String?
    public let writersBlockedNanoseconds: Int64
    public let runs: UInt64
    public let failures: UInt64

    static let key = "pmll:backup/last"
    static let claimKey = "pmll:backup/claim"
    static let logger = LibraryLogging.logger(label: "pmll.backup")

    static func run(_ pool: Pool, directory: String, keep: Int) {
        var destination: String?, error: String?, blocked: Int64 = 0
        do {
            let (report, _) = try pool.backup(rotatingIn: directory, keep: keep)
            destination = report.destination
            blocked = report.writersBlockedNanoseconds
        } catch let failure {
            error = failure.description
            logger.error("scheduled backup failed", metadata: ["pool": "\(pool.path)", "error": "\(failure)"])
        }
        do {
            try pool.internalTransaction { tx throws(PMLLError) in
                let previous = try tx.get(key).flatMap { try? JSONCoding.decode(BackupRecord.self, $0) }
                let record = BackupRecord(finishedAtNanoseconds: Clock.realtimeNanoseconds, pid: getpid(), ok: error == nil,
                                          destination: destination, error: error, writersBlockedNanoseconds: blocked,
                                          runs: (previous?.runs ?? 0) + 1, failures: (previous?.failures ?? 0) + (error == nil ? 0 : 1))
                try tx.setInternal(key, JSONCoding.encode(record))
            }
        } catch let failure {
            logger.error("could not record a scheduled backup", metadata: ["pool": "\(pool.path)", "error": "\(failure)"])
        }
    }
}

/// JSON for the records the facade keeps in the store.
enum JSONCoding {
    static func encode<T: Encodable>(_ value: T) throws(PMLLError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do { return Array(try encoder.encode(value)) } catch { throw .corruptRecord(key: "(a scheduled task record)", reason: "cannot encode: \(error)") }
    }

    static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) throws -> T {
        try JSONDecoder().decode(type, from: Data(bytes))
    }
}
