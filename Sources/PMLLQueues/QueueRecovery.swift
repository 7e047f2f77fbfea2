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
        /// The handler threw; the attempt is counted (``RecoveryPolicies/maxAttempts``).
        case handlerFailed(String)
        /// Submitted again as a new operation of its queue (policy `retry`); `error` if that failed.
        case retried(error: String?)
        /// Marked recovered without any action (policy `abandon`).
        case abandonedByPolicy
        /// Set aside for a person (policy `quarantine`, or too many failed attempts).
        case quarantined(String)
        /// A dry run: what recovery would do.
        case planned(String)
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
        guard store.exists else { return [] }
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

    /// The queue layer's recovery (``Pool/recover(handlers:policies:dryRun:timeout:)`` runs it
    /// after the file batches'): for each queue in turn, waits until nothing runs or waits in it
    /// (operations of dead processes are marked abandoned on the way), blocks new submissions,
    /// and deals with each abandoned, not yet recovered operation as its policy says
    /// (``RecoveryPolicies``); then the same for operations parked in the store. Operations to
    /// retry are submitted again after the queue is released, each as a new operation.
    package func recoverQueues(handlers: [String: RecoveryHandler], policies: RecoveryPolicies, dryRun: Bool, timeout: Duration) async throws -> [QueueRecoveryItem] {
        var items: [QueueRecoveryItem] = []
        var retries: [(engine: QueueEngine, record: OperationRecord, handler: RecoveryHandler)] = []
        for (index, head) in try QueueTable(memory: memory, path: path).all() {
            let persistent = head.pointee.flags & PMLL_QUEUE_FLAG_PERSISTENT != 0
            let engine = QueueEngine(pool: self, index: index, submitLock: LockIndex(head.pointee.submit_lock),
                                     name: String(fixedCString: head.pointee.name), persistent: persistent)
            let (innerItems, innerRetries) = try await engine.exclusive(deadline: Self.deadline(after: timeout)) {
                var items: [QueueRecoveryItem] = []
                var retries: [(engine: QueueEngine, record: OperationRecord, handler: RecoveryHandler)] = []
                for r in QueueRepair.unrecovered(engine) {
                    let record = RecordState.snapshot(r, queue: engine.name)
                    let done = { () throws(PMLLError) -> Void in
                        r.pointee.recovered = 1
                        try engine.persist(r)
                        CrashPoint.hit("queue.recovered")
                        pmll_add64(&head.pointee.recovered, 1)
                    }
                    let item = try await deal(with: record, handlers: handlers, policies: policies, dryRun: dryRun, done: done) { handler in
                        retries.append((engine, record, handler))
                    }
                    items.append(item)
                }
                return (items, retries)
            }
            items += innerItems
            retries += innerRetries
        }
        // Operations parked in the store when their ring slot was reused.
        for (key, record) in try parkedAbandoned() {
            let done = { () throws(PMLLError) -> Void in
                try self.internalTransaction { tx throws(PMLLError) in try tx.deleteInternal(key) }
                if let index = try QueueTable(memory: self.memory, path: self.path).find(record.queue) {
                    pmll_add64(&self.memory.queue(index).pointee.recovered, 1)
                }
            }
            let item = try await deal(with: record, handlers: handlers, policies: policies, dryRun: dryRun, done: done) { handler in
                if let index = try? QueueTable(memory: memory, path: path).find(record.queue) {
                    let head = memory.queue(index)
                    let engine = QueueEngine(pool: self, index: index, submitLock: LockIndex(head.pointee.submit_lock), name: record.queue,
                                             persistent: head.pointee.flags & PMLL_QUEUE_FLAG_PERSISTENT != 0)
                    retries.append((engine, record, handler))
                }
            }
            items.append(item)
        }
        // Retries: each a new operation of its queue, in FIFO order with everyone else's.
        for i in items.indices {
            guard case .retried = items[i].outcome, let retry = retries.first(where: { $0.record == items[i].record }) else { continue }
            let queue = HardenedQueue(pool: self, name: retry.engine.name, persistent: retry.engine.persistent,
                                      configuration: QueueConfiguration(), engine: retry.engine)
            do {
                let record = retry.record, handler = retry.handler
                try await queue.execute(kind: record.kind, payload: record.payload, retry: RetryPolicy(maxRetries: 0)) { _ in try await handler(record) }
                items[i] = QueueRecoveryItem(record: retry.record, outcome: .retried(error: nil))
            } catch {
                items[i] = QueueRecoveryItem(record: retry.record, outcome: .retried(error: "\(error)"))
            }
        }
        for item in items where !dryRun {
            let r = item.record
            let (outcome, text): (AuditOutcome, String) = switch item.outcome {
            case .recovered: (.ok, "recovered by its handler")
            case .noHandler: (.failed, "no handler for its kind here")
            case .handlerFailed(let e): (.failed, "handler failed: \(e)")
            case .retried(let e): (e == nil ? .ok : .failed, e.map { "retried, failed: \($0)" } ?? "retried")
            case .abandonedByPolicy: (.ok, "abandoned by policy")
            case .quarantined(let why): (.ok, "quarantined: \(why)")
            case .planned(let plan): (.ok, "planned: \(plan)")
            }
            audit(.queueRecover, outcome, "queue '\(r.queue)' ticket \(r.ticket) kind '\(r.kind)': \(text)")
        }
        return items
    }

    /// One abandoned operation, as its policy says. `done` marks it recovered; `retry` queues
    /// a retry for after the queue is released.
    private func deal(with record: OperationRecord, handlers: [String: RecoveryHandler], policies: RecoveryPolicies, dryRun: Bool,
                      done: () throws(PMLLError) -> Void, retry: (@escaping RecoveryHandler) -> Void) async throws -> QueueRecoveryItem {
        let action = policies.action(queue: record.queue, kind: record.kind)
        let attemptsKey = Self.attemptsPrefix + "\(record.queue)/\(record.ticket)"
        let attempts = try readCommitted(attemptsKey).flatMap { Int(String(decoding: $0, as: UTF8.self)) } ?? 0
        let handler = handlers[record.kind]
        let exhausted = (action == .handler || action == .retry) && handler != nil && attempts >= policies.maxAttempts
        if dryRun {
            let plan: String
            switch action {
            case _ where exhausted: plan = "quarantine (recovery failed \(attempts) times)"
            case .handler: plan = handler == nil ? "leave (no handler for kind '\(record.kind)')" : "run the handler (attempt \(attempts + 1) of \(policies.maxAttempts))"
            case .retry: plan = handler == nil ? "leave (no handler to retry kind '\(record.kind)')" : "retry it as a new operation (attempt \(attempts + 1) of \(policies.maxAttempts))"
            case .abandon: plan = "abandon it (mark it recovered, do nothing)"
            case .quarantine: plan = "quarantine it"
            }
            return QueueRecoveryItem(record: record, outcome: .planned(plan))
        }
        func quarantine(_ reason: String) throws(PMLLError) -> QueueRecoveryItem {
            try parkQuarantined(record, reason: reason)
            try done()
            return QueueRecoveryItem(record: record, outcome: .quarantined(reason))
        }
        if exhausted { return try quarantine("recovery failed \(attempts) times") }
        switch action {
        case .abandon:
            try done()
            return QueueRecoveryItem(record: record, outcome: .abandonedByPolicy)
        case .quarantine:
            return try quarantine("the recovery policy quarantines kind '\(record.kind)' of queue '\(record.queue)'")
        case .handler, .retry:
            guard let handler else { return QueueRecoveryItem(record: record, outcome: .noHandler) }
            if action == .retry {
                try done()
                retry(handler)
                return QueueRecoveryItem(record: record, outcome: .retried(error: nil))
            }
            do {
                try await handler(record)
            } catch {
                try internalTransaction { tx throws(PMLLError) in try tx.setInternal(attemptsKey, Array(String(attempts + 1).utf8)) }
                return QueueRecoveryItem(record: record, outcome: .handlerFailed("\(error)"))
            }
            try done()
            if attempts > 0 { try internalTransaction { tx throws(PMLLError) in try tx.deleteInternal(attemptsKey) } }
            return QueueRecoveryItem(record: record, outcome: .recovered)
        }
    }

    package static let attemptsPrefix = "pmll:recovery-attempts/"
    package static let quarantinePrefix = "pmll:quarantine/"

    /// Keeps the record for a person to look at (`pmll recover --quarantined`).
    private func parkQuarantined(_ record: OperationRecord, reason: String) throws(PMLLError) {
        let key = Self.quarantinePrefix + "\(record.queue)/\(record.ticket)"
        let data: [UInt8]
        do { data = Array(try JSONEncoderShim.encode(QuarantinedOperation(record: record, reason: reason))) } catch {
            throw .corruptRecord(key: key, reason: "cannot encode: \(error)")
        }
        try internalTransaction { tx throws(PMLLError) in
            try tx.setInternal(key, data)
            try tx.deleteInternal(Self.attemptsPrefix + "\(record.queue)/\(record.ticket)")
        }
    }

    /// Operations quarantined by recovery, oldest key first.
    public func quarantinedOperations() throws(PMLLError) -> [QuarantinedOperation] {
        guard store.exists else { return [] }
        var operations: [QuarantinedOperation] = []
        for key in try committedKeys(prefix: Self.quarantinePrefix, skippingDamaged: true) {
            guard let bytes = try readCommitted(key), let operation = try? JSONEncoderShim.decode(QuarantinedOperation.self, bytes) else { continue }
            operations.append(operation)
        }
        return operations
    }

    /// Removes a quarantined operation once a person has dealt with it. False if there was none.
    @discardableResult
    public func releaseQuarantined(queue: String, ticket: UInt64) throws(PMLLError) -> Bool {
        let key = Self.quarantinePrefix + "\(queue)/\(ticket)"
        guard try readCommitted(key) != nil else { return false }
        try internalTransaction { tx throws(PMLLError) in try tx.deleteInternal(key) }
        return true
    }
}

