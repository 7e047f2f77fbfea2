public import CPMLLABI
import PMLL
import PMLLStore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One open pool of a C program: the participant and its mapping, kept alive by the handle
/// (a retained reference the program holds as a `PMEMContextHandle*`).
// @unchecked: `cPath` is written once, in init, and only read afterwards.
final class CContext: @unchecked Sendable {
    let pool: Pool
    /// The path as C reads it back (`pmem_context_path`), owned here.
    let cPath: UnsafeMutablePointer<CChar>
    /// Objects opened through this context (`pmem_write` finds its destination among them).
    let objects = Mutex<[StoreObject]>([])

    /// The fork generation that opened it: a forked child must open its own.
    let generation = pmll_abi_fork_generation()

    init(pool: Pool) {
        self.pool = pool
        cPath = strdup(pool.path)
    }

    /// Throws unless this process opened the context (not a parent it was forked from).
    func checkOwner() throws(CFailure) {
        guard generation == pmll_abi_fork_generation() else { throw CFailure(result: Self.forkedChildFailure()) }
    }

    static func forkedChildFailure() -> CPM_Result {
        CResult.invalid("this pool context was opened by a parent process: a forked child must open its own (pmem_context_open)")
    }

    deinit { free(cPath) }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passRetained(self).toOpaque()) }

    static func from(_ handle: OpaquePointer) -> CContext {
        Unmanaged<CContext>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
    }

    /// `handle`, or the default pool for NULL.
    static func resolve(_ handle: OpaquePointer?) throws(CFailure) -> CContext {
        if let handle {
            let context = from(handle)
            try context.checkOwner()
            return context
        }
        if let context = DefaultContext.current.withLock({ $0 }) {
            try context.checkOwner()
            return context
        }
        throw CFailure(result: CResult.fail(CPM_RESULT_ERROR_NOT_INITIALIZED, "no pool given and no default pool: call pmll_init first"))
    }

    /// Opens with the operator's configuration, read as every `pmll` command reads it
    /// ($PMLL_CONFIG, else /etc/pmll/config.json and the user's file): a C process on a pool
    /// the command line also uses must wait, time out and audit as it does (`audit.queue_steps`
    /// set for a pool applied to `pmll` commands only, before). A bad file is an error naming
    /// it, never a silent default. NULL `path`: $PMLL_POOL, else the configuration's
    /// `pool.path`, else the default pool.
    static func open(path: String?, size: Int, create: Bool) throws(CFailure) -> CContext {
        let pool = try CResult.library { () throws(PMLLError) -> Pool in
            let configuration = try Configuration.load()
            var options = configuration.poolOptions
            options.create = create
            if size != 0 { options.size = size }
            return try Pool.open(path: path ?? configuration.poolPath, options: options)
        }
        return CContext(pool: pool)
    }
}

/// The process-wide default pool of `pmll_init`.
enum DefaultContext {
    static let current = Mutex<CContext?>(nil)
}

private func optionalPath(_ path: UnsafePointer<CChar>?) throws(CFailure) -> String? {
    guard let path else { return nil }
    return try CResult.string(path, "pool path")
}

@_cdecl("pmem_context_create")
public func cContextCreate(_ path: UnsafePointer<CChar>?, _ size: Int, _ create: Bool) -> OpaquePointer? {
    do {
        return try CContext.open(path: optionalPath(path), size: size, create: create).handle
    } catch { return nil }
}

@_cdecl("pmem_context_open")
public func cContextOpen(_ path: UnsafePointer<CChar>?) -> OpaquePointer? {
    cContextCreate(path, 0, false)
}

@_cdecl("pmem_context_close")
public func cContextClose(_ handle: OpaquePointer?) {
    // In a forked child the parent's participant must not be unregistered: leave it be.
    guard let handle, CContext.from(handle).generation == pmll_abi_fork_generation() else { return }
    Unmanaged<CContext>.fromOpaque(UnsafeRawPointer(handle)).release()
}

@_cdecl("pmem_context_path")
public func cContextPath(_ handle: OpaquePointer?) -> UnsafePointer<CChar>? {
    guard let handle else { return nil }
    return UnsafePointer(CContext.from(handle).cPath)
}

@_cdecl("pmem_context_check")
public func cContextCheck(_ handle: OpaquePointer?) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let context = try CContext.resolve(handle)
        let report = try CResult.library { () throws(PMLLError) -> CheckReport in try context.pool.check() }
        guard let first = report.problems.first else { return CResult.success }
        let more = report.problems.count > 1 ? " (and \(report.problems.count - 1) more problems)" : ""
        return CResult.fail(pmll_abi_pool_corrupt, "pool '\(context.pool.path)' check failed: \(first)\(more)")
    }
}

@_cdecl("pmll_init")
public func cInit(_ path: UnsafePointer<CChar>?, _ size: Int) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let path = try optionalPath(path)
        if DefaultContext.current.withLock({ $0 }) != nil { return CResult.success }
        let context = try CContext.open(path: path, size: size, create: true)
        // Two threads racing here: the first one's pool stays, the other's is closed.
        DefaultContext.current.withLock { current in
            if current == nil { current = context }
        }
        return CResult.success
    }
}

@_cdecl("pmll_shutdown")
public func cShutdown() {
    if let queue = DefaultFileQueue.current.withLock({ current -> CQueue? in
        defer { current = nil }
        return current
    }) {
        queue.close()
    }
    // Dropping the reference closes the pool (queue handles and transactions still open keep it
    // open until they end; the pointer of pmll_default_context is invalid from here).
    DefaultContext.current.withLock { $0 = nil }
}

@_cdecl("pmll_init_global_system")
public func cInitGlobalSystem() -> Bool { cInit(nil, 0) == CResult.success }

@_cdecl("pmll_shutdown_global_system")
public func cShutdownGlobalSystem() { cShutdown() }

@_cdecl("pmll_default_context")
public func cDefaultContext() -> OpaquePointer? {
    guard let context = DefaultContext.current.withLock({ $0 }) else { return nil }
    return OpaquePointer(Unmanaged.passUnretained(context).toOpaque())
}

@_cdecl("pmem_context_status")
public func cContextStatus(_ handle: OpaquePointer?, _ out: UnsafeMutablePointer<PMLL_PoolStatus>?) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let context = try CContext.resolve(handle)
        guard let out else { return CResult.invalid("status is NULL") }
        let s = context.pool.status(includingSelf: true)
        var status = PMLL_PoolStatus()
        status.size_bytes = s.sizeBytes
        status.processes = UInt32(clamping: s.processes.filter(\.alive).count)
        status.process_capacity = s.processCapacity
        status.locks = UInt32(clamping: s.locks.count)
        status.lock_capacity = s.lockCapacity
        status.queues = UInt32(clamping: s.queues.count)
        status.keys_used = UInt32(clamping: s.store?.keysUsed ?? 0)
        status.key_capacity = UInt32(clamping: s.store?.keyCapacity ?? 0)
        status.blocks_used = UInt64(s.store?.blocksUsed ?? 0)
        status.block_count = UInt64(s.store?.blockCount ?? 0)
        status.commits = s.transactions?.commits ?? 0
        status.conflicts = s.transactions?.conflicts ?? 0
        status.persistent_memory = s.persistentMemory ? 1 : 0
        out.pointee = status
        return CResult.success
    }
}
