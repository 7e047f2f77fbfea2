import CPMLL
public import PMLLCore
import PMLLLocks
import PMLLStore

/// What an operation's body is told about itself.
public struct OperationInfo: Sendable {
    public let queue: String
    public let ticket: UInt64
    public let kind: String
    /// 1 for the first attempt, 2 for the first retry, …
    public let attempt: Int
    public let payload: [UInt8]

    package init(queue: String, ticket: UInt64, kind: String, attempt: Int, payload: [UInt8]) {
        self.queue = queue
        self.ticket = ticket
        self.kind = kind
        self.attempt = attempt
        self.payload = payload
    }
}

/// One operation of a batch.
public struct BatchOperation<Result: Sendable>: Sendable {
    public let kind: String
    public let payload: [UInt8]
    public let body: @Sendable (OperationInfo) async throws -> Result

    public init(kind: String, payload: [UInt8] = [], _ body: @escaping @Sendable (OperationInfo) async throws -> Result) {
        self.kind = kind
        self.payload = payload
        self.body = body
    }
}

/// A named queue in the pool that runs the operations submitted to it one at a time, in
/// submission order, across all processes (Docs/Queues.md). Persistent queues record every
/// state transition durably before going on; non-persistent ones keep the order only.
public struct HardenedQueue: Sendable {
    public let pool: Pool
    public let name: String
    public let persistent: Bool
    public let configuration: QueueConfiguration
    let engine: QueueEngine

    /// Runs `operation` as the next operation of this queue, after every operation submitted
    /// before it anywhere has finished. Throws what the operation throws (after retries for
    /// ``RetryableError``; `onError` sees the final error first), or
    /// ``PMLLError/queueTimeout(queue:ticket:blockedBy:)`` / ``PMLLError/queueCancelled(queue:ticket:)`` if
    /// the turn does not come in time; then nothing ran and the ticket is void.
    public func execute<R: Sendable>(
        kind: String, payload: [UInt8] = [], timeout: Duration?? = nil, retry: RetryPolicy? = nil,
        onError: (@Sendable (any Error) -> Void)? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ operation: (OperationInfo) async throws -> R
    ) async throws -> R {
        let deadline = Pool.deadline(after: timeout ?? configuration.timeout)
        let ticket = try await startTurn(kind: kind, payload: payload, deadline: deadline)
        return try await run(ticket: ticket, kind: kind, payload: payload, started: true, retry: retry ?? configuration.retry, onError: onError, operation)
    }

    /// Submits one operation, waits for its turn and starts its first attempt: its ticket. A
    /// ticket passed while this process was stopped is submitted again, at the end of the queue.
    private func startTurn(kind: String, payload: [UInt8], deadline: Int64) async throws -> UInt64 {
        while true {
            let (ticket, started) = try await turn(for: [(kind, payload)], deadline: deadline)
            if started { return ticket }
            do {
                try engine.begin(ticket, attempt: 1)
                return ticket
            } catch is PassedWhileStopped {
                continue
            }
        }
    }

    /// Submits the operations as one unit: they get consecutive tickets and run one after
    /// another with nothing in between. Each one's outcome is reported; a failed one does
    /// not stop the rest.
    public func executeBatch<R: Sendable>(_ operations: [BatchOperation<R>], timeout: Duration?? = nil, retry: RetryPolicy? = nil) async throws -> [Result<R, any Error>] {
        let deadline = Pool.deadline(after: timeout ?? configuration.timeout)
        let (first, _) = try await turn(for: operations.map { ($0.kind, $0.payload) }, deadline: deadline, waitForFirst: false)
        var results: [Result<R, any Error>] = []
        for (i, op) in operations.enumerated() {
            let ticket = first + UInt64(i)
            do {
                try await engine.waitForTurn(ticket, deadline: deadline)
                results.append(.success(try await run(ticket: ticket, kind: op.kind, payload: op.payload, started: false,
                                                      retry: retry ?? configuration.retry, onError: nil, op.body)))
            } catch {
                results.append(.failure(error))
            }
        }
        return results
    }

    /// The kind of the operation that ``apply(_:root:atomic:timeout:)`` runs (facade).
    package static let fileBatchKind = "pmll.file-batch"

    /// Statistics kept in the pool.
    public var stats: QueueStats { QueueStatistics.snapshot(engine.head) }

    /// The records still in the ring (the last `queueRing` operations), oldest first.
    public var records: [OperationRecord] {
        let next = pmll_load64_acquire(&engine.head.pointee.next_ticket)
        let first = next > engine.ring ? next - engine.ring : 0
        return (first..<next).compactMap { ticket in
            let r = engine.record(ticket)
            return r.pointee.ticket == ticket ? RecordState.snapshot(r, queue: name) : nil
        }
    }

    // MARK: -

    private func turn(for ops: [(kind: String, payload: [UInt8])], deadline: Int64, waitForFirst: Bool = true) async throws -> (UInt64, Bool) {
        let (first, started) = try await engine.submit(ops, deadline: deadline)
        if !started && waitForFirst { try await engine.waitForTurn(first, deadline: deadline) }
        return (first, started)
    }

