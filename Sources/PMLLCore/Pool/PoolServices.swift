public import CPMLL
package import Synchronization

/// The slot of each layer's per-pool state in ``PoolServices``. The core names the slots,
/// not the layers' types.
@usableFromInline
package enum ServiceSlot: Int, CaseIterable {
    case locks, store, telemetry
}

/// Per-pool state of a layer above the core (the lock table and name cache, the state
/// store's layout, ...), created once per pool on first use or by the facade while opening.
///
/// Read on hot paths (every transaction reaches the store through it), so a read is one
/// acquiring load: each slot is written once, by compare-and-swap, and holds its object until
/// the pool goes away (the pattern of swift-atomics' `ManagedAtomicLazyReference`).
@usableFromInline
package final class PoolServices: @unchecked Sendable {
    @usableFromInline let slots: UnsafeMutablePointer<UInt64>

    package init() {
        slots = .allocate(capacity: ServiceSlot.allCases.count)
        slots.initialize(repeating: 0, count: ServiceSlot.allCases.count)
    }

    deinit {
        for i in 0..<ServiceSlot.allCases.count where slots[i] != 0 {
            Unmanaged<AnyObject>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(slots[i]))!).release()
        }
        slots.deallocate()
    }

    /// The object in `slot`, made by `make` the first time (if two threads race, one object
    /// wins and the other is dropped). A slot always holds the same type.
    @inlinable
    package func get<S: AnyObject & Sendable>(_ slot: ServiceSlot, as type: S.Type = S.self, orCreate make: () -> S) -> S {
        if let existing = existing(slot, as: type) { return existing }
        let made = Unmanaged.passRetained(make())
        var expected: UInt64 = 0
        if pmll_cas64(slots + slot.rawValue, &expected, UInt64(UInt(bitPattern: made.toOpaque()))) != 0 {
            return made.takeUnretainedValue()
        }
        made.release()
        return Unmanaged<S>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(expected))!).takeUnretainedValue()
    }

    /// The object in `slot`, which the facade installs while opening the pool.
    @inlinable
    package func required<S: AnyObject & Sendable>(_ slot: ServiceSlot, as type: S.Type = S.self) -> S {
        guard let service = existing(slot, as: type) else {
            preconditionFailure("pmll: \(type) used on a pool that was not opened through Pool.open")
        }
        return service
    }

    /// `body` applied to the object in `slot`, which the facade installs while opening the
    /// pool, borrowed: no retain and release of it (a slot holds its object until the pool
    /// goes away), which on the paths every commit and point read takes cost measurably.
    @inlinable @inline(__always)
    package func withRequired<S: AnyObject & Sendable, R>(_ slot: ServiceSlot, as type: S.Type = S.self, _ body: (S) -> R) -> R {
        let raw = pmll_load64_acquire(slots + slot.rawValue)
        guard raw != 0 else { preconditionFailure("pmll: \(type) used on a pool that was not opened through Pool.open") }
        return Unmanaged<S>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(raw))!)._withUnsafeGuaranteedRef(body)
    }

    @inlinable @inline(__always)
    func existing<S: AnyObject>(_ slot: ServiceSlot, as type: S.Type) -> S? {
        let raw = pmll_load64_acquire(slots + slot.rawValue)
        guard raw != 0 else { return nil }
        return Unmanaged<S>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(raw))!).takeUnretainedValue()
    }
}

/// Hooks through which a lower layer calls a higher one without depending on it.
package final class PoolHooks: Sendable {
    /// Run after a lock is taken over from a dead holder, before the new holder's body: rolls
    /// back the dead process's half-committed transaction (installed by the store layer).
    package let repairAfterOwnerDeath = Mutex<(@Sendable (Pool) throws(PMLLError) -> Void)?>(nil)
    /// Makes extension k of the lock table (`PMLL_AREA_LOCKS`) or of the queue table
    /// (`PMLL_AREA_QUEUES`): an area named by the state store's growth directory, its header
    /// written once the growth committed (``TableExtents``); installed by the store layer.
    /// Without it (a pool without a state store, a read-only attach) no table grows.
    package let growTable = Mutex<(@Sendable (Pool, UInt32, Int) throws(PMLLError) -> Void)?>(nil)

    package init() {}
}

extension Pool {
    /// Makes extension k of a table (`extents`: the lock or the queue table) through
    /// ``PoolHooks/growTable`` and learns it; `poolFull` if the table cannot grow.
    package func extendTable(_ extents: TableExtents, _ k: Int, name: String) throws(PMLLError) {
        guard k < extents.extensionLimit, let grow = hooks.growTable.withLock({ $0 }) else {
            throw .poolFull(table: name, capacity: Int(extents.known))
        }
        try grow(self, extents.kind, k)
        guard extents.learn() > k else {
            throw .corruptPool(path: path, reason: "\(name) table extension \(k) was made but cannot be read back")
        }
    }
}

/// What the layers above the core do at two moments of the attach protocol, both under
/// the INIT byte lock (the facade supplies them, in a fixed order).
package struct AttachSteps {
    /// Nobody else has the pool open: reset the layers' volatile state (lock words, queue
    /// heads). Runs before the core frees every process slot, so dead holders can be named.
    package var resetVolatile: (PoolMemory) -> Void
    /// A slot whose process is gone is being reused: release what its process held.
    package var reclaimSlot: (PoolMemory, SlotIndex) -> Void

    package init(resetVolatile: @escaping (PoolMemory) -> Void, reclaimSlot: @escaping (PoolMemory, SlotIndex) -> Void) {
        self.resetVolatile = resetVolatile
        self.reclaimSlot = reclaimSlot
    }
}
