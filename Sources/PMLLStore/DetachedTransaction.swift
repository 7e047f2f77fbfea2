import CPMLL
package import PMLLCore

/// A transaction driven call by call instead of by a closure (the C interface): begin, reads
/// and writes, then commit or abort. Serializable like ``Pool/transaction(options:_:)``, but a
/// conflict is returned to the caller, which runs its transaction again: only the caller
/// knows how to.
package final class DetachedTransaction {
    private var tx: Transaction
    private var inPlace: [InPlaceWrite] = []

    package init(pool: Pool) throws(PMLLError) {
        try pool.storeReady()
        tx = Transaction(pool: pool, reads: ReadSet(attempt: 1))
    }

    package func get(_ key: String) throws(PMLLError) -> [UInt8]? { try tx.get(key) }
    package func set(_ key: String, _ value: [UInt8]) throws(PMLLError) { try tx.set(key, value) }
    package func delete(_ key: String) throws(PMLLError) { try tx.delete(key) }
    /// Writes `bytes` into `object` at `offset` when the transaction commits (not before).
    package func write(_ object: StoreObject, offset: Int, bytes: [UInt8]) throws(PMLLError) {
        guard offset >= 0, offset + bytes.count <= object.size else {
            throw .valueTooLarge(key: Pool.objectPrefix + object.name, bytes: offset + bytes.count, limit: object.size)
        }
        inPlace.append(InPlaceWrite(object: object, offset: offset, bytes: bytes))
    }

    /// Writes everything atomically, or throws ``PMLLError/transactionConflict(key:attempts:)``
    /// if something read has changed since (a read-only transaction saw one consistent state
    /// and always commits).
    package func commit() throws(PMLLError) {
        try tx.authorize()
        for write in inPlace {
            try tx.pool.access.check(tx.pool, .stateWrite(key: Pool.objectPrefix + write.object.name))
        }
        try tx.pool.commit(tx.plannedWrites, reads: tx.reads, inPlace: inPlace)
    }
}
