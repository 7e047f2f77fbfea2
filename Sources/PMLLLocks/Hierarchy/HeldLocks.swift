package import CPMLL
package import PMLLCore

/// The runtime backstop of the lock hierarchy. Tracks the innermost lock held by the
/// current thread (synchronous scopes, a C thread-local) or task (asynchronous scopes, a
/// task-local, since a task may resume on another thread) and rejects any acquisition
/// that is not strictly after it: level greater, or, inside one multi-lock call, same
/// level and a greater name.
package enum HeldLocks {
    /// Innermost lock held across `await` by the current task.
    @TaskLocal package static var asyncTopRecord: HeldLock?

    package struct HeldLock: @unchecked Sendable {
        package let entry: UnsafePointer<pmll_lock_entry_t>
        package let pool: Pool   // keeps the mapping alive while the record exists
    }

    @inline(__always)
    package static var currentTop: UnsafePointer<pmll_lock_entry_t>? {
        if let top = pmll_held_top_get() { return top }
        return asyncTop()
    }

    /// The innermost lock held across `await` by the current task (nil outside tasks).
    @inline(__always)
    package static func asyncTop() -> UnsafePointer<pmll_lock_entry_t>? {
        if pmll_async_scopes() == 0 { return nil }
        return $asyncTopRecord.get()?.entry
    }

    /// Throws ``PMLLError/hierarchyViolation(held:requested:)`` unless `requested` may be
    /// taken after what is held now.
    @inline(__always)
    package static func check(_ requested: UnsafePointer<pmll_lock_entry_t>, after top: UnsafePointer<pmll_lock_entry_t>?, pool: Pool) throws(PMLLError) {
        guard let top else { return }
        if top.pointee.level < requested.pointee.level { return }
        throw violation(held: id(of: top), requested: id(of: requested), pool: pool)
    }

    /// The error of a hierarchy violation, audited.
    @inline(never)
    package static func violation(held: LockID, requested: LockID, pool: Pool) -> PMLLError {
        pool.audit(.hierarchyViolation, .denied, "lock '\(requested.name)' (\(requested.level)) requested while holding '\(held.name)' (\(held.level))")
        return .hierarchyViolation(held: held, requested: requested)
    }

    package static func id(of entry: UnsafePointer<pmll_lock_entry_t>) -> LockID {
        LockID(name: String(fixedCString: entry.pointee.name), level: LockLevel(rawValue: entry.pointee.level) ?? .network)
    }
}
