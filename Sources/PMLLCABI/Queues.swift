public import CPMLLABI
import PMLL
import PMLLCore
import PMLLQueues
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A C queue handle: a ``HardenedQueue`` and the handle's own thread, which runs the handle's
/// operations one after another in submission order. Each one takes its turn in the pool's
/// queue (FIFO with every other process), runs the C callback on this thread, and settles
/// its promise. C callbacks may block as they like: no Swift executor thread runs them.
final class CQueue: @unchecked Sendable {
    /// The record kind of C operations (what recovery hands the recovery callback).
    static let kind = "c-operation"

    enum Job {
        case operation(on_fulfilled_callback, on_rejected_callback?, UnsafeMutableRawPointer?)
        case batch(FileBatch)
    }

    struct Settings {
        var retry = RetryPolicy()
        var timeout: Duration? = .seconds(30)
        var root: String
        var recovery: (pmll_recovery_callback, UnsafeMutableRawPointer?)?
    }

    let context: CContext
    let queue: HardenedQueue
    let cName: UnsafeMutablePointer<CChar>
    private let condition = Condition()
    // Guarded by `condition`.
    private var jobs: [(Job, CPromise)] = []
    private var closing = false
    private var thread: pthread_t?
    var settings: Settings
    /// The value of this handle's previous operation (the worker thread's only).
    private var previous: UnsafeMutableRawPointer?

    init(context: CContext, queue: HardenedQueue, root: String) {
        self.context = context
        self.queue = queue
        self.settings = Settings(root: root)
        cName = strdup(queue.name)
    }

    deinit { free(cName) }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passRetained(self).toOpaque()) }

    static func from(_ handle: OpaquePointer?) throws(CFailure) -> CQueue {
        guard let handle else { throw CFailure(result: CResult.invalid("queue is NULL")) }
        let queue = Unmanaged<CQueue>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
        try queue.context.checkOwner()   // its thread is not in a forked child
        return queue
    }

    func configure(_ change: (inout Settings) -> Void) { condition.withLock { change(&settings) } }

    var recoveryHandler: (pmll_recovery_callback, UnsafeMutableRawPointer?)? { condition.withLock { settings.recovery } }

    /// Queues `job`; its promise is returned to the caller (one reference each).
    func submit(_ job: Job) throws(CFailure) -> CPromise {
        let promise = CPromise()
        let started = condition.withLock { () -> Int32 in
            guard !closing else { return EINVAL }
            if thread == nil {
                var t = pthread_t()
                let me = Unmanaged.passRetained(self).toOpaque()
                let rc = pthread_create(&t, nil, { arg in
                    let queue = Unmanaged<CQueue>.fromOpaque(arg!).takeRetainedValue()
                    queue.work()
                    return nil
                }, me)
                guard rc == 0 else {
                    Unmanaged<CQueue>.fromOpaque(me).release()
                    return rc
                }
                thread = t
            }
            jobs.append((job, promise))
            condition.broadcast()
            return 0
        }
        guard started == 0 else {
            throw CFailure(result: CResult.fail(pmll_abi_system, started == EINVAL ? "queue '\(queue.name)' is being freed" : "cannot start the queue's thread: \(String(cString: strerror(started)))"))
        }
        return promise
    }

    /// Finishes every queued job, then stops the thread.
    func close() {
        let t = condition.withLock { () -> pthread_t? in
            closing = true
            condition.broadcast()
            return thread
        }
        if let t { pthread_join(t, nil) }
    }

    private func work() {
        while true {
            let next = condition.withLock { () -> (Job, CPromise, Settings)? in
                _ = condition.wait(until: .max) { !jobs.isEmpty || closing }
                guard !jobs.isEmpty else { return nil }
                let (job, promise) = jobs.removeFirst()
                return (job, promise, settings)
            }
            guard let (job, promise, settings) = next else { return }
            switch job {
            case let .operation(op, errorFunction, userData): runOperation(op, errorFunction, userData, promise, settings)
            case let .batch(batch): runBatch(batch, promise, settings)
            }
        }
    }

    private func enterTurn(kind: String, payload: [UInt8], _ settings: Settings) throws -> UInt64 {
        let queue = self.queue
        let deadline = Pool.deadline(after: settings.timeout)
        return try blocking { try await queue.enterTurn(kind: kind, payload: payload, deadline: deadline) }
    }

    private func runOperation(_ op: on_fulfilled_callback, _ errorFunction: on_rejected_callback?, _ userData: UnsafeMutableRawPointer?,
                              _ promise: CPromise, _ settings: Settings) {
        func reject(_ reason: String) {
            let text = promise.own(reason)
            promise.settle(PROMISE_REJECTED, errorFunction.map { $0(text, userData) } ?? text)
        }
        do {
            let ticket = try enterTurn(kind: Self.kind, payload: [], settings)
            var attempt = 1
            while true {
                if attempt > 1 { try queue.beginAttempt(ticket, attempt: attempt) }
                CrashPoint.hit("queue.running")
                let value = op(previous, userData)
                guard let failure = pmll_abi_take_failure() else {
                    try queue.finish(ticket, succeeded: true, error: "")
                    previous = value
                    promise.settle(PROMISE_FULFILLED, value)
                    return
                }
                let reason = String(cString: failure)
                free(failure)
                if attempt <= settings.retry.maxRetries {
                    queue.noteRetry(ticket, error: reason)
                    settings.retry.delay(beforeRetry: attempt).sleepThread()
                    attempt += 1
                    continue
                }
                try? queue.finish(ticket, succeeded: false, error: reason)
                reject(reason)
                return
            }
        } catch {
            reject("pmll: \(error)")
        }
    }

    private func runBatch(_ batch: FileBatch, _ promise: CPromise, _ settings: Settings) {
        do {
            let ticket = try enterTurn(kind: HardenedQueue.fileBatchKind, payload: Array(settings.root.utf8.prefix(1024)), settings)
            do {
                _ = try context.pool.apply(batch, root: settings.root)
            } catch {
                try? queue.finish(ticket, succeeded: false, error: error.description)
                throw error
            }
            try queue.finish(ticket, succeeded: true, error: "")
            promise.settle(PROMISE_FULFILLED, nil)
        } catch {
            promise.settle(PROMISE_REJECTED, promise.own("pmll: \(error)"))
        }
    }
}

