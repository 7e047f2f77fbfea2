package import CPMLL
#if canImport(Glibc)
import Glibc
#endif

/// The audit ring in the pool's audit section (layout in cpmll.h): appenders reserve a number,
/// claim its slot, fill it and complete it; ``AuditDrain`` moves complete records, in order,
/// into the hash-chained files. Nothing here makes a system call: an append costs two
/// compare-and-swaps and, unless the pool's file lives in memory only, a CRC32C of the record.
package struct AuditRing: @unchecked Sendable {
    package let header: UnsafeMutablePointer<pmll_audit_ring_t>
    package let slots: UnsafeMutablePointer<pmll_audit_slot_t>
    package let count: UInt64
    /// Whether records may hold numbers as binary (a version 2 ring), which the drain writes
    /// in decimal; a version 1 ring (a pool from an earlier build) holds text only.
    package let binaryNumbers: Bool
    /// Whether records may leave their checksum out (a version 3 ring), and whether this
    /// process's do: its pool file lives in memory only (tmpfs), which no power failure leaves
    /// half-written, and no crash model observes the barriers (those build images of a disk).
    // The checksum was a fifth of an append's cost (a queue round trip's record: about 1.5 of
    // its 9 points, Docs/Benchmarks.md).
    package let readsUnchecked: Bool
    package let writesUnchecked: Bool
    /// How long a reserved number may stay unclaimed before the drainer declares a gap (its
    /// writer died between taking it and claiming its slot: a few instructions). Records
    /// behind it wait in the ring meanwhile, and once the ring is full every appender of the
    /// pool waits too, so it is short: a writer that was only slow (stopped, or off its core
    /// for a second) finds the gap when it claims and appends again with a new number.
    package static let stallNanoseconds: Int64 = 1_000_000_000
    /// Numbers handed out beyond the ring's room that opening still accepts as sane.
    static let maximumWaiting: UInt64 = 1 << 16

    static func headerChecksum(_ h: UnsafePointer<pmll_audit_ring_t>) -> UInt32 {
        pmll_crc32c(0, h, 20)
    }

    /// Writes an empty ring of `slots` slots at `base` (a fresh pool's zeroed section).
    package static func format(_ base: UnsafeMutableRawPointer, slots: Int) {
        let h = base.assumingMemoryBound(to: pmll_audit_ring_t.self)
        withUnsafeMutableBytes(of: &h.pointee.magic) { raw in
            for (i, byte) in PMLL_AUDIT_MAGIC.utf8.enumerated() { raw[i] = byte }
        }
        h.pointee.version = PMLL_AUDIT_VERSION
        h.pointee.slot_count = UInt32(slots)
        h.pointee.slot_size = PMLL_AUDIT_SLOT_SIZE
        h.pointee.checksum = headerChecksum(h)
        h.pointee.next_seq = 1
        h.pointee.drained = 1
        h.pointee.file_index = 0
    }

    /// The ring of `memory`'s pool; nil when the pool has none, or throws when it is damaged.
    package init?(memory: PoolMemory, path: String) throws(PMLLError) {
        let section = memory.layout.auditRing
        guard !section.isEmpty else { return nil }
        let h = (memory.base + section.lowerBound).assumingMemoryBound(to: pmll_audit_ring_t.self)
        let magic = withUnsafeBytes(of: h.pointee.magic) { Array($0) == Array(PMLL_AUDIT_MAGIC.utf8) }
        let n = Int(h.pointee.slot_count)
        let version = h.pointee.version
        if magic && version > PMLL_AUDIT_VERSION && version < 1 << 16 && Self.headerChecksum(h) == h.pointee.checksum {
            throw .corruptPool(path: path, reason: "its audit ring has format version \(version), newer than this build reads (\(PMLL_AUDIT_VERSION_TEXT_ONLY)...\(PMLL_AUDIT_VERSION)): use the build that created the pool")
        }
        guard magic, version >= PMLL_AUDIT_VERSION_TEXT_ONLY, version <= PMLL_AUDIT_VERSION, h.pointee.slot_size == PMLL_AUDIT_SLOT_SIZE,
              Self.headerChecksum(h) == h.pointee.checksum, n > 0, n & (n - 1) == 0,
              MemoryLayout<pmll_audit_ring_t>.size + n * MemoryLayout<pmll_audit_slot_t>.size <= section.count else {
            throw .corruptPool(path: path, reason: "the audit ring's header is damaged")
        }
        // Writers waiting for room hold numbers past the ring; never more than a few per process.
        let drained = h.pointee.drained, next = h.pointee.next_seq
        guard drained >= 1, next >= drained, next - drained <= UInt64(n) + Self.maximumWaiting, h.pointee.file_index < 1 << 40 else {
            throw .corruptPool(path: path, reason: "the audit ring's counters are damaged (drained \(drained), next \(next))")
        }
        header = h
        slots = (UnsafeMutableRawPointer(h) + MemoryLayout<pmll_audit_ring_t>.size).assumingMemoryBound(to: pmll_audit_slot_t.self)
        count = UInt64(n)
        binaryNumbers = version >= PMLL_AUDIT_VERSION_BINARY_NUMBERS
        readsUnchecked = version >= PMLL_AUDIT_VERSION
        writesUnchecked = readsUnchecked && memory.persistence.barriersAreSkipped
    }

    package func slot(_ seq: UInt64) -> UnsafeMutablePointer<pmll_audit_slot_t> { slots + Int(seq & (count - 1)) }

    package var nextSeq: UInt64 { pmll_load64_acquire(pmll_audit_next_seq(header)) }
    package var drained: UInt64 { pmll_load64_acquire(&header.pointee.drained) }
    /// Records appended and not yet in the files.
    package var backlog: UInt64 { nextSeq &- drained }

    /// Whether a drainer holds the drain now, by its hint: then an attempt of ours would
    /// only fail. A hint older than a second is taken for one a dead drainer left.
    package var drainingElsewhere: Bool {
        let since = Int64(bitPattern: pmll_load64_acquire(pmll_audit_draining(header)))
        return since != 0 && Clock.monotonicNanoseconds - since < 1_000_000_000
    }

    /// Sets or clears the hint (the caller holds the drain).
    package func markDraining(_ on: Bool) {
        pmll_store64_release(pmll_audit_draining(header), on ? UInt64(bitPattern: Clock.monotonicNanoseconds) : 0)
    }

    static func state(_ seq: UInt64, _ phase: UInt32) -> UInt64 { seq << 2 | UInt64(phase) }

    /// Maps for writing the pages of the slots the next `records` records will take (the whole
    /// ring when it is smaller: the default's 1,024 slots are 512 KiB, 60 µs on tmpfs), in one
    /// or two system calls (best effort). Bounded because a large ring on a disk would have
    /// every page made writable, and so dirty, at once (65,536 slots are 32 MiB).
    package func mapForWriting(records: Int = 2048) {
        let n = min(Int(count), records)
        let first = Int(nextSeq & (count - 1))
        let run = min(n, Int(count) - first)
        Self.mapForWriting(slots + first, run)
        if n > run { Self.mapForWriting(slots, n - run) }
    }

    private static func mapForWriting(_ from: UnsafeMutablePointer<pmll_audit_slot_t>, _ n: Int) {
        let start = Int(bitPattern: from) / PoolLayout.page * PoolLayout.page
        guard let address = UnsafeMutableRawPointer(bitPattern: start) else { return }
        pmll_populate_for_write(address, PoolLayout.roundUp(Int(bitPattern: from + n)) - start)
    }

    /// True when `seq`'s slot holds that record, complete and intact (its checksum: its number
    /// and every field from `pid` to the end of its text, the checksum itself left out).
    package func isComplete(_ seq: UInt64) -> Bool {
        let s = slot(seq)
        guard pmll_load64_acquire(pmll_audit_slot_state(s)) == Self.state(seq, PMLL_AUDIT_COMPLETE) else { return false }
        let length = s.pointee.text_length
        if length & PMLL_AUDIT_UNCHECKED != 0 {
            return readsUnchecked && length & ~PMLL_AUDIT_UNCHECKED <= PMLL_AUDIT_TEXT_MAX
        }
        return length <= PMLL_AUDIT_TEXT_MAX && s.pointee.checksum == pmll_audit_slot_checksum(s, seq)
    }

    /// Takes the next number, if its slot is free (its previous record is in the files); nil
    /// when the ring is full. A number is taken only with room for it, so that no number is
    /// ever left waiting: between taking it and claiming its slot there are a few instructions.
    /// `guess`: the number this process expects to be next (one past its last), so that the
    /// compare-and-swap can go first: when nobody else appended since, the counter's line
    /// (which the drainer reads) is fetched once, for owning, instead of twice.
    package func reserve(guess: UInt64 = 0) -> UInt64? {
        var n = guess == 0 ? nextSeq : guess
        while true {
            guard n < drained &+ count else {
                // Full, unless the guess was wrong (a pool replaced under us): look again.
                let actual = nextSeq
                if actual == n { return nil }
                n = actual
                continue
            }
            if pmll_cas64(pmll_audit_next_seq(header), &n, n + 1) != 0 { return n }
        }
    }

    /// A command name as a slot holds it: 16 bytes, at most 15 of the name, NUL-padded.
    package struct CommandName: Sendable, ExpressibleByArrayLiteral {
        let low: UInt64, high: UInt64
        package init(_ name: [UInt8]) {
            var field: (UInt64, UInt64) = (0, 0)
            withUnsafeMutableBytes(of: &field) { $0.copyBytes(from: name.prefix(15)) }
            low = UInt64(littleEndian: field.0)
            high = UInt64(littleEndian: field.1)
        }
        package init(arrayLiteral bytes: UInt8...) { self.init(bytes) }
    }

    /// Claims, fills and completes `seq`'s slot. False when the drainer already gave the number
    /// up as a gap (this writer stalled too long): the caller appends again with a new number.
    package func write(_ seq: UInt64, token: OwnerToken, pid: Int32, uid: UInt32, comm: CommandName,
                       event: AuditEvent, outcome: AuditOutcome, time: Int64 = 0, fill: (inout AuditText) -> Void) -> Bool {
        let s = slot(seq)
        // The claim is one compare-and-swap, expecting what the slot nearly always holds (its
        // previous record, drained): loading the state first would wait twice for the line the
        // drainer, on another core, read last (once to share it, once to own it).
        var current = seq >= count ? Self.state(seq - count, PMLL_AUDIT_COMPLETE) : 0
        s.pointee.owner_token = token.rawValue
        s.pointee.pid = pid
        while pmll_cas64(pmll_audit_slot_state(s), &current, Self.state(seq, PMLL_AUDIT_CLAIMED)) == 0 {
            // Something else (a gap, a slot never used): claimable only if from before `seq`.
            guard current >> 2 < seq else { return false }
        }
        CrashPoint.hit("audit.claimed")
        // Who and what before the text: a writer killed while writing the text leaves a gap
        // record that names its uid and command from here. The checksum takes these fields
        // from registers and reads back only the text (a load spanning stores still in the
        // store buffer waits for them).
        let time = time != 0 ? time : Clock.realtimeNanoseconds
        s.pointee.uid = uid
        s.pointee.event = event.rawValue
        s.pointee.outcome = outcome.rawValue
        s.pointee.time_ns = time
        withUnsafeMutableBytes(of: &s.pointee.comm) { raw in
            raw.storeBytes(of: comm.low.littleEndian, as: UInt64.self)
            raw.storeBytes(of: comm.high.littleEndian, toByteOffset: 8, as: UInt64.self)
        }
        var length = 0
        withUnsafeMutableBytes(of: &s.pointee.text) { raw in
            var text = AuditText(raw, binaryNumbers: binaryNumbers)
            fill(&text)
            length = text.finish()
        }
        if writesUnchecked {
            s.pointee.text_length = UInt32(length) | PMLL_AUDIT_UNCHECKED
        } else {
            s.pointee.text_length = UInt32(length)
            s.pointee.checksum = withUnsafeBytes(of: &s.pointee.text) { text in
                pmll_audit_record_checksum(seq, pid, uid, event.rawValue, outcome.rawValue, time, comm.low, comm.high, text.baseAddress, length)
            }
        }
        // A store, not a compare-and-swap: once claimed, the slot changes hands only when its
        // writer is dead (the drainer's gap), and a writer completing it is alive. A locked
        // instruction here would also wait for every store before it to leave the store buffer.
        pmll_store64_release(pmll_audit_slot_state(s), Self.state(seq, PMLL_AUDIT_COMPLETE))
        // The next record's slot, while this one's lines are still being written back: the
        // drainer (another core) read it last, and claiming it would otherwise wait for it.
        pmll_prefetch_for_write(slot(seq + 1), 4)
        return true
    }
}

