import Foundation
public import PMLLCore

/// What ``EtcdPool/recover(handlers:)`` found and did.
public struct EtcdRecoveryReport: Codable, Sendable {
    public var recovered: [EtcdOperationRecord] = []
    /// Abandoned operations of kinds without a handler: listed, left abandoned.
    public var unhandled: [EtcdOperationRecord] = []
    /// Handlers that threw: the operation and the error; left abandoned for the next recovery.
    public var failed: [Failure] = []
    public struct Failure: Codable, Sendable {
        public var record: EtcdOperationRecord
        public var error: String
    }
}

extension EtcdPool {
    /// Marks `running` operations whose process is gone (their lease no longer exists)
    /// `abandoned`, then hands every abandoned operation to the handler of its kind; a
    /// handler that returns marks it `recovered`. Handlers must be idempotent: a recovery
    /// killed half-way runs them again.
    public func recover(handlers: [String: @Sendable (EtcdOperationRecord) async throws -> Void]) async throws(PMLLError) -> EtcdRecoveryReport {
        var report = EtcdRecoveryReport()
        for stored in try await runningRecords(of: nil) {
            var current = stored
            if stored.record.state == .running {
                let alive = try await gateway.call("/v3/lease/timetolive", LeaseIDRequest(ID: EtcdInt(stored.record.lease)), as: LeaseTimeToLive.self)
                if let ttl = alive.TTL?.value, ttl > 0 { continue }   // still running somewhere
                current.record.state = .abandoned
                guard let revision = try await replace(stored, with: current.record) else { continue }
                current.modRevision = revision
            }
            guard let handler = handlers[current.record.kind] else {
                report.unhandled.append(current.record)
                continue
            }
            do {
                try await handler(current.record)
            } catch {
                report.failed.append(.init(record: current.record, error: "\(error)"))
                continue
            }
            var done = current.record
            done.state = .recovered
            done.finished = EtcdOperationRecord.now()
            if try await replace(current, with: done) != nil { report.recovered.append(done) }
        }
        return report
    }

    /// Replaces a record if nobody changed it since it was read; the new mod revision, or
    /// nil if it changed (another recovery got there first).
    private func replace(_ stored: StoredRecord, with record: EtcdOperationRecord) async throws(PMLLError) -> Int64? {
        let answer = try await gateway.call("/v3/kv/txn", TxnRequest(
            compare: [.modRevision(stored.key, equals: stored.modRevision)],
            success: [.put(PutRequest(key: EtcdBytes(stored.key), value: EtcdBytes(Self.encode(record))))],
            failure: []), as: TxnResponse.self)
        return answer.didSucceed ? answer.header?.rev : nil
    }
}
