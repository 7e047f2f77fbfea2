import Foundation
public import PMLLCore
public import PMLLQueues

/// A handler of abandoned operations of one kind on an etcd pool; it must be idempotent (a
/// recovery killed half-way runs it again).
public typealias EtcdRecoveryHandler = @Sendable (EtcdOperationRecord) async throws -> Void

/// What ``EtcdPool/recover(handlers:policies:dryRun:)`` found and did: one item per abandoned
/// operation it looked at, with the local recovery's outcomes (``QueueRecoveryItem/Outcome``).
public struct EtcdRecoveryReport: Codable, Sendable {
    public struct Item: Codable, Sendable {
        public var record: EtcdOperationRecord
        public var outcome: QueueRecoveryItem.Outcome
    }
    public var items: [Item] = []

    /// Operations a handler dealt with.
    public var recovered: [EtcdOperationRecord] { items.filter { $0.outcome == .recovered }.map(\.record) }
    /// Operations of kinds without a handler: listed, left abandoned.
    public var unhandled: [EtcdOperationRecord] { items.filter { $0.outcome == .noHandler }.map(\.record) }
    /// Handlers that threw (the operation stays abandoned, its attempt counted) or retries that
    /// failed again.
    public var failures: [(record: EtcdOperationRecord, error: String)] {
        items.compactMap { item in
            switch item.outcome {
            case .handlerFailed(let error), .retried(error: .some(let error)): (item.record, error)
            default: nil
            }
        }
    }
}

extension EtcdPool {
    /// Marks `running` operations whose process is gone (their lease no longer exists)
    /// `abandoned`, then deals with every abandoned operation as `policies` say, as the local
    /// ``Pool/recover(handlers:policies:dryRun:timeout:)`` does: `handler` runs the handler of
    /// its kind (one that returns marks it `recovered`; one that throws counts an attempt, and
    /// `maxAttempts` failed attempts quarantine it); `retry` marks it recovered and runs the
    /// kind's handler as a new operation of its queue, in FIFO order; `abandon` marks it
    /// recovered; `quarantine` sets it aside (`quarantined`) for ``releaseQuarantined(queue:ticket:index:)``.
    /// Recoveries run one at a time (they hold the lock `pmll:recovery`), as on a local pool,
    /// where each queue's recovery holds its submit lock: two at once would both run the
    /// handler of an operation neither had marked yet. A handler must not start a recovery of
    /// the same pool (it would wait for itself). Every change is also compared on the record's
    /// mod revision, so a recovery whose lease ran out while a handler ran marks nothing that
    /// a later one changed. With `dryRun` nothing changes, no lock is taken, and each item says
    /// what would be done.
    public func recover(handlers: [String: EtcdRecoveryHandler], policies: RecoveryPolicies = RecoveryPolicies(),
                        dryRun: Bool = false) async throws(PMLLError) -> EtcdRecoveryReport {
        if dryRun { return try await recoverAlone(handlers: handlers, policies: policies, dryRun: true) }
        let pool = self, id = Self.recoveryLock
        let grant = try await onEtcdExecutor { () async throws(PMLLError) in try await pool.acquire(id, timeout: nil) }
        let outcome: Result<EtcdRecoveryReport, PMLLError>
        do throws(PMLLError) {
            outcome = .success(try await recoverAlone(handlers: handlers, policies: policies, dryRun: false))
        } catch {
            outcome = .failure(error)
        }
        _ = try? await onEtcdExecutor { () async throws(PMLLError) in try await pool.release(grant) }
        return try outcome.get()
    }

    /// The lock every recovery holds: the library's own, outside the hierarchy, like the queue turns.
    static let recoveryLock = LockID(name: "pmll:recovery", level: .registry)

