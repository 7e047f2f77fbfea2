import CPMLL
import FoundationEssentials
import PMLLCore
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Reading, verifying and sealing the audit files of a pool (`POOL.audit/`; format in
/// Docs/Audit.md). These read files only: a user who may read the directory verifies the log
/// without opening the pool.
public enum AuditLog {
    public static func directory(ofPool path: String) -> String { AuditLine.directory(ofPool: path) }
    static let checkpointsFile = "checkpoints.log"
    static let secretKeyFile = "seal.key"
    static let publicKeyFile = "seal.pub"
    static let signatureMarker = Array(#","signature":""#.utf8)

    /// The audit files of `directory`, by number.
    static func files(_ directory: String) throws(PMLLError) -> [(index: UInt64, path: String)] {
        guard let dir = opendir(directory) else {
            if errno == ENOENT { return [] }
            throw SystemCall.fileError(.current, path: directory, operation: "read the audit directory")
        }
        defer { closedir(dir) }
        var found: [(UInt64, String)] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasSuffix(".log"), let index = UInt64(name.dropLast(4)), AuditLine.fileName(index) == name else { continue }
            found.append((index, directory + "/" + name))
        }
        return found.sorted { $0.0 < $1.0 }
    }

    static func readFile(_ path: String) throws(PMLLError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCall.fileError(.current, path: path, operation: "open") }
        defer { close(fd) }
        var out = [UInt8](), chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw SystemCall.fileError(.current, path: path, operation: "read") }
            if n == 0 { return out }
            out += chunk[..<n]
        }
    }

    static func lines(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        bytes.split(separator: 10, omittingEmptySubsequences: false).dropLast(bytes.last == 10 ? 1 : 0).map { $0 }
    }

    /// Every record in the files, in order, from `since` (a sequence number) on.
    public static func records(directory: String, since: UInt64 = 0) throws(PMLLError) -> [AuditRecord] {
        var out: [AuditRecord] = []
        let decoder = JSONDecoder()
        for file in try files(directory) {
            for line in lines(try readFile(file.path)).dropFirst() {
                guard let record = try? decoder.decode(AuditRecord.self, from: Data(line)), record.seq >= since else { continue }
                out.append(record)
            }
        }
        return out
    }

    public static func checkpoints(directory: String) throws(PMLLError) -> [AuditCheckpoint] {
        let path = directory + "/" + checkpointsFile
        guard access(path, F_OK) == 0 else { return [] }
        let decoder = JSONDecoder()
        return lines(try readFile(path)).compactMap { try? decoder.decode(AuditCheckpoint.self, from: Data($0)) }
    }

    /// Checks the whole chain: every file continues the previous one, every record has the
    /// next number and matches its hash, every checkpoint's signature is valid (with
    /// `publicKey`, default the directory's `seal.pub`) and its head is the chain's hash at
    /// its size. Stops at the first problem.
    public static func verify(directory: String, publicKey: [UInt8]? = nil) throws(PMLLError) -> AuditVerification {
        var v = AuditVerification()
        let allFiles = try files(directory)
        let checkpoints = try checkpoints(directory: directory)
        var wanted: [UInt64: AuditCheckpoint] = [:]
        for c in checkpoints { wanted[c.size] = c }
        var expected: UInt64?
        var previous = AuditLine.zeroHash
        var fileIndexExpected: UInt64?
        fileLoop: for file in allFiles {
            let name = AuditLine.fileName(file.index)
            if let e = fileIndexExpected, file.index != e {
                v.problem = "audit file \(AuditLine.fileName(e)) is missing (records between \(name)'s predecessor and it are gone)"
                break
            }
            fileIndexExpected = file.index + 1
            v.files += 1
            let bytes = try readFile(file.path)
            if !bytes.isEmpty && bytes.last != 10 {
                v.problem = "\(name): the last line is incomplete (a drain was interrupted; opening the pool repairs it)"
                break
            }
            let all = lines(bytes)
            guard let header = all.first, let previousSeq = AuditLine.integer("previous_seq", in: header),
                  let previousHashText = AuditLine.plainString("previous_hash", in: header),
                  let previousHash = AuditLine.unhex(previousHashText), previousHash.count == 32,
                  AuditLine.integer("file", in: header) == Int64(file.index) else {
                v.problem = "\(name): its header line is missing or damaged"
                break
            }
            if let e = expected {
                guard UInt64(previousSeq) == e - 1, previousHash == previous else {
                    v.problem = "\(name) does not continue the file before it (it follows record \(previousSeq), the chain is at record \(e - 1))"
                    break
                }
            } else {
                if previousSeq != 0 {
                    // Pruned: a checkpoint of that size and head stands in for the records
                    // before (its signature is checked below with every other checkpoint).
                    guard let anchor = wanted[UInt64(previousSeq)], anchor.head == AuditLine.hex(previousHash) else {
                        v.problem = "records 1–\(previousSeq) are missing (the files before \(name) are gone, and no signed checkpoint of record \(previousSeq) stands in for them)"
                        break
                    }
                    v.prunedThrough = UInt64(previousSeq)
                }
                previous = previousHash
                expected = UInt64(previousSeq) + 1
            }
            for (offset, line) in all.dropFirst().enumerated() {
                let at = "\(name) line \(offset + 2)"
                let want = expected!
                guard let split = AuditLine.find(AuditLine.hashMarker, in: line, last: true),
                      let seq = AuditLine.integer("seq", in: line[..<split]),
                      let stored = AuditLine.unhex(String(decoding: line[(split + AuditLine.hashMarker.count)...].prefix { $0 != 34 }, as: UTF8.self)),
                      stored.count == 32 else {
                    v.problem = "record \(want) (\(at)) is damaged: it cannot be read"
                    break fileLoop
                }
                if UInt64(seq) != want {
                    let later = all.dropFirst(offset + 2).contains { AuditLine.integer("seq", in: $0) == Int64(want) }
                    v.problem = UInt64(seq) < want || later
                        ? "record \(seq) (\(at)) is out of order: record \(want) was expected"
                        : "\(range(want, UInt64(seq) - 1)) missing (before \(at))"
                    break fileLoop
                }
                let body = Array(line[..<split])
                guard AuditLine.chain(previous: previous, body: body) == stored else {
                    v.problem = "record \(seq) (\(at)) does not match its hash: it was altered"
                    break fileLoop
                }
                if AuditLine.plainString("event", in: line[..<split]) == AuditEvent.gap.description { v.gaps += 1 }
                previous = stored
                v.firstSeq = v.firstSeq ?? want
                v.lastSeq = want
                v.records += 1
                if let c = wanted[want], c.head != AuditLine.hex(stored) {
                    v.problem = "record \(want) (\(at)) is not the one the checkpoint of \(c.timeNanoseconds / 1_000_000_000) signed: the chain was rewritten"
                    break fileLoop
                }
                expected = want + 1
            }
        }
        v.head = v.lastSeq == nil ? nil : AuditLine.hex(previous)
        if v.problem != nil { return v }
        let key = publicKey ?? (try? readKey(directory + "/" + publicKeyFile, bytes: 32)) ?? nil
        for c in checkpoints {
            guard let key else {
                v.problem = "checkpoints exist but there is no public key to check them (\(publicKeyFile) is missing)"
                return v
            }
            guard verifyCheckpoint(c, publicKey: key) else {
                v.problem = "the checkpoint of size \(c.size) has a bad signature (or another key signed it)"
                return v
            }
            v.checkpoints += 1
            if c.size > (v.lastSeq ?? 0) {
                v.problem = "\(range((v.lastSeq ?? 0) + 1, c.size)) missing: the log was truncated (a checkpoint covers \(c.size) records)"
                return v
            }
        }
        return v
    }

    static func range(_ a: UInt64, _ b: UInt64) -> String { a == b ? "record \(a) is" : "records \(a)–\(b) are" }

    // MARK: checkpoints

    static func checkpointBody(size: UInt64, head: String, time: Int64, pool: String, key: String) -> [UInt8] {
        Array((#"{"size":"# + String(size) + #","head":""# + head + #"","time_ns":"# + String(time) + #","pool":"# + AuditLine.quoted(pool)
               + #","key":""# + key + "\"").utf8)
    }

    static func keyID(_ publicKey: [UInt8]) -> String {
        var digest = [UInt8](repeating: 0, count: 64)
        _ = pmll_blake2b512(&digest, publicKey, UInt64(publicKey.count))
        return AuditLine.hex(Array(digest.prefix(8)))
    }

    static func verifyCheckpoint(_ c: AuditCheckpoint, publicKey: [UInt8]) -> Bool {
        guard pmll_sign_init() == 0, c.key == keyID(publicKey), let signature = AuditLine.unhex(c.signature), signature.count == 64 else { return false }
        let body = checkpointBody(size: c.size, head: c.head, time: c.timeNanoseconds, pool: c.pool, key: c.key)
        return pmll_ed25519_verify(signature, body, UInt64(body.count), publicKey) == 1
    }

    /// A public key file as `pmll audit seal` writes it (`seal.pub`: 64 hex digits).
    /// nil when the file does not hold one.
    public static func publicKey(file path: String) throws(PMLLError) -> [UInt8]? { try readKey(path, bytes: 32) }

    /// The key in a key file (hex), or nil when the file holds something else.
    static func readKey(_ path: String, bytes: Int) throws(PMLLError) -> [UInt8]? {
        let text = String(decoding: try readFile(path), as: UTF8.self).filter { !$0.isWhitespace }
        guard let key = AuditLine.unhex(text), key.count == bytes else { return nil }
        return key
    }

    /// Writes a signed checkpoint of the chain as the files hold it now (call after a drain).
    /// The key pair is made on first use: `seal.key` readable by its owner only, `seal.pub`
    /// beside it. Only the pool's owner may seal.
    static func seal(directory: String, poolPath: String, owner: UInt32) throws(PMLLError) -> AuditCheckpoint {
        guard geteuid() == owner else { throw .permissionDenied(path: directory, operation: "seal the audit log of (only the pool's owner, uid \(owner), may)") }
        let (secret, publicKey) = try keyPair(directory: directory, poolPath: poolPath)
        let chain = try verify(directory: directory, publicKey: publicKey)
        if let problem = chain.problem { throw .auditLogDamaged(path: poolPath, problem: problem) }
        guard let size = chain.lastSeq, let head = chain.head else {
            throw .auditLogDamaged(path: poolPath, problem: "there is nothing to seal yet (no records)")
        }
        return try sign(size: size, head: head, directory: directory, poolPath: poolPath, secret: secret, publicKey: publicKey)
    }

    /// The pool's signing key pair, made on first use: `seal.key` readable by its owner only,
    /// `seal.pub` beside it.
    static func keyPair(directory: String, poolPath: String) throws(PMLLError) -> (secret: [UInt8], publicKey: [UInt8]) {
        guard pmll_sign_init() == 0 else { throw .systemCall(name: "sodium_init", errno: .ioError) }
        let secretPath = directory + "/" + secretKeyFile, publicPath = directory + "/" + publicKeyFile
        var secret: [UInt8], publicKey: [UInt8]
        if access(secretPath, F_OK) == 0 {
            guard let key = try readKey(secretPath, bytes: 64) else {
                throw .auditLogDamaged(path: poolPath, problem: "\(secretPath) is not a 64-byte secret key in hex")
            }
            secret = key
            publicKey = Array(secret[32...])
        } else {
            secret = [UInt8](repeating: 0, count: 64)
            publicKey = [UInt8](repeating: 0, count: 32)
            guard pmll_ed25519_keypair(&publicKey, &secret) == 0 else { throw .systemCall(name: "crypto_sign_keypair", errno: .ioError) }
            try writeNew(secretPath, Array((AuditLine.hex(secret) + "\n").utf8), mode: 0o600)
            try writeNew(publicPath, Array((AuditLine.hex(publicKey) + "\n").utf8), mode: 0o644)
        }
        return (secret, publicKey)
    }

    /// Appends a checkpoint of `size` records whose last hash is `head`, signed, to
    /// `checkpoints.log` (synced before it returns).
    static func sign(size: UInt64, head: String, directory: String, poolPath: String, secret: [UInt8], publicKey: [UInt8]) throws(PMLLError) -> AuditCheckpoint {
        let key = keyID(publicKey), time = Clock.realtimeNanoseconds
        let body = checkpointBody(size: size, head: head, time: time, pool: poolPath, key: key)
        var signature = [UInt8](repeating: 0, count: 64)
        guard pmll_ed25519_sign(&signature, body, UInt64(body.count), secret) == 0 else { throw .systemCall(name: "crypto_sign_detached", errno: .ioError) }
        try appendLine(directory + "/" + checkpointsFile, body + signatureMarker + Array((AuditLine.hex(signature) + "\"}\n").utf8))
        return AuditCheckpoint(size: size, head: head, timeNanoseconds: time, pool: poolPath, key: key, signature: AuditLine.hex(signature))
    }

    /// Removes the oldest audit files, keeping the newest `keepFiles` (at least 1: the file
    /// being written). The chain must verify first. Before any file goes, every file boundary
    /// to be cut gets a signed checkpoint of its size and head (unless one exists), so that
    /// the oldest file left, whichever it is after a crash in the middle, continues a signed
    /// checkpoint: `verify` accepts that in place of the records before it. Only the pool's
    /// owner may prune (it signs).
    static func prune(directory: String, poolPath: String, owner: UInt32, keepFiles: Int) throws(PMLLError) -> AuditPruning {
        guard geteuid() == owner else { throw .permissionDenied(path: directory, operation: "prune the audit log of (only the pool's owner, uid \(owner), may)") }
        guard keepFiles >= 1 else { throw .invalidOptions(reason: "an audit prune must keep at least 1 file (the one being written), not \(keepFiles)") }
        let all = try files(directory)
        guard all.count > keepFiles else { return AuditPruning(files: [], prunedThrough: nil) }
        let (secret, publicKey) = try keyPair(directory: directory, poolPath: poolPath)
        let chain = try verify(directory: directory, publicKey: publicKey)
        if let problem = chain.problem { throw .auditLogDamaged(path: poolPath, problem: problem) }
        let doomed = all.prefix(all.count - keepFiles)
        // Each cut: the header of the file after a doomed one names the doomed one's last record.
        var anchors: [(seq: UInt64, head: String)] = []
        for file in all[1...doomed.count] {
            guard let header = lines(try readFile(file.path)).first, let seq = AuditLine.integer("previous_seq", in: header),
                  let head = AuditLine.plainString("previous_hash", in: header) else {
                throw .auditLogDamaged(path: poolPath, problem: "\(AuditLine.fileName(file.index)): its header line is missing or damaged")
            }
            anchors.append((UInt64(seq), head))
        }
        let signed = Set(try checkpoints(directory: directory).map { "\($0.size) \($0.head)" })
        for anchor in anchors where anchor.seq > 0 && !signed.contains("\(anchor.seq) \(anchor.head)") {
            _ = try sign(size: anchor.seq, head: anchor.head, directory: directory, poolPath: poolPath, secret: secret, publicKey: publicKey)
        }
        // Oldest first: a crash between two leaves the files after a signed cut.
        for file in doomed {
            guard unlink(file.path) == 0 || errno == ENOENT else { throw SystemCall.fileError(.current, path: file.path, operation: "remove") }
            CrashPoint.hit("audit.pruned-file")
        }
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { fsync(fd); close(fd) }
        return AuditPruning(files: doomed.map { AuditLine.fileName($0.index) }, prunedThrough: anchors.last?.seq)
    }

    static func writeNew(_ path: String, _ bytes: [UInt8], mode: mode_t) throws(PMLLError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw SystemCall.fileError(.current, path: path, operation: "create") }
        defer { close(fd) }
        fchmod(fd, mode)
        guard write(fd, bytes, bytes.count) == bytes.count, fsync(fd) == 0 else { throw SystemCall.fileError(.current, path: path, operation: "write") }
    }

    static func appendLine(_ path: String, _ bytes: [UInt8]) throws(PMLLError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemCall.fileError(.current, path: path, operation: "open") }
        defer { close(fd) }
        guard write(fd, bytes, bytes.count) == bytes.count, fsync(fd) == 0 else { throw SystemCall.fileError(.current, path: path, operation: "write") }
    }
}