/// An abandoned operation recovery set aside for a person, and why.
public struct QuarantinedOperation: Codable, Sendable, Equatable {
    public let record: OperationRecord
    public let reason: String
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
        for index in memory.queueIndexes {
            let head = memory.queue(index)
            guard head.pointee.state == PMLL_ENTRY_READY else { continue }
            var maxTicket: UInt64?, firstOpen: UInt64?
            for slot in 0..<ring {
                let r = memory.record(queue: index, ticket: slot)
                // No process from before the reset owns anything now. Their tokens could come
                // back: the process table's generations are not made durable, so after a power
                // failure a new process can be given a dead one's token, and a waiter would
                // take the record's dead owner for alive and wait for it forever. Token 0 is
                // nobody (generations start at 1). Not covered by the record's checksum.
                r.pointee.owner_token = 0
                let state = r.pointee.state
                guard state != PMLL_RECORD_FREE, r.pointee.ticket % ring == slot, RecordState.checksum(r) == r.pointee.checksum else { continue }
                maxTicket = max(maxTicket ?? 0, r.pointee.ticket)
                if state == PMLL_RECORD_QUEUED || state == PMLL_RECORD_RUNNING {
                    r.pointee.state = PMLL_RECORD_ABANDONED
                    writeFixedCString("owner gone (pool reset)", into: &r.pointee.error)
                    head.pointee.abandoned &+= 1
                    firstOpen = min(firstOpen ?? .max, r.pointee.ticket)
                    let running = state == PMLL_RECORD_RUNNING
                    AuditRing.appendDuringReset(memory, .queueAbandon, .failed,
                        "queue '\(String(fixedCString: head.pointee.name))' ticket \(r.pointee.ticket) kind '\(String(fixedCString: r.pointee.kind))': owner pid \(r.pointee.owner_pid) gone (pool reset, \(running ? "running, attempt \(r.pointee.attempts)" : "queued")), submitted at \(r.pointee.submitted_ns)" + (r.pointee.started_ns != 0 ? ", started at \(r.pointee.started_ns)" : ""))
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