    private func recoverAlone(handlers: [String: EtcdRecoveryHandler], policies: RecoveryPolicies,
                              dryRun: Bool) async throws(PMLLError) -> EtcdRecoveryReport {
        var report = EtcdRecoveryReport()
        var retries: [(EtcdOperationRecord, EtcdRecoveryHandler)] = []
        for stored in try await unsettledRecords(of: nil) where stored.record.state != .quarantined {
            var current = stored
            if stored.record.state == .running {
                let alive = try await gateway.call("/v3/lease/timetolive", LeaseIDRequest(ID: EtcdInt(stored.record.lease)), as: LeaseTimeToLive.self)
                if let ttl = alive.TTL?.value, ttl > 0 { continue }   // still running somewhere
                current.record.state = .abandoned
                if !dryRun {
                    // Not `sentAgainCounts`: two recoveries marking it write the same bytes, and
                    // only one may go on to handle it. A mark whose answer was lost leaves the
                    // record abandoned for the next recovery.
                    guard let revision = try await replace(stored, with: current.record, sentAgainCounts: false) else { continue }
                    current.modRevision = revision
                }
            }
            let record = current.record
            let action = policies.action(queue: record.queue, kind: record.kind)
            let handler = handlers[record.kind]
            if dryRun {
                let plan = switch action {
                case .handler, .retry: handler == nil ? "leave it (no handler for kind '\(record.kind)')" : action == .retry ? "retry it" : "run its handler"
                case .abandon: "mark it recovered (policy abandon)"
                case .quarantine: "quarantine it"
                }
                report.items.append(.init(record: record, outcome: .planned(plan)))
                continue
            }
            switch action {
            case .handler, .retry:
                guard let handler else {
                    report.items.append(.init(record: record, outcome: .noHandler))
                    continue
                }
                if action == .retry {
                    guard try await settle(current, as: .recovered) else { continue }
                    retries.append((record, handler))
                    continue
                }
                do {
                    try await handler(record)
                } catch {
                    let attempts = (record.recoveryAttempts ?? 0) + 1
                    var failed = record
                    failed.recoveryAttempts = attempts
                    failed.error = "recovery handler failed: \(error)"
                    if attempts >= policies.maxAttempts {
                        failed.state = .quarantined
                        if try await replace(current, with: failed) != nil {
                            report.items.append(.init(record: failed, outcome: .quarantined("its handler failed \(attempts) time(s): \(error)")))
                        }
                    } else {
                        _ = try await replace(current, with: failed)
                        report.items.append(.init(record: failed, outcome: .handlerFailed("\(error)")))
                    }
                    continue
                }
                if try await settle(current, as: .recovered) { report.items.append(.init(record: record, outcome: .recovered)) }
            case .abandon:
                if try await settle(current, as: .recovered) { report.items.append(.init(record: record, outcome: .abandonedByPolicy)) }
            case .quarantine:
                if try await settle(current, as: .quarantined) { report.items.append(.init(record: record, outcome: .quarantined("policy quarantine"))) }
            }
        }
        // Retries run after the scan, each as a new operation of its queue.
        for (record, handler) in retries {
            do {
                try await queue(named: record.queue).execute(kind: record.kind, payload: record.payload, timeout: .some(nil),
                                                             retry: RetryPolicy(maxRetries: 0)) { _ in try await handler(record) }
                report.items.append(.init(record: record, outcome: .retried(error: nil)))
            } catch {
                report.items.append(.init(record: record, outcome: .retried(error: "\(error)")))
            }
        }
        return report
    }

    /// The operations recovery set aside, oldest first.
    public func quarantinedOperations() async throws(PMLLError) -> [EtcdOperationRecord] {
        try await unsettledRecords(of: nil).map(\.record).filter { $0.state == .quarantined }
    }

    /// Marks a quarantined operation recovered once a person has dealt with it; false if
    /// there is no such quarantined operation.
    public func releaseQuarantined(queue: String, ticket: Int64, index: Int = 0) async throws(PMLLError) -> Bool {
        guard let stored = try await unsettledRecords(of: queue).first(where: {
            $0.record.ticket == ticket && ($0.record.index ?? 0) == index && $0.record.state == .quarantined
        }) else { return false }
        return try await settle(stored, as: .recovered)
    }

    /// Moves a record to `state` (with its finish time) if nobody changed it since it was read.
    private func settle(_ stored: StoredRecord, as state: EtcdOperationRecord.State) async throws(PMLLError) -> Bool {
        var done = stored.record
        done.state = state
        done.finished = EtcdOperationRecord.now()
        return try await replace(stored, with: done) != nil
    }

    /// Replaces a record if nobody changed it since it was read; the new mod revision, or
    /// nil if it changed (another recovery got there first).
    ///
    /// Sent again after its first answer was lost, the compare fails on the change the first
    /// delivery made: with `sentAgainCounts`, finding exactly the bytes this call wrote (they
    /// carry the finish time in nanoseconds, or this run's handler error) counts as done.
    /// Without it, a settle whose answer was lost returned "changed": the report left the
    /// operation out, and a `retry` policy marked it recovered and never ran it again.
    private func replace(_ stored: StoredRecord, with record: EtcdOperationRecord, sentAgainCounts: Bool = true) async throws(PMLLError) -> Int64? {
        let value = Self.encode(record)
        let answer = try await gateway.call("/v3/kv/txn", TxnRequest(
            compare: [.modRevision(stored.key, equals: stored.modRevision)],
            success: [.put(PutRequest(key: EtcdBytes(stored.key), value: EtcdBytes(value)))],
            failure: [.range(RangeRequest(key: EtcdBytes(stored.key)))]), as: TxnResponse.self)
        if answer.didSucceed { return answer.header?.rev }
        if sentAgainCounts, let now = answer.range(0)?.all.first, now.valueBytes == value { return now.modRevision }
        return nil
    }
}