extension Pool {
    /// How long an explicit drain (show, verify, seal) waits for another process's drain:
    /// one stopped while holding it would otherwise hold the command up for as long.
    static let explicitDrainWait: Int64 = 10_000_000_000

    /// Moves what the audit ring holds into the audit files; returns how many records.
    /// ``PMLLError/timeout(lock:holder:)`` if another process held the drain for 10 s.
    @discardableResult
    public func drainAuditLog() throws(PMLLError) -> Int {
        guard auditRing != nil else { throw .noAuditLog(path: path) }
        guard let moved = try auditDrain(until: Clock.monotonicNanoseconds + Self.explicitDrainWait) else {
            throw .timeout(lock: "audit drain", holder: nil)
        }
        return moved
    }

    /// The audit log's records from `since` (a sequence number) on, after a drain.
    public func auditRecords(since: UInt64 = 0) throws(PMLLError) -> [AuditRecord] {
        try drainAuditLog()
        return try AuditLog.records(directory: AuditLog.directory(ofPool: path), since: since)
    }

    /// Verifies the audit log after a drain (``AuditLog/verify(directory:publicKey:)``).
    public func verifyAuditLog(publicKey: [UInt8]? = nil) throws(PMLLError) -> AuditVerification {
        try drainAuditLog()
        return try AuditLog.verify(directory: AuditLog.directory(ofPool: path), publicKey: publicKey)
    }