/// The default file queue of `pmll_get_default_file_queue`, closed by `pmll_shutdown`.
enum DefaultFileQueue {
    static let current = Mutex<CQueue?>(nil)
}

private func workingDirectory() -> String {
    guard let cwd = getcwd(nil, 0) else { return "." }
    defer { free(cwd) }
    return String(cString: cwd)
}

func makeQueue(_ name: UnsafePointer<CChar>?, persistent: Bool, _ handle: OpaquePointer?) throws(CFailure) -> CQueue {
    let name = try CResult.string(name, "queue name")
    let context = try CContext.resolve(handle)
    let queue = try CResult.library { () throws(PMLLError) -> HardenedQueue in try context.pool.queue(named: name, persistent: persistent) }
    return CQueue(context: context, queue: queue, root: workingDirectory())
}

@_cdecl("pmll_queue_create")
public func cQueueCreate(_ name: UnsafePointer<CChar>?, _ persistent: Bool, _ handle: OpaquePointer?) -> OpaquePointer? {
    (try? makeQueue(name, persistent: persistent, handle))?.handle
}

@_cdecl("pmll_get_default_file_queue")
public func cDefaultFileQueue() -> OpaquePointer? {
    do {
        let queue = try DefaultFileQueue.current.withLock { (current: inout CQueue?) throws(CFailure) -> CQueue in
            if let current { return current }
            let made = try makeQueue("files", persistent: true, nil)
            current = made
            return made
        }
        return OpaquePointer(Unmanaged.passUnretained(queue).toOpaque())
    } catch { return nil }
}

