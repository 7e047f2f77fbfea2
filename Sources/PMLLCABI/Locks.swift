public import CPMLLABI
import CPMLL
import PMLL
import PMLLCore
import PMLLLocks
#if canImport(Glibc)
import Glibc
#endif

/// The C lock calls over the same lock word protocol as ``LockHandle``: the uncontended
/// acquire and release touch only the lock word through the pointers kept in the
/// `PMLL_Lock` (no reference counting, no syscall); anything else goes to the pool.
enum CLock {
    typealias ABI = UnsafeMutablePointer<pmll_abi_lock_t>

    static func abi(_ lock: UnsafeMutablePointer<PMLL_Lock>?) throws(CFailure) -> ABI {
        guard let lock else { throw CFailure(result: CResult.invalid("PMLL_Lock is NULL")) }
        let abi = UnsafeMutableRawPointer(lock).assumingMemoryBound(to: pmll_abi_lock_t.self)
        try CResult.argument(abi.pointee.magic == PMLL_ABI_LOCK_MAGIC, "PMLL_Lock is not initialised (pmll_lock_init)")
        guard abi.pointee.generation == pmll_abi_fork_generation() else { throw CFailure(result: CContext.forkedChildFailure()) }
        return abi
    }

    static func entry(_ abi: ABI) -> UnsafeMutablePointer<pmll_lock_entry_t> {
        abi.pointee.entry.assumingMemoryBound(to: pmll_lock_entry_t.self)
    }

    static func context(_ abi: ABI) -> CContext { CContext.from(abi.pointee.context) }

    static func handle(_ abi: ABI) -> LockHandle {
        let pool = context(abi).pool
        return LockHandle(pool: pool, id: HeldLocks.id(of: entry(abi)), index: LockIndex(abi.pointee.index))
    }

    static func bind(_ lock: UnsafeMutablePointer<PMLL_Lock>?, _ name: UnsafePointer<CChar>?, level: UInt32, _ handle: OpaquePointer?) -> CPM_Result {
        CResult.run { () throws(CFailure) -> CPM_Result in
            guard let lock else { return CResult.invalid("PMLL_Lock is NULL") }
            let name = try CResult.string(name, "lock name")
            try CResult.argument(level <= 4, "lock level \(level) is not one of 0 (none) and 1–4")
            let context = try CContext.resolve(handle)
            let pool = context.pool
            let found = try CResult.library { () throws(PMLLError) -> LockHandle in
                if level == 0 {
                    if let existing = try pool.existingLock(named: name) { return existing }
                    return try pool.lock(named: name, level: .package)
                }
                return try pool.lock(named: name, level: LockLevel(rawValue: level)!)
            }
            let abi = UnsafeMutableRawPointer(lock).initializeMemory(as: pmll_abi_lock_t.self, repeating: pmll_abi_lock_t(), count: 1)
            abi.pointee.entry = UnsafeMutableRawPointer(found.entry)
            abi.pointee.context = OpaquePointer(Unmanaged.passUnretained(context).toOpaque())
            abi.pointee.token = pool.token.rawValue
            abi.pointee.index = found.index.rawValue
            abi.pointee.level = level
            abi.pointee.generation = context.generation
            abi.pointee.magic = PMLL_ABI_LOCK_MAGIC
            return CResult.success
        }
    }

    /// The whole acquire: hierarchy, the word (fast path first), readers, repair after a death.
    @inline(__always)
    static func acquire(_ lock: UnsafeMutablePointer<PMLL_Lock>?, deadline: @autoclosure () -> Int64) -> CPM_Result {
        CResult.run { () throws(CFailure) -> CPM_Result in
            let abi = try abi(lock)
            if abi.pointee.level != 0 { try checkHierarchy(abi) }
            let entry = entry(abi)
            if pmll_lock_try_fast(entry, abi.pointee.token) != 0 {
                entry.pointee.acquisitions &+= 1
                if pmll_lock_readers_present(entry) != 0 { try drain(abi, deadline: deadline()) }
                pmll_abi_set_holder(abi, UInt32(PMLL_ABI_HELD), pmll_abi_thread_self())
            } else {
                try acquireSlow(abi, deadline: deadline())
            }
            if abi.pointee.level != 0 { push(abi) }
            return CResult.success
        }
    }

    @inline(never)
    static func drain(_ abi: ABI, deadline: Int64) throws(CFailure) {
        let pool = context(abi).pool
        try CResult.library { () throws(PMLLError) in
            try pool.drainReaders(index: LockIndex(abi.pointee.index), deadline: deadline, cancellation: nil)
        }
    }