    /// Drains, verifies, then removes the oldest audit files, keeping the newest `keepingFiles`,
    /// each cut anchored by a signed checkpoint (``AuditLog``'s `prune`; the pool's owner only).
    public func pruneAuditLog(keepingFiles: Int) throws(PMLLError) -> AuditPruning {
        try drainAuditLog()
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { throw SystemCall.fileError(.current, path: path, operation: "stat") }
        let pruning = try AuditLog.prune(directory: AuditLog.directory(ofPool: path), poolPath: path, owner: UInt32(st.st_uid), keepFiles: keepingFiles)
        if let first = pruning.files.first, let last = pruning.files.last, let through = pruning.prunedThrough {
            audit(.prune, .ok, "files \(first)–\(last) removed; records through #\(through) are signed checkpoints now")
        }
        return pruning
    }

    /// Drains, verifies and signs a checkpoint of the audit log (the pool's owner only).
    public func sealAuditLog() throws(PMLLError) -> AuditCheckpoint {
        try drainAuditLog()
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { throw SystemCall.fileError(.current, path: path, operation: "stat") }
        let checkpoint = try AuditLog.seal(directory: AuditLog.directory(ofPool: path), poolPath: path, owner: UInt32(st.st_uid))
        audit(.seal, .ok, "checkpoint of \(checkpoint.size) records, head \(checkpoint.head.prefix(16))…")
        return checkpoint
    }
}
