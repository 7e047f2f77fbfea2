package import PMLLCore
import PMLLLocks
import PMLLStore

/// One planned step of an atomic batch, as recorded in its journal (Docs/FileBatches.md).
package struct BatchStep: Equatable {
    package enum Op: UInt8 {
        case write = 1, replace, delete, mkdir, rename, fsync
    }
    package var op: Op
    package var path: String
    package var to: String?
    package var existed: Bool
    package var toExisted: Bool
    package var createdDirs: [String]
    /// For a write or replace that staging applies by exchange (its target existed and no
    /// earlier step touches it): the target's inode number before the batch, which tells
    /// undo whether the exchange happened. 0 otherwise.
    package var oldInode: UInt64 = 0

    package init(op: Op, path: String, to: String?, existed: Bool, toExisted: Bool, createdDirs: [String], oldInode: UInt64 = 0) {
        self.op = op
        self.path = path
        self.to = to
        self.existed = existed
        self.toExisted = toExisted
        self.createdDirs = createdDirs
        self.oldInode = oldInode
    }
}

/// The persistent record of an atomic batch, kept in the state store as `pmll:batch/ID`
/// from before the first change to the tree until its backups are gone.
///
/// Binary rather than JSON: a 200-file journal is about 4 KB instead of 30 KB, and encoding it
/// takes microseconds instead of a millisecond, which showed on tmpfs where the rest of a batch
/// is cheap. Staging names are derived from the id and the step's index, not stored.
package struct BatchJournal: Equatable {
    package enum Phase: UInt8 {
        /// Nothing is final: recovery undoes whatever was done.
        case staging = 1
        /// Every rename and fsync is done: recovery only removes the backups.
        case committed = 2
    }
    package var id: String
    package var root: String
    /// The participant applying the batch; nil once it is left to any recovery.
    package var owner: OwnerToken?
    package var phase: Phase
    package var steps: [BatchStep]

    /// Where step `n` writes its new content before renaming it into place.
    package func temp(_ n: Int) -> String { ".pmll-tmp-\(id)-\(n)" }
    /// Where step `n` keeps what it replaces or deletes until the commit. A step applied by
    /// exchange links its new file here first; the exchange leaves the old one here.
    package func backup(_ n: Int) -> String { ".pmll-bak-\(id)-\(n)" }

    // Layout, little-endian: "PMLB" | version u8 = 2 | phase u8 | owner u32 | id | root |
    // step count u32 | steps. A step: op u8 | flags u8 (1 existed, 2 to existed, 4 has to,
    // 8 has old inode) | path | [to] | [old inode u64] | created-directory count u16 |
    // directories. A string: u16 length | UTF-8. Version 1 (no exchange) is still read.
    private static let magic: [UInt8] = Array("PMLB".utf8)
    private static let version: UInt8 = 2

    package func encoded() -> [UInt8] {
        var out = Self.magic
        out.reserveCapacity(64 + steps.count * 24)
        out.append(Self.version)
        out.append(phase.rawValue)
        Self.put(owner?.rawValue ?? 0, &out)
        Self.put(id, &out)
        Self.put(root, &out)
        Self.put(UInt32(steps.count), &out)
        for step in steps {
            out.append(step.op.rawValue)
            out.append((step.existed ? 1 : 0) | (step.toExisted ? 2 : 0) | (step.to != nil ? 4 : 0) | (step.oldInode != 0 ? 8 : 0))
            Self.put(step.path, &out)
            if let to = step.to { Self.put(to, &out) }
            if step.oldInode != 0 { Self.put(step.oldInode, &out) }
            Self.put(UInt16(step.createdDirs.count), &out)
            for dir in step.createdDirs { Self.put(dir, &out) }
        }
        return out
    }

    /// nil if `bytes` is not a journal this version wrote.
    package init?(decoding bytes: [UInt8]) {
        var reader = Reader(bytes: bytes)
        guard reader.take(4).map(Array.init) == Self.magic, let version = reader.byte(), (1...Self.version).contains(version),
              let phase = reader.byte().flatMap(Phase.init(rawValue:)),
              let owner = reader.u32(), let id = reader.string(), let root = reader.string(),
              let count = reader.u32() else { return nil }
        var steps: [BatchStep] = []
        for _ in 0..<count {
            guard let op = reader.byte().flatMap(BatchStep.Op.init(rawValue:)), let flags = reader.byte(),
                  let path = reader.string() else { return nil }
            var to: String?
            if flags & 4 != 0 { guard let t = reader.string() else { return nil }; to = t }
            var oldInode: UInt64 = 0
            if flags & 8 != 0 { guard let i = reader.integer(UInt64.self), i != 0 else { return nil }; oldInode = i }
            guard let dirCount = reader.u16() else { return nil }
            var dirs: [String] = []
            for _ in 0..<dirCount { guard let d = reader.string() else { return nil }; dirs.append(d) }
            steps.append(BatchStep(op: op, path: path, to: to, existed: flags & 1 != 0, toExisted: flags & 2 != 0, createdDirs: dirs, oldInode: oldInode))
        }
        guard reader.atEnd else { return nil }
        self.init(id: id, root: root, owner: owner == 0 ? nil : OwnerToken(rawValue: owner), phase: phase, steps: steps)
    }

    package init(id: String, root: String, owner: OwnerToken?, phase: Phase, steps: [BatchStep]) {
        self.id = id
        self.root = root
        self.owner = owner
        self.phase = phase
        self.steps = steps
    }

    private static func put<T: FixedWidthInteger>(_ value: T, _ out: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) }
    }

    /// Paths are at most PATH_MAX bytes (validated), so a u16 length holds them.
    private static func put(_ string: String, _ out: inout [UInt8]) {
        put(UInt16(string.utf8.count), &out)
        out.append(contentsOf: string.utf8)
    }

    private struct Reader {
        let bytes: [UInt8]
        var offset = 0

        var atEnd: Bool { offset == bytes.count }

        mutating func take(_ n: Int) -> ArraySlice<UInt8>? {
            guard n <= bytes.count - offset else { return nil }
            defer { offset += n }
            return bytes[offset..<offset + n]
        }

        mutating func byte() -> UInt8? { take(1)?.first }

        mutating func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
            guard let raw = take(MemoryLayout<T>.size) else { return nil }
            return raw.reversed().reduce(T.zero) { $0 << 8 | T($1) }
        }

        mutating func u16() -> UInt16? { integer(UInt16.self) }
        mutating func u32() -> UInt32? { integer(UInt32.self) }

        mutating func string() -> String? {
            guard let n = u16(), let raw = take(Int(n)) else { return nil }
            return String(validating: raw, as: UTF8.self)
        }
    }
}
