import CPMLL
#if canImport(Glibc)
import Glibc
#endif

/// An audit file open for appending: its descriptor, its length as the drain knows it, and
/// its path (for error messages).
struct AuditOpenFile {
    var fd: Int32
    var size: Int
    let path: String
}

/// What one process's drains keep from one drain to the next (under its ``AuditGate``): the
/// audit file the last drain appended to, where it left the chain, and its buffers. While the
/// process drains alone, a drain then opens, reads and parses nothing before its first line:
/// with four processes committing on tmpfs, a drain moved about 100 records, and the directory,
/// open, read of the file's last line and close of each drain cost more per record than the
/// line's format.
package struct AuditDrainSession: ~Copyable {
    private var file: AuditOpenFile?
    private var fileIndex: UInt64 = 0
    private var seq: UInt64 = 0
    private var head: [UInt8] = []
    /// The lines of a drain's step, formatted in place; reused by every drain of the session.
    var lines = AuditLineBuffer()

    package init() {}

    deinit { if let file { close(file.fd) } }

    /// The file the last drain of this session left, if nothing happened to the chain since:
    /// the ring still says what that drain published (another process's drain moves `drained`
    /// or the file index), the file is as long as that drain left it (a drainer of another
    /// process killed between its write and its publish leaves lines the ring does not count:
    /// the full path finds them), and its path still names it (a file someone moved or removed
    /// is replaced where the pool's files belong, as a drain that opens the path does).
    /// Nil otherwise, the file closed.
    mutating func resume(_ h: UnsafeMutablePointer<pmll_audit_ring_t>) -> (file: AuditOpenFile, fileIndex: UInt64, seq: UInt64, head: [UInt8])? {
        guard let kept = file else { return nil }
        file = nil
        var open = stat(), named = stat()
        let same = h.pointee.file_index == fileIndex && h.pointee.drained == seq
            && withUnsafeBytes(of: h.pointee.head_hash, { $0.elementsEqual(head) })
            && fstat(kept.fd, &open) == 0 && Int(open.st_size) == kept.size
            && stat(kept.path, &named) == 0 && named.st_ino == open.st_ino && named.st_dev == open.st_dev
        guard same else {
            close(kept.fd)
            return nil
        }
        return (kept, fileIndex, seq, head)
    }

    /// Keeps `file` open for the next drain, which continues at `seq` after `head`.
    mutating func keep(_ file: AuditOpenFile, fileIndex: UInt64, seq: UInt64, head: [UInt8]) {
        if let old = self.file, old.fd != file.fd { close(old.fd) }
        self.file = file
        self.fileIndex = fileIndex
        self.seq = seq
        self.head = head
    }
}

/// Lines waiting to be written: a drain formats each record straight into it (no copy of each
/// line from a scratch buffer, no array bookkeeping per record) and writes it out a step at a
/// time. Room for a step and one more line of any length.
struct AuditLineBuffer: ~Copyable {
    private let base: UnsafeMutableRawPointer
    private let capacity: Int
    private(set) var count = 0

    init() {
        capacity = AuditDrain.chunkBytes + 2 * Int(PMLL_AUDIT_LINE_MAX)
        base = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit { base.deallocate() }

    var isEmpty: Bool { count == 0 }
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// Where the next line goes: room for PMLL_AUDIT_LINE_MAX bytes, counted once `added` says
    /// how many were written. A step is written out before it reaches `AuditDrain.chunkBytes`,
    /// so the room is always there.
    var next: UnsafeMutablePointer<CChar> {
        precondition(count + Int(PMLL_AUDIT_LINE_MAX) <= capacity, "an audit step outgrew its buffer")
        return (base + count).assumingMemoryBound(to: CChar.self)
    }

    mutating func added(_ length: Int) { count += length }

    mutating func append(_ line: [UInt8]) {
        precondition(count + line.count <= capacity, "an audit step outgrew its buffer")
        line.withUnsafeBytes { (base + count).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        count += line.count
    }

    mutating func removeAll() { count = 0 }
}