    private func run<R>(ticket: UInt64, kind: String, payload: [UInt8], started: Bool, retry: RetryPolicy,
                        onError: (@Sendable (any Error) -> Void)?, isolation: isolated (any Actor)? = #isolation,
                        _ operation: (OperationInfo) async throws -> R) async throws -> R {
        var attempt = 1
        while true {
            if !(started && attempt == 1) { try engine.begin(ticket, attempt: UInt32(attempt)) }
            CrashPoint.hit("queue.running")
            do {
                let result = try await operation(OperationInfo(queue: name, ticket: ticket, kind: kind, attempt: attempt, payload: payload))
                try engine.finish(ticket, succeeded: true, error: "")
                return result
            } catch let error as RetryableError where attempt <= retry.maxRetries {
                engine.noteRetry(ticket, error: "\(error.underlying)")
                do {
                    try await Task.sleep(for: retry.delay(beforeRetry: attempt))
                } catch {
                    try? engine.finish(ticket, succeeded: false, error: "cancelled while backing off")
                    throw error
                }
                attempt += 1
            } catch {
                let final = (error as? RetryableError)?.underlying ?? error
                try? engine.finish(ticket, succeeded: false, error: "\(final)")
                onError?(final)
                throw final
            }
        }
    }
}

extension Pool {
    /// Looks up or creates the queue `name` (1–244 bytes of UTF-8, no NUL). Throws
    /// ``PMLLError/queueMismatch(name:reason:)`` if it exists with the other persistence.
    public func queue(named name: String, persistent: Bool = true, configuration: QueueConfiguration = QueueConfiguration()) throws(PMLLError) -> HardenedQueue {
        try QueueTable.validate(name: name)
        if isReadOnly { throw .readOnlyPool(path: path, operation: "use queue '\(name)'") }
        let queues = QueueTable(memory: memory, path: path)
        let index: UInt32
        if let found = try queues.find(name) {
            index = found
        } else {
            let submitLock = try table.index(of: "pmll:queue/" + name, level: .network, create: true, creation: tableCreation, allowReserved: true)!
            index = try createQueue(name, persistent: persistent, submitLock: submitLock, in: queues)
        }
        let head = memory.queue(index)
        let existing = head.pointee.flags & PMLL_QUEUE_FLAG_PERSISTENT != 0
        guard existing == persistent else {
            throw .queueMismatch(name: name, reason: "it is \(existing ? "persistent" : "not persistent")")
        }
        let engine = QueueEngine(pool: self, index: index, submitLock: LockIndex(head.pointee.submit_lock), name: name, persistent: persistent)
        return HardenedQueue(pool: self, name: name, persistent: persistent, configuration: configuration, engine: engine)
    }

    /// Creates the head under the creation locks; a full table grows outside them (the growth
    /// takes the store lock) and the creation is tried again.
    private func createQueue(_ name: String, persistent: Bool, submitLock: LockIndex, in queues: QueueTable) throws(PMLLError) -> UInt32 {
        while true {
            let made = try tableCreation.withLock { _ throws(PMLLError) -> UInt32? in
                try TableCreationLock.withHeld(fd: fd) { () throws(PMLLError) -> UInt32? in
                    if let found = try queues.find(name) { return found }
                    return try queues.insert(name, persistent: persistent, submitLock: submitLock)
                }
            }
            if let made { return made }
            try extendTable(memory.queueExtents, memory.queueExtents.learn(), name: "queue")
        }
    }

    /// Every queue of the pool.
    public func queues() throws(PMLLError) -> [QueueStats] {
        try QueueTable(memory: memory, path: path).all().map { QueueStatistics.snapshot($0.head) }
    }

    /// The statistics of every intact queue, and the indexes of queue heads that fail their
    /// checksum (what `status` shows; `check` reports those heads).
    package func readableQueues() -> (queues: [QueueStats], damagedHeads: [UInt32]) {
        let (intact, damaged) = QueueTable(memory: memory, path: path).readable()
        return (intact.map { QueueStatistics.snapshot($0.head) }, damaged)
    }
}

extension HardenedQueue {
    // An operation driven step by step from a thread of the caller's own (the C interface
    // runs C callbacks there, never on a cooperative thread): the same records, retries and
    // statistics as ``execute(kind:payload:timeout:retry:onError:isolation:_:)``.

    /// Submits one operation, waits for its turn and records its first attempt as started:
    /// its ticket.
    package func enterTurn(kind: String, payload: [UInt8], deadline: Int64) async throws -> UInt64 {
        try await startTurn(kind: kind, payload: payload, deadline: deadline)
    }

    /// Records a later attempt (a retry) as started.
    package func beginAttempt(_ ticket: UInt64, attempt: Int) throws {
        try engine.begin(ticket, attempt: UInt32(attempt))
    }

    package func noteRetry(_ ticket: UInt64, error: String) { engine.noteRetry(ticket, error: error) }

    package func finish(_ ticket: UInt64, succeeded: Bool, error: String) throws(PMLLError) {
        try engine.finish(ticket, succeeded: succeeded, error: error)
    }
}
