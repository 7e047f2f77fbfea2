import CPMLL
package import PMLLCore

/// A named object of fixed size in the store (the C interface's `pmll_object`, like
/// libpmemobj's root object): a value under `pmll:object/NAME` that is written only in place,
/// by ``InPlaceWrite``s committed with a transaction, so its bytes never move and a program
/// may keep a pointer to them for as long as it has the pool open.
package struct StoreObject: @unchecked Sendable {
    package let name: String
    package let slot: UInt32
    package let key: [UInt8]
    /// Offset of the record (key, then the object's bytes) from the start of the pool file.
    package let recordOffset: Int
    package let size: Int
    /// The object's bytes in the mapping.
    package let bytes: UnsafeMutableRawPointer

    package var valueOffset: Int { recordOffset + key.count }
}

/// `bytes` written at `offset` into `object` when the transaction commits.
package struct InPlaceWrite {
    package let object: StoreObject
    package let offset: Int
    package let bytes: [UInt8]

    package init(object: StoreObject, offset: Int, bytes: [UInt8]) {
        self.object = object
        self.offset = offset
        self.bytes = bytes
    }
}

extension Pool {
    package static let objectPrefix = "pmll:object/"

    /// The object `name`, created zero-filled with `size` bytes if the pool has none. Throws
    /// ``PMLLError/invalidKey(key:reason:)`` if it exists with another size.
    package func object(named name: String, size: Int) throws(PMLLError) -> StoreObject {
        let key = Self.objectPrefix + name
        try StateStore.validate(key: key)
        let limit = Int(PMLL_VALUE_MAX) - key.utf8.count
        guard size > 0, size <= limit else { throw .valueTooLarge(key: key, bytes: size, limit: limit) }
        if let found = try findObject(key: key, size: size) { return found }
        // Created by a serializable transaction, so that two processes creating it at once
        // agree on one: a second creation would move the first one's bytes.
        do {
            try transaction { tx in
                if try tx.get(key) == nil { try tx.setInternal(key, [UInt8](repeating: 0, count: size)) }
            }
        } catch let error as PMLLError {
            throw error
        } catch {
            throw .corruptRecord(key: key, reason: "\(error)")   // the body throws only PMLLError
        }
        guard let created = try findObject(key: key, size: size) else {
            throw .corruptRecord(key: key, reason: "the object vanished after its creation")
        }
        return created
    }

    private func findObject(key: String, size: Int) throws(PMLLError) -> StoreObject? {
        let store = try stateStore()
        return try withStoreLock { () throws(PMLLError) -> StoreObject? in
            let bytes = Array(key.utf8)
            guard let index = try store.find(bytes).found else { return nil }
            let s = store.slot(index)
            guard Int(s.pointee.value_length) == size else {
                throw .invalidKey(key: key, reason: "the object exists with \(s.pointee.value_length) bytes, not \(size)")
            }
            let recordOffset = store.recordOffset(of: index)
            return StoreObject(name: String(key.dropFirst(Self.objectPrefix.count)), slot: index, key: bytes,
                               recordOffset: recordOffset, size: size, bytes: memory.base + recordOffset + bytes.count)
        }
    }
}

extension StateStore {
    /// File offset of a used slot's record (key, then value): its extent, or its inline bytes.
    package func recordOffset(of i: UInt32) -> Int {
        let s = slot(i)
        return s.pointee.block_count > 0
            ? offset(of: block(s.pointee.first_block))
            : offset(of: StateStore.inlineRecord(s))
    }
}