/// The object of an audit record, written straight into its slot (no String is built on the
/// appending path). Cut at the slot's size, before the character the limit falls in.
// Inlinable: a queue operation's record is eleven pieces (literals, numbers, names), and as
// calls into this module each literal was a closure and a memmove: 8 points of the queue
// round trip's 10 % audit budget, measured. Inlined, a literal is a few stores. Public, not
// package: Swift 6.3 left every call to an `@inlinable package` method a call (measured).
public struct AuditText {
    @usableFromInline let buffer: UnsafeMutableRawBufferPointer
    @usableFromInline var count = 0
    /// Bytes written so far.
    @inlinable public var written: Int { count }
    @usableFromInline var truncated = false
    /// Numbers are written as PMLL_AUDIT_NUMBER_MARK and their 8 bytes (the ring's version 2).
    @usableFromInline let binaryNumbers: Bool
    /// The end of the last number written as binary: a cut never goes back past it.
    @usableFromInline var numbersEnd = 0
    // The mark: a byte UTF-8 never has (0xFF, PMLL_AUDIT_NUMBER_MARK), so text cannot be taken for one.
    @usableFromInline static var numberMark: UInt8 { 0xFF }

    init(_ buffer: UnsafeMutableRawBufferPointer, binaryNumbers: Bool = false) {
        self.buffer = buffer
        self.binaryNumbers = binaryNumbers
    }