@_cdecl("pmll_queue_set_retry")
public func cQueueSetRetry(_ handle: OpaquePointer?, _ maxRetries: UInt32, _ baseDelayMilliseconds: UInt32) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let queue = try CQueue.from(handle)
        try CResult.argument(maxRetries <= 1000, "max_retries \(maxRetries) is over 1000")
        queue.configure { $0.retry = RetryPolicy(maxRetries: Int(maxRetries), baseDelay: .milliseconds(baseDelayMilliseconds)) }
        return CResult.success
    }
}

@_cdecl("pmll_queue_set_timeout")
public func cQueueSetTimeout(_ handle: OpaquePointer?, _ timeoutMilliseconds: UInt32) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let queue = try CQueue.from(handle)
        queue.configure { $0.timeout = timeoutMilliseconds == 0 ? nil : .milliseconds(timeoutMilliseconds) }
        return CResult.success
    }
}

@_cdecl("pmll_queue_set_batch_root")
public func cQueueSetBatchRoot(_ handle: OpaquePointer?, _ root: UnsafePointer<CChar>?) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let queue = try CQueue.from(handle)
        let root = try CResult.string(root, "batch root")
        try CResult.argument(root.hasPrefix("/"), "batch root '\(root)' is not an absolute path")
        queue.configure { $0.root = root }
        return CResult.success
    }
}

@_cdecl("pmll_execute_hardened_operation")
public func cExecuteHardenedOperation(_ handle: OpaquePointer?, _ op: on_fulfilled_callback?, _ errorFunction: on_rejected_callback?, _ userData: UnsafeMutableRawPointer?) -> OpaquePointer? {
    do {
        let queue = try CQueue.from(handle)
        guard let op else { throw CFailure(result: CResult.invalid("operation is NULL")) }
        return try queue.submit(.operation(op, errorFunction, userData)).handle
    } catch { return nil }
}

@_cdecl("pmll_execute_batch_operation")
public func cExecuteBatchOperation(_ handle: OpaquePointer?, _ batch: UnsafePointer<CPMLLABI.BatchOperation>?, _ count: Int) -> OpaquePointer? {
    do {
        let queue = try CQueue.from(handle)
        try CResult.argument(batch != nil && count > 0, "batch is NULL or empty")
        var operations: [FileBatch.Operation] = []
        for i in 0..<count {
            let entry = batch![i]
            let path = try CResult.string(entry.path, "path of batch entry \(i)")
            func data() throws(CFailure) -> [UInt8] {
                guard let pointer = entry.data else {
                    try CResult.argument(entry.size == 0, "batch entry \(i) has no data but a size of \(entry.size)")
                    return []
                }
                let length = entry.size != 0 ? entry.size : strlen(pointer)
                return Array(UnsafeRawBufferPointer(start: pointer, count: length))
            }
            switch entry.type {
            case WRITE_FILE: operations.append(.write(path: path, data: try data(), mode: 0o644))
            case REPLACE_FILE: operations.append(.replace(path: path, data: try data(), mode: 0o644))
            case DELETE_FILE: operations.append(.delete(path: path))
            case CREATE_DIRECTORY: operations.append(.mkdir(path: path, mode: 0o755))
            default: throw CFailure(result: CResult.invalid("batch entry \(i) has unknown type \(entry.type.rawValue)"))
            }
        }
        return try queue.submit(.batch(FileBatch(operations))).handle
    } catch { return nil }
}

@_cdecl("pmll_queue_get_stats")
public func cQueueGetStats(_ handle: OpaquePointer?, _ completed: UnsafeMutablePointer<UInt64>?, _ failed: UnsafeMutablePointer<UInt64>?, _ pending: UnsafeMutablePointer<UInt64>?) {
    guard let queue = try? CQueue.from(handle) else { return }
    let stats = queue.queue.stats
    completed?.pointee = stats.completed
    failed?.pointee = stats.failed
    pending?.pointee = stats.pending
}

