package import Synchronization

/// Per-pool state of a layer above the core (the lock-name cache, the state store's
/// layout, ...), created once per pool on first use or by the facade while opening.
package final class PoolServices: Sendable {
    private let slots = Mutex<[ObjectIdentifier: any Sendable]>([:])

    package init() {}

    /// The service of type `S`, made by `make` the first time.
    package func get<S: Sendable>(_ type: S.Type, orCreate make: () throws(PMLLError) -> S) throws(PMLLError) -> S {
        try slots.withLock { (slots) throws(PMLLError) -> S in
            if let existing = slots[ObjectIdentifier(type)] as? S { return existing }
            let made = try make()
            slots[ObjectIdentifier(type)] = made
            return made
        }
    }

    /// The service of type `S`, made by `make` the first time (which cannot fail).
    package func get<S: Sendable>(_ type: S.Type, orCreate make: () -> S) -> S {
        slots.withLock { slots in
            if let existing = slots[ObjectIdentifier(type)] as? S { return existing }
            let made = make()
            slots[ObjectIdentifier(type)] = made
            return made
        }
    }

    /// The service of type `S`, which the facade installs while opening the pool.
    package func required<S: Sendable>(_ type: S.Type) -> S {
        guard let service = slots.withLock({ $0[ObjectIdentifier(type)] as? S }) else {
            preconditionFailure("pmll: \(type) used on a pool that was not opened through Pool.open")
        }
        return service
    }
}

/// Hooks through which a lower layer calls a higher one without depending on it.
package final class PoolHooks: Sendable {
    /// Run after a lock is taken over from a dead holder, before the new holder's body: rolls
    /// back the dead process's half-committed transaction (installed by the store layer).
    package let repairAfterOwnerDeath = Mutex<(@Sendable (Pool) throws(PMLLError) -> Void)?>(nil)

    package init() {}
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
