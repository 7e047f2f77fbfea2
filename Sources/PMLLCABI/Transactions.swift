public import CPMLLABI
import PMLL
import PMLLCore
import PMLLStore

/// A C transaction: a retained ``DetachedTransaction`` behind a `PMLL_Transaction*`. The
/// context is retained with it, so a transaction keeps its pool mapped until it ends.
final class CTransaction {
    let context: CContext
    let transaction: DetachedTransaction

    init(context: CContext, transaction: DetachedTransaction) {
        self.context = context
        self.transaction = transaction
    }

    static func from(_ handle: OpaquePointer?) throws(CFailure) -> CTransaction {
        guard let handle else { throw CFailure(result: CResult.invalid("PMLL_Transaction is NULL")) }
        let tx = Unmanaged<CTransaction>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
        try tx.context.checkOwner()
        return tx
    }

    /// Ends the transaction: the handle is invalid afterwards.
    static func end(_ handle: OpaquePointer) {
        Unmanaged<CTransaction>.fromOpaque(UnsafeRawPointer(handle)).release()
    }
}

@_cdecl("pmll_transaction_begin")
public func cTransactionBegin(_ handle: OpaquePointer?) -> OpaquePointer? {
    do {
        let context = try CContext.resolve(handle)
        let transaction = try CResult.library { () throws(PMLLError) -> DetachedTransaction in try DetachedTransaction(pool: context.pool) }
        let tx = CTransaction(context: context, transaction: transaction)
        return OpaquePointer(Unmanaged.passRetained(tx).toOpaque())
    } catch { return nil }
}

@_cdecl("pmll_tx_set")
public func cTxSet(_ handle: OpaquePointer?, _ key: UnsafePointer<CChar>?, _ value: UnsafeRawPointer?, _ length: Int) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let tx = try CTransaction.from(handle)
        let key = try CResult.string(key, "key")
        try CResult.argument(value != nil || length == 0, "value is NULL with a length of \(length)")
        let bytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: length)) } ?? []
        try CResult.library { () throws(PMLLError) in try tx.transaction.set(key, bytes) }
        return CResult.success
    }
}

@_cdecl("pmll_tx_get")
public func cTxGet(_ handle: OpaquePointer?, _ key: UnsafePointer<CChar>?, _ buffer: UnsafeMutableRawPointer?, _ capacity: Int, _ length: UnsafeMutablePointer<Int>?) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let tx = try CTransaction.from(handle)
        let key = try CResult.string(key, "key")
        try CResult.argument(buffer != nil || capacity == 0, "buffer is NULL with a capacity of \(capacity)")
        guard let value = try CResult.library({ () throws(PMLLError) -> [UInt8]? in try tx.transaction.get(key) }) else {
            length?.pointee = 0
            return CResult.fail(pmll_abi_not_found, "key '\(key)' has no value")
        }
        length?.pointee = value.count
        guard value.count <= capacity else {
            return CResult.fail(pmll_abi_too_large, "value of key '\(key)' is \(value.count) bytes, the buffer \(capacity)")
        }
        if let buffer { value.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        return CResult.success
    }
}

@_cdecl("pmll_tx_delete")
public func cTxDelete(_ handle: OpaquePointer?, _ key: UnsafePointer<CChar>?) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let tx = try CTransaction.from(handle)
        let key = try CResult.string(key, "key")
        try CResult.library { () throws(PMLLError) in try tx.transaction.delete(key) }
        return CResult.success
    }
}

@_cdecl("pmll_transaction_commit")
public func cTransactionCommit(_ handle: OpaquePointer?) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        let tx = try CTransaction.from(handle)
        defer { CTransaction.end(handle!) }
        try CResult.library { () throws(PMLLError) in try tx.transaction.commit() }
        return CResult.success
    }
}

@_cdecl("pmll_transaction_abort")
public func cTransactionAbort(_ handle: OpaquePointer?) -> CPM_Result {
    CResult.run { () throws(CFailure) -> CPM_Result in
        _ = try CTransaction.from(handle)
        CTransaction.end(handle!)
        return CResult.success
    }
}
