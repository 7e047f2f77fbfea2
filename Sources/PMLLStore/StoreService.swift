import CPMLL
import Synchronization
package import PMLLCore
import PMLLLocks

/// The store layer's per-pool state: the store's layout (read and validated once, when the
/// facade opens the pool) and the index of the store lock, created on first use.
package final class StoreService: Sendable {
    package let store: StateStore
    /// The store lock's index + 1 (0: not looked up yet; any thread may look it up, all
    /// find the same entry).
    let lockIndex = Atomic<UInt32>(0)

    init(_ store: StateStore) { self.store = store }
}

extension Pool {
    /// Reads the store's superblock and installs the store layer on this pool: the state
    /// store and the repair hook that rolls back a dead holder's transaction. Called by the
    /// facade while opening.
    package func attachStore() throws(PMLLError) {
        let layout = try StoreLayout.read(memory.base, heap: memory.layout.heap, path: path)
        let store = try StateStore(memory: memory, layout: layout, path: path)
        _ = services.get(.store) { StoreService(store) }
        hooks.repairAfterOwnerDeath.withLock { $0 = { pool throws(PMLLError) in try pool.storeReady() } }
        if store.exists && !isReadOnly {
            hooks.growTable.withLock { $0 = { pool, kind, k throws(PMLLError) in try pool.growTable(kind, k) } }
        }
    }

    package var store: StateStore { services.required(.store, as: StoreService.self).store }
}