@_cdecl("pmll_queue_get_full_stats")
public func cQueueGetFullStats(_ handle: OpaquePointer?, _ out: UnsafeMutablePointer<PMLL_QueueStats>?) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let queue = try CQueue.from(handle)
        guard let out else { return CResult.invalid("stats is NULL") }
        let s = queue.queue.stats
        out.pointee = PMLL_QueueStats(completed: s.completed, failed: s.failed, retried: s.retried, abandoned: s.abandoned,
                                      recovered: s.recovered, pending: s.pending, mean_wait_ns: s.meanWaitNanoseconds,
                                      max_wait_ns: s.maxWaitNanoseconds, mean_run_ns: s.meanRunNanoseconds, max_run_ns: s.maxRunNanoseconds)
        return CResult.success
    }
}

@_cdecl("pmll_queue_set_recovery_handler")
public func cQueueSetRecoveryHandler(_ handle: OpaquePointer?, _ callback: pmll_recovery_callback?, _ userData: UnsafeMutableRawPointer?) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let queue = try CQueue.from(handle)
        queue.configure { $0.recovery = callback.map { ($0, userData) } }
        return CResult.success
    }
}

/// Wraps a C recovery callback for ``Pool/recover(handlers:timeout:)``; false is a failure.
private struct CRecoveryHandler: @unchecked Sendable {
    let callback: pmll_recovery_callback
    let userData: UnsafeMutableRawPointer?

    /// Runs the callback (on the thread that called `pmll_queue_recover_operations`).
    func callAsFunction(_ record: OperationRecord) -> Bool {
        record.queue.withCString { queueName in
            record.lastError.withCString { lastError in
                var operation = PMLL_AbandonedOperation(queue: queueName, ticket: record.ticket, owner_pid: record.ownerPid,
                                                        attempts: record.attempts, last_error: lastError)
                return callback(&operation, userData)
            }
        }
    }
}

private struct RecoveryDeclined: Error, CustomStringConvertible {
    var description: String { "the recovery callback returned false" }
}

@_cdecl("pmll_queue_recover_operations")
public func cQueueRecoverOperations(_ handle: OpaquePointer?, _ contextHandle: OpaquePointer?) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let queue = try CQueue.from(handle)
        let pool = contextHandle == nil ? queue.context.pool : try CContext.resolve(contextHandle).pool
        // The callback runs on this (the C caller's) thread, which serves it while recovery
        // waits: a C callback may block as long as it likes without holding an executor thread.
        let caller = CallerThread()
        var handlers: [String: RecoveryHandler] = [:]
        if let (callback, userData) = queue.recoveryHandler {
            let handler = CRecoveryHandler(callback: callback, userData: userData)
            handlers[CQueue.kind] = { record in
                guard await caller.perform({ handler(record) }) else { throw RecoveryDeclined() }
            }
        }
        let report: RecoveryReport
        do {
            report = try blocking(serving: caller) { [handlers] in try await pool.recover(handlers: handlers) }
        } catch let error as PMLLError {
            return CResult.fail(error)
        } catch {
            return CResult.fail(CPM_RESULT_ERROR_UNKNOWN, "\(error)")
        }
        if let attention = report.fileBatchesNeedingAttention.first {
            return CResult.fail(pmll_abi_pool_corrupt, "\(attention)")
        }
        for item in report.items {
            if case let .handlerFailed(reason) = item.outcome {
                return CResult.fail(CPM_RESULT_ERROR_COMMAND_FAILED, "recovery of operation \(item.record.ticket) of queue '\(item.record.queue)' failed: \(reason)")
            }
        }
        return CResult.success
    }
}

@_cdecl("pmll_queue_free")
public func cQueueFree(_ handle: OpaquePointer?) {
    guard let handle, let queue = try? CQueue.from(handle) else { return }
    if DefaultFileQueue.current.withLock({ $0 === queue }) { return }   // the process's: freed by pmll_shutdown
    queue.close()
    Unmanaged<CQueue>.fromOpaque(UnsafeRawPointer(handle)).release()
}