    /// Bytes of UTF-8 text (where the number mark, 0xFF, never appears).
    @inlinable @inline(__always)
    public mutating func add(_ bytes: UnsafeRawBufferPointer) {
        let n = bytes.count
        if n <= buffer.count - count {
            // Most pieces are a few bytes: copied with at most two overlapping moves, not a
            // memcpy call through the PLT (five of those were a third of a record's cost).
            let to = buffer.baseAddress! + count
            if n >= 8 && n <= 16 {
                let from = bytes.baseAddress!
                to.storeBytes(of: from.loadUnaligned(as: UInt64.self), as: UInt64.self)
                (to + n - 8).storeBytes(of: from.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self), as: UInt64.self)
            } else if n >= 4 && n < 8 {
                let from = bytes.baseAddress!
                to.storeBytes(of: from.loadUnaligned(as: UInt32.self), as: UInt32.self)
                (to + n - 4).storeBytes(of: from.loadUnaligned(fromByteOffset: n - 4, as: UInt32.self), as: UInt32.self)
            } else if n > 0 && n < 4 {
                for i in 0..<n { to.storeBytes(of: bytes[i], toByteOffset: i, as: UInt8.self) }
            } else if n > 16 {
                to.copyMemory(from: bytes.baseAddress!, byteCount: n)
            }
            count += n
            return
        }
        let room = buffer.count - count
        if room > 0 { (buffer.baseAddress! + count).copyMemory(from: bytes.baseAddress!, byteCount: room) }
        count += room
        truncated = true
    }

    @inlinable @inline(__always)
    public mutating func add(_ text: StaticString) {
        // A one-character literal is held as its scalar, not as a pointer to bytes.
        guard text.hasPointerRepresentation else { return text.withUTF8Buffer { add(UnsafeRawBufferPointer($0)) } }
        add(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    // Disfavoured: a literal then goes through the StaticString overload, which a hot path's
    // records (one per queue operation) are made of, without a String.
    // Inlined, and the string's own bytes when it has them in memory (native strings do): the
    // string passed to a call, or copied into a `var`, was retained and released.
    @_disfavoredOverload @inlinable @inline(__always)
    public mutating func add(_ text: String) {
        if text.utf8.withContiguousStorageIfAvailable({ add(UnsafeRawBufferPointer($0)) }) != nil { return }
        var text = text
        text.withUTF8 { add(UnsafeRawBufferPointer($0)) }
    }

    /// A number. In a version 2 ring, as the mark and its 8 bytes: the drain writes the digits,
    /// on its own thread (three numbers were a fifth of a queue record's cost to its appender).
    @inlinable @inline(__always)
    public mutating func add(_ value: UInt64) {
        if binaryNumbers && buffer.count - count >= 9 {
            let to = buffer.baseAddress! + count
            to.storeBytes(of: Self.numberMark, as: UInt8.self)
            (to + 1).storeBytes(of: value.littleEndian, as: UInt64.self)
            count += 9
            numbersEnd = count
            return
        }
        addDigits(value)
    }

    // A call (CPMLL is not a public import, so an inlinable body cannot reach it): the digits
    // are written by pmll_put_decimal, inlined here. Also where 9 bytes no longer fit: the
    // digits that do.
    @usableFromInline
    mutating func addDigits(_ value: UInt64) {
        if count + pmll_decimal_length(value) <= buffer.count {
            let start = (buffer.baseAddress! + count).assumingMemoryBound(to: CChar.self)
            count += pmll_put_decimal(start, value) - start
            return
        }
        // Cut at the slot's end: the digits that fit.
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)   // room for 20
        withUnsafeMutableBytes(of: &digits) { raw in
            let start = raw.baseAddress!.assumingMemoryBound(to: CChar.self)
            add(UnsafeRawBufferPointer(start: raw.baseAddress!, count: pmll_put_decimal(start, value) - start))
        }
    }

    /// A NUL-terminated name in a fixed-size field of the pool (a record's kind), read in place.
    @inlinable
    public mutating func add(cString field: UnsafeRawPointer, capacity: Int) {
        var length = 0, mark = false
        while length < capacity {
            let byte = field.load(fromByteOffset: length, as: UInt8.self)
            if byte == 0 { break }
            mark = mark || byte == Self.numberMark
            length += 1
        }
        if mark && binaryNumbers { return addReplacingMarks(UnsafeRawBufferPointer(start: field, count: length)) }
        add(UnsafeRawBufferPointer(start: field, count: length))
    }

    /// Bytes that are not UTF-8 (a field of a damaged pool, a C caller's bytes) with the number
    /// mark among them: each mark becomes U+FFFD, so that the drain does not read a number there.
    @usableFromInline
    mutating func addReplacingMarks(_ bytes: UnsafeRawBufferPointer) {
        var start = 0
        for i in bytes.indices where bytes[i] == Self.numberMark {
            add(UnsafeRawBufferPointer(rebasing: bytes[start..<i]))
            add("\u{FFFD}")
            start = i + 1
        }
        add(UnsafeRawBufferPointer(rebasing: bytes[start...]))
    }

    /// The length written, cut back to a character boundary if the limit was reached.
    mutating func finish() -> Int {
        guard truncated else { return count }
        // Back over the last character's continuation bytes, not into a number's 8 bytes.
        var end = count
        while end > numbersEnd && buffer[end - 1] & 0xC0 == 0x80 { end -= 1 }
        guard end > numbersEnd else { return count }
        let lead = buffer[end - 1]
        let width = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
        if count - (end - 1) < width { count = end - 1 }
        return count
    }
}