    @inline(never)
    static func acquireSlow(_ abi: ABI, deadline: Int64) throws(CFailure) {
        // Another thread of this process may hold it (then this one waits), but not this one.
        if pmll_abi_held_by(abi, pmll_abi_thread_self()) != 0 {
            throw CFailure(result: CResult.invalid("lock '\(HeldLocks.id(of: entry(abi)).name)' is already held by this thread: acquiring it again would wait forever"))
        }
        let pool = context(abi).pool
        let index = LockIndex(abi.pointee.index)
        let taken = try CResult.library { () throws(PMLLError) -> Taken in
            try pool.acquire(index: index, deadline: deadline, cancellation: nil)
        }
        // A dead holder's half-done commit is rolled back before this holder goes on; if that
        // fails the lock is released (marked) and the error returned.
        try CResult.library { () throws(PMLLError) in
            try LockScope.settle(pool, CollectionOfOne(handle(abi)), ownerDied: taken.ownerDied)
        }
        pmll_abi_set_holder(abi, UInt32(PMLL_ABI_HELD) | (taken.ownerDied ? UInt32(PMLL_ABI_DIED) : 0), pmll_abi_thread_self())
    }

    static func release(_ lock: UnsafeMutablePointer<PMLL_Lock>?, inconsistent: Bool) -> CPM_Result {
        CResult.run { () throws(CFailure) -> CPM_Result in
            let abi = try abi(lock)
            let entry = entry(abi)
            guard abi.pointee.flags & UInt32(PMLL_ABI_HELD) != 0,
                  pmll_load32(pmll_entry_word(entry)) & PMLL_OWNER_MASK == abi.pointee.token else {
                return CResult.fail(pmll_abi_not_held, "lock '\(HeldLocks.id(of: entry).name)' is not held through this PMLL_Lock")
            }
            if abi.pointee.level != 0 {
                try CResult.argument(abi.pointee.holder_thread == pmll_abi_thread_self(),
                                     "leveled lock '\(HeldLocks.id(of: entry).name)' must be released by the thread that acquired it")
                pmll_abi_unlink_held(abi)
            }
            pmll_abi_set_holder(abi, 0, 0)
            if inconsistent || pmll_lock_release_fast(entry, abi.pointee.token) == 0 {
                context(abi).pool.release(index: LockIndex(abi.pointee.index), inconsistent: inconsistent)
            }
            return CResult.success
        }
    }

    /// Leveled locks: this one must come strictly after the innermost one the thread holds.
    static func checkHierarchy(_ abi: ABI) throws(CFailure) {
        guard let top = pmll_abi_held_top() else { return }
        if top.pointee.level < abi.pointee.level { return }
        let held = HeldLocks.id(of: entry(top)), requested = HeldLocks.id(of: entry(abi))
        throw CFailure(result: CResult.fail(HeldLocks.violation(held: held, requested: requested, pool: handle(abi).pool)))
    }

    static func push(_ abi: ABI) {
        abi.pointee.below = pmll_abi_held_top()
        pmll_abi_set_held_top(abi)
    }
}

@_cdecl("pmll_lock_init")
public func cLockInit(_ lock: UnsafeMutablePointer<PMLL_Lock>?, _ name: UnsafePointer<CChar>?, _ persistent: Bool, _ context: OpaquePointer?) -> CPM_Result {
    CLock.bind(lock, name, level: 0, context)
}

@_cdecl("pmll_lock_init_level")
public func cLockInitLevel(_ lock: UnsafeMutablePointer<PMLL_Lock>?, _ name: UnsafePointer<CChar>?, _ level: PMLL_LockLevel, _ context: OpaquePointer?) -> CPM_Result {
    guard level.rawValue != 0 else { return CResult.invalid("pmll_lock_init_level needs a level from 1 (registry) to 4 (network)") }
    return CLock.bind(lock, name, level: level.rawValue, context)
}

@_cdecl("pmll_lock_acquire")
public func cLockAcquire(_ lock: UnsafeMutablePointer<PMLL_Lock>?, _ timeoutMilliseconds: UInt32) -> CPM_Result {
    CLock.acquire(lock, deadline: timeoutMilliseconds == 0 ? .max : Pool.deadline(after: .milliseconds(timeoutMilliseconds)))
}

