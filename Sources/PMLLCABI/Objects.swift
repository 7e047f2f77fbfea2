public import CPMLLABI
import PMLL
import PMLLCore
import PMLLStore

@_cdecl("pmll_object")
public func cObject(_ handle: OpaquePointer?, _ name: UnsafePointer<CChar>?, _ size: Int) -> UnsafeMutableRawPointer? {
    do {
        let context = try CContext.resolve(handle)
        let name = try CResult.string(name, "object name")
        let object = try CResult.library { () throws(PMLLError) -> StoreObject in try context.pool.object(named: name, size: size) }
        context.objects.withLock { objects in
            if !objects.contains(where: { $0.slot == object.slot }) { objects.append(object) }
        }
        return object.bytes
    } catch { return nil }
}

@_cdecl("pmem_write")
public func cPmemWrite(_ handle: OpaquePointer?, _ destination: UnsafeMutableRawPointer?, _ source: UnsafeRawPointer?, _ size: Int) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let tx = try CTransaction.from(handle)
        guard let destination else { return CResult.invalid("pmem_write destination is NULL") }
        try CResult.argument(source != nil || size == 0, "pmem_write source is NULL with a size of \(size)")
        let found = tx.context.objects.withLock { objects in
            objects.first { destination >= $0.bytes && destination + size <= $0.bytes + $0.size }
        }
        guard let object = found else {
            return CResult.invalid("pmem_write destination is not inside an object of this transaction's pool (pmll_object)")
        }
        let bytes = source.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
        try CResult.library { () throws(PMLLError) in try tx.transaction.write(object, offset: destination - object.bytes, bytes: bytes) }
        return CResult.success
    }
}
