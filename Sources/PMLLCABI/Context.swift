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

    init(pool: Pool) {
        self.pool = pool
        cPath = strdup(pool.path)
    }

    deinit { free(cPath) }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passRetained(self).toOpaque()) }

    static func from(_ handle: OpaquePointer) -> CContext {
        Unmanaged<CContext>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
    }

    /// `handle`, or the default pool for NULL.
    static func resolve(_ handle: OpaquePointer?) throws(CFailure) -> CContext {
        if let handle { return from(handle) }
        if let context = DefaultContext.current.withLock({ $0 }) { return context }
        throw CFailure(result: CResult.fail(CPM_RESULT_ERROR_NOT_INITIALIZED, "no pool given and no default pool: call pmll_init first"))
    }

    static func open(path: String?, size: Int, create: Bool) throws(CFailure) -> CContext {
        var options = PoolOptions()
        options.create = create
        if size != 0 { options.size = size }
        let pool = try CResult.library { () throws(PMLLError) -> Pool in try Pool.open(path: path, options: options) }
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
    guard let handle else { return }
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
    let context = DefaultContext.current.withLock { current -> CContext? in
        defer { current = nil }
        return current
    }
    _ = context
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
