package import CPMLL

/// Writing and checking the checksummed, write-once part of the header.
package enum PoolHeader {
    package static func checksum(_ header: UnsafePointer<pmll_header_t>) -> UInt64 {
        UInt64(pmll_crc32c(0, header, Int(PMLL_HEADER_CHECKED_BYTES)))
    }

    package static func initialize(_ h: UnsafeMutablePointer<pmll_header_t>, layout: PoolLayout, size: Int, flags: UInt32,
                                   storeVersion: UInt32 = PMLL_STORE_VERSION) {
        withUnsafeMutableBytes(of: &h.pointee.magic) { raw in
            for (i, byte) in PMLL_MAGIC.utf8.enumerated() { raw[i] = byte }
        }
        h.pointee.format_version = PMLL_FORMAT_VERSION
        h.pointee.header_size = PMLL_HEADER_SIZE
        h.pointee.pool_size = UInt64(size)
        h.pointee.created_at_ns = UInt64(Clock.realtimeNanoseconds)
        h.pointee.creator_uid = ProcessIdentity.effectiveUID
        h.pointee.flags = flags
        h.pointee.process_capacity = UInt32(layout.processCapacity)
        h.pointee.lock_capacity = UInt32(layout.lockCapacity)
        h.pointee.process_table = pmll_section_t(offset: UInt64(layout.processTable.lowerBound), size: UInt64(layout.processTable.count))
        h.pointee.lock_table = pmll_section_t(offset: UInt64(layout.lockTable.lowerBound), size: UInt64(layout.lockTable.count))
        h.pointee.heap = pmll_section_t(offset: UInt64(layout.heap.lowerBound), size: UInt64(layout.heap.count))
        h.pointee.queue_table = pmll_section_t(offset: UInt64(layout.queueTable.lowerBound), size: UInt64(layout.queueTable.count))
        h.pointee.queue_capacity = UInt32(layout.queueCapacity)
        h.pointee.queue_ring = UInt32(layout.queueRing)
        h.pointee.audit_ring = pmll_section_t(offset: UInt64(layout.auditRing.lowerBound), size: UInt64(layout.auditRing.count))
        h.pointee.size_limit = UInt64(layout.sizeLimit)
        h.pointee.layout_signature = pmll_layout_signature_of_store(storeVersion)
        h.pointee.byte_order = PMLL_BYTE_ORDER_MARK
        h.pointee.header_checksum = checksum(h)
    }

    /// Checks a header read from `path` whose file is `fileSize` bytes long. Returns the
    /// layout it describes. Never writes.
    package static func validate(_ h: UnsafePointer<pmll_header_t>, fileSize: Int, path: String) throws(PMLLError) -> PoolLayout {
        let magicMatches = withUnsafeBytes(of: h.pointee.magic) { Array($0) == Array(PMLL_MAGIC.utf8) }
        guard magicMatches else { throw .notAPool(path: path) }
        guard h.pointee.byte_order == 0 || h.pointee.byte_order == PMLL_BYTE_ORDER_MARK else {
            throw .incompatibleLayout(path: path, reason: "it was written on a machine of the other byte order")
        }
        guard h.pointee.format_version == PMLL_FORMAT_VERSION else {
            throw .unsupportedFormatVersion(path: path, found: h.pointee.format_version, supported: PMLL_FORMAT_VERSION)
        }
        guard checksum(h) == h.pointee.header_checksum else {
            throw .corruptPool(path: path, reason: "header checksum mismatch")
        }
        // 0: created before signatures were recorded, by a build of this same format version.
        // A pool whose store has 128-byte key slots (created before 2026-12-05) carries the
        // signature of that store version; its store keeps that width (StoreLayout.read).
        let signature = h.pointee.layout_signature
        guard signature == 0 || signature == pmll_layout_signature() || signature == pmll_layout_signature_of_store(PMLL_STORE_VERSION_NARROW) else {
            throw .incompatibleLayout(path: path, reason: "written by a build whose pool layout differs from this one's (layout signature \(String(signature, radix: 16)), this build \(String(pmll_layout_signature(), radix: 16))); open it with the pmll that created it")
        }
        guard h.pointee.header_size == PMLL_HEADER_SIZE else {
            throw .corruptPool(path: path, reason: "header size \(h.pointee.header_size)")
        }
        let size = Int(clamping: h.pointee.pool_size)
        // Longer is a pool that grew (the state store's directory names what lies beyond).
        guard size <= fileSize else {
            throw .corruptPool(path: path, reason: "file is \(fileSize) bytes, header says \(size) (truncated)")
        }
        let limit = Int(clamping: h.pointee.size_limit)
        guard limit == 0 || (limit >= size && limit <= PoolOptions.maximumSizeLimit) else {
            throw .corruptPool(path: path, reason: "size limit of \(limit) bytes")
        }
        let processCapacity = Int(h.pointee.process_capacity), lockCapacity = Int(h.pointee.lock_capacity)
        let queueCapacity = Int(h.pointee.queue_capacity), queueRing = Int(h.pointee.queue_ring)
        guard (1...Int(PMLL_MAX_PROCESSES)).contains(processCapacity), lockCapacity >= 1, queueCapacity <= 4096,
              (2...65536).contains(queueRing) else {
            throw .corruptPool(path: path, reason: "table capacities out of range")
        }
        let auditBytes = Int(clamping: h.pointee.audit_ring.size)
        guard auditBytes % PoolLayout.page == 0, auditBytes <= size else {
            throw .corruptPool(path: path, reason: "audit ring section of \(auditBytes) bytes")
        }
        let layout = PoolLayout(processCapacity: processCapacity, lockCapacity: lockCapacity, queueCapacity: queueCapacity, queueRing: queueRing,
                                auditBytes: auditBytes, size: size, sizeLimit: limit)
        guard layout.minimumSize <= size,
              h.pointee.process_table.offset == UInt64(layout.processTable.lowerBound),
              h.pointee.process_table.size == UInt64(layout.processTable.count),
              h.pointee.lock_table.offset == UInt64(layout.lockTable.lowerBound),
              h.pointee.lock_table.size == UInt64(layout.lockTable.count),
              h.pointee.heap.offset == UInt64(layout.heap.lowerBound),
              h.pointee.heap.size == UInt64(layout.heap.count),
              h.pointee.queue_table.offset == UInt64(layout.queueTable.lowerBound),
              h.pointee.queue_table.size == UInt64(layout.queueTable.count),
              auditBytes == 0 || h.pointee.audit_ring.offset == UInt64(layout.auditRing.lowerBound) else {
            throw .corruptPool(path: path, reason: "section table does not match the capacities")
        }
        return layout
    }
}