@_cdecl("pmll_lock_acquire_until")
public func cLockAcquireUntil(_ lock: UnsafeMutablePointer<PMLL_Lock>?, _ deadline: UnsafePointer<timespec>?) -> CPM_Result {
    guard let deadline else { return CResult.invalid("deadline is NULL") }
    let t = deadline.pointee
    guard t.tv_nsec >= 0 && t.tv_nsec < 1_000_000_000 && t.tv_sec >= 0 else { return CResult.invalid("deadline has tv_nsec outside 0–999999999 or a negative tv_sec") }
    let ns = Int64(t.tv_sec) > (Int64.max - Int64(t.tv_nsec)) / 1_000_000_000 ? Int64.max : Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
    return CLock.acquire(lock, deadline: ns)
}

@_cdecl("pmll_lock_try_acquire")
public func cLockTryAcquire(_ lock: UnsafeMutablePointer<PMLL_Lock>?) -> CPM_Result {
    CLock.acquire(lock, deadline: Clock.monotonicNanoseconds)
}

@_cdecl("pmll_lock_release")
public func cLockRelease(_ lock: UnsafeMutablePointer<PMLL_Lock>?) -> CPM_Result {
    CLock.release(lock, inconsistent: false)
}

@_cdecl("pmll_lock_release_inconsistent")
public func cLockReleaseInconsistent(_ lock: UnsafeMutablePointer<PMLL_Lock>?) -> CPM_Result {
    CLock.release(lock, inconsistent: true)
}

@_cdecl("pmll_lock_destroy")
public func cLockDestroy(_ lock: UnsafeMutablePointer<PMLL_Lock>?) {
    guard let abi = try? CLock.abi(lock) else { return }
    if abi.pointee.flags & UInt32(PMLL_ABI_HELD) != 0 { _ = CLock.release(lock, inconsistent: false) }
    abi.pointee.magic = 0
}

@_cdecl("pmll_lock_previous_owner_died")
public func cLockPreviousOwnerDied(_ lock: UnsafePointer<PMLL_Lock>?) -> Bool {
    guard let abi = try? CLock.abi(lock.map(UnsafeMutablePointer.init(mutating:))) else { return false }
    return abi.pointee.flags & UInt32(PMLL_ABI_HELD | PMLL_ABI_DIED) == UInt32(PMLL_ABI_HELD | PMLL_ABI_DIED)
}

@_cdecl("pmll_lock_owner_death")
public func cLockOwnerDeath(_ lock: UnsafePointer<PMLL_Lock>?, _ out: UnsafeMutablePointer<PMLL_OwnerDeath>?) -> Bool {
    guard cLockPreviousOwnerDied(lock), let out, let abi = try? CLock.abi(lock.map(UnsafeMutablePointer.init(mutating:))) else { return false }
    let death = LockDeath.read(CLock.entry(abi))
    var record = PMLL_OwnerDeath()
    record.pid = death.pid
    record.released_inconsistent = death.cause == .releasedInconsistent ? 1 : 0
    withUnsafeMutableBytes(of: &record.command) { bytes in
        let name = Array(death.commandName.utf8.prefix(bytes.count - 1))
        bytes.copyBytes(from: name)
        bytes[name.count] = 0
    }
    record.held_since_ns = death.heldSinceNanoseconds
    record.detected_ns = death.detectedAtNanoseconds
    out.pointee = record
    return true
}

@_cdecl("pmll_lock_get_stats")
public func cLockGetStats(_ lock: UnsafePointer<PMLL_Lock>?, _ out: UnsafeMutablePointer<PMLL_LockStats>?) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let abi = try CLock.abi(lock.map(UnsafeMutablePointer.init(mutating:)))
        guard let out else { return CResult.invalid("stats is NULL") }
        let handle = CLock.handle(abi)
        guard let status = handle.pool.status(includingSelf: true).locks.first(where: { $0.name == handle.id.name }) else {
            return CResult.fail(pmll_abi_not_found, "lock '\(handle.id.name)' is not in the pool")
        }
        var stats = PMLL_LockStats()
        stats.acquisitions = status.acquisitions
        stats.contended = status.contended
        stats.owner_deaths = status.ownerDeaths
        stats.timeouts = status.timeouts
        stats.total_wait_ns = status.totalWaitNanoseconds
        stats.max_wait_ns = status.maxWaitNanoseconds
        stats.holder_pid = status.holder?.pid ?? 0
        stats.waiters = UInt32(clamping: status.waiters)
        out.pointee = stats
        return CResult.success
    }
}
