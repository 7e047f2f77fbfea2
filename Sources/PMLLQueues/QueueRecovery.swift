package import CPMLL
public import PMLLCore
import PMLLLocks
import PMLLStore

/// Repairs or redoes an abandoned operation. Must be idempotent: recovery itself may be
/// killed and run again, and a record is marked recovered only after its handler returns.
public typealias RecoveryHandler = @Sendable (OperationRecord) async throws -> Void

/// An abandoned operation that a recovery run looked at, and what became of it.
public struct QueueRecoveryItem: Codable, Sendable {
    public enum Outcome: Codable, Sendable, Equatable {
        case recovered
        /// No handler for the record's kind here: reported, left for a process that has one.
        case noHandler
        case handlerFailed(String)
    }
    public let record: OperationRecord
    public let outcome: Outcome

    public init(record: OperationRecord, outcome: Outcome) {
        self.record = record
        self.outcome = outcome
    }
}

extension Pool {
    /// Abandoned operations that no recovery has handled yet, in every queue (in the rings,
    /// and those parked in the state store when their ring slot was needed).
    public func abandonedOperations() throws(PMLLError) -> [OperationRecord] {
        let inRings = try QueueTable(memory: memory, path: path).all().flatMap { index, head in
            let engine = QueueEngine(pool: self, index: index, submitLock: LockIndex(head.pointee.submit_lock),
                                     name: String(fixedCString: head.pointee.name), persistent: true)
            return QueueRepair.unrecovered(engine).map { RecordState.snapshot($0, queue: engine.name) }
        }
        return inRings + (try parkedAbandoned().map(\.record))
    }

    package static let parkedPrefix = "pmll:abandoned/"

    package func parkAbandoned(_ record: OperationRecord) throws(PMLLError) {
        let key = Self.parkedPrefix + "\(record.queue)/\(record.ticket)"
        let data: [UInt8]
        do { data = Array(try JSONEncoderShim.encode(record)) } catch { throw .corruptRecord(key: key, reason: "cannot encode: \(error)") }
        try internalTransaction { tx throws(PMLLError) in try tx.setInternal(key, data) }
    }

    package func parkedAbandoned() throws(PMLLError) -> [(key: String, record: OperationRecord)] {
        guard store.blockCount > 0 else { return [] }
        var parked: [(key: String, record: OperationRecord)] = []
        for key in try committedKeys(prefix: Self.parkedPrefix, skippingDamaged: true) {
            guard let bytes = try readCommitted(key) else { continue }
            guard let record = try? JSONEncoderShim.decode(OperationRecord.self, bytes) else {
                throw .corruptRecord(key: key, reason: "not an operation record")
            }
            parked.append((key, record))
        }
        return parked
    }

    /// The queue layer's recovery (``Pool/recover(handlers:timeout:)`` runs it after the file
    /// batches'): for each queue in turn, waits until nothing runs or waits in it (operations
    /// of dead processes are marked abandoned on the way), blocks new submissions, and calls
    /// the handler registered for each abandoned, not yet recovered operation's kind; then the
    /// same for operations parked in the store.
    package func recoverQueues(handlers: [String: RecoveryHandler], timeout: Duration) async throws -> [QueueRecoveryItem] {
        var items: [QueueRecoveryItem] = []
        for (index, head) in try QueueTable(memory: memory, path: path).all() {
            let persistent = head.pointee.flags & PMLL_QUEUE_FLAG_PERSISTENT != 0
            let engine = QueueEngine(pool: self, index: index, submitLock: LockIndex(head.pointee.submit_lock),
                                     name: String(fixedCString: head.pointee.name), persistent: persistent)
            let innerItems = try await engine.exclusive(deadline: Self.deadline(after: timeout)) {
                var items: [QueueRecoveryItem] = []
                for r in QueueRepair.unrecovered(engine) {
                    let record = RecordState.snapshot(r, queue: engine.name)
                    guard let handler = handlers[record.kind] else {
                        items.append(.init(record: record, outcome: .noHandler))
                        continue
                    }
                    do {
                        try await handler(record)
                        r.pointee.recovered = 1
                        try engine.persist(r)
                        CrashPoint.hit("queue.recovered")
                        pmll_add64(&head.pointee.recovered, 1)
                        items.append(.init(record: record, outcome: .recovered))
                    } catch {
                        items.append(.init(record: record, outcome: .handlerFailed("\(error)")))
                    }
                }
                return items
            }
            items += innerItems
        }
        // Operations parked in the store when their ring slot was reused.
        for (key, record) in try parkedAbandoned() {
            guard let handler = handlers[record.kind] else {
                items.append(.init(record: record, outcome: .noHandler))
                continue
            }
            do {
                try await handler(record)
                try internalTransaction { tx throws(PMLLError) in try tx.deleteInternal(key) }
                if let index = try QueueTable(memory: memory, path: path).find(record.queue) {
                    pmll_add64(&memory.queue(index).pointee.recovered, 1)
                }
                items.append(.init(record: record, outcome: .recovered))
            } catch {
                items.append(.init(record: record, outcome: .handlerFailed("\(error)")))
            }
        }
        return items
    }
}

package enum QueueRepair {
    package static func unrecovered(_ engine: QueueEngine) -> [UnsafeMutablePointer<pmll_record_t>] {
        let next = pmll_load64_acquire(&engine.head.pointee.next_ticket)
        let first = next > engine.ring ? next - engine.ring : 0
        return (first..<next).map(engine.record).filter {
            pmll_load32(pmll_record_state($0)) == PMLL_RECORD_ABANDONED && $0.pointee.recovered == 0 && $0.pointee.ticket >= first
        }
    }

    /// Part of the volatile reset (no other process has the pool open): rebuilds each
    /// queue's tickets from its durable records, which after a power failure may be newer
    /// than the head, and abandons what was queued or running, since its owner is gone.
    package static func reset(_ memory: PoolMemory) {
        let ring = UInt64(memory.layout.queueRing)
        for index in 0..<memory.queueCapacity {
            let head = memory.queue(index)
            guard head.pointee.state == PMLL_ENTRY_READY else { continue }
            var maxTicket: UInt64?, firstOpen: UInt64?
            for slot in 0..<ring {
                let r = memory.record(queue: index, ticket: slot)
                let state = r.pointee.state
                guard state != PMLL_RECORD_FREE, r.pointee.ticket % ring == slot, RecordState.checksum(r) == r.pointee.checksum else { continue }
                maxTicket = max(maxTicket ?? 0, r.pointee.ticket)
                if state == PMLL_RECORD_QUEUED || state == PMLL_RECORD_RUNNING {
                    r.pointee.state = PMLL_RECORD_ABANDONED
                    writeFixedCString("owner gone (pool reset)", into: &r.pointee.error)
                    head.pointee.abandoned &+= 1
                    firstOpen = min(firstOpen ?? .max, r.pointee.ticket)
                }
            }
            let next = max(head.pointee.next_ticket, maxTicket.map { $0.saturatingAdd(1) } ?? 0)
            head.pointee.next_ticket = next
            head.pointee.serving = min(firstOpen ?? next, next)
            head.pointee.serving_word = 0
            head.pointee.flush_started = head.pointee.flush_requested
            head.pointee.flush_completed = head.pointee.flush_requested
        }
    }
}
