#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import FoundationEssentials
import PMLL

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Show, verify, seal and prune the pool's audit log.",
        discussion: """
            Every hardened operation, commit, file batch, owner death, timeout, hierarchy \
            violation and administrative action leaves a record: appended to a ring in the pool, \
            drained into hash-chained files in POOL.audit/. Docs/Audit.md.

            \(ExitStatus.summary)
            """,
        subcommands: [AuditShow.self, AuditVerify.self, AuditSeal.self, AuditPrune.self]
    )
}

struct AuditShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Print the audit log's records.")

    @OptionGroup var poolArguments: PoolArguments
    @Flag(help: "Print each record as its JSON line.") var json = false
    @Flag(help: "Keep printing records as they are appended (until interrupted).") var follow = false
    @Option(help: ArgumentHelp("Only records from this sequence number, or from this long ago (30s, 10m, 2h, 1d).", valueName: "SEQ|AGE")) var since: String?

    func validate() throws {
        if let since, Self.parseSince(since) == nil { throw ValidationError("--since takes a sequence number or an age such as 30s, 10m, 2h or 1d") }
    }

    enum Since: Equatable { case seq(UInt64), age(Int64) }

    static func parseSince(_ text: String) -> Since? {
        if let n = UInt64(text) { return .seq(n) }
        guard let unit = text.last, let n = Int64(text.dropLast()), n >= 0 else { return nil }
        let scale: Int64? = switch unit { case "s": 1; case "m": 60; case "h": 3600; case "d": 86400; default: nil }
        return scale.map { .age(n * $0 * 1_000_000_000) }
    }

    func run() throws {
        let (pool, path) = try AuditSource.open(poolArguments)
        var next: UInt64 = 0
        var oldest: Int64 = .min
        switch since.flatMap(Self.parseSince) {
        case .seq(let n): next = n
        case .age(let ns): oldest = Int64(Date().timeIntervalSince1970 * 1e9) - ns
        case nil: break
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        while true {
            let records = try pool?.auditRecords(since: next) ?? AuditLog.records(directory: AuditLog.directory(ofPool: path), since: next)
            for record in records where record.timeNanoseconds >= oldest {
                if json {
                    print(String(decoding: try encoder.encode(record), as: UTF8.self))
                } else {
                    print(Self.text(record))
                }
                next = record.seq + 1
            }
            guard follow else { return }
            fflush(nil)
            usleep(200_000)
        }
    }

    static func text(_ r: AuditRecord) -> String {
        let seconds = r.timeNanoseconds / 1_000_000_000
        var t = time_t(seconds), tm = tm()
        gmtime_r(&t, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let millis = (r.timeNanoseconds / 1_000_000) % 1000
        let ms = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        let when = "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))T\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec)).\(ms)Z"
        let who = r.pid == 0 ? "-" : "pid \(r.pid) (\(r.command)) uid \(r.uid)"
        return "#\(r.seq) \(when) \(who) \(r.event) \(r.outcome): \(r.object)"
    }
}

struct AuditVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the audit log's hash chain and signed checkpoints.",
        discussion: """
            Exit 0 when every file continues the one before, every record has the next number \
            and matches its hash, and every checkpoint's signature and head are right; exit 65 \
            naming the first bad record, file or missing range. --key checks the checkpoints \
            against a public key kept elsewhere (the seal.pub beside the files proves nothing \
            against someone who could rewrite the directory).
            """
    )

    @OptionGroup var poolArguments: PoolArguments
    @Option(help: ArgumentHelp("The public key to check checkpoints with (default POOL.audit/seal.pub).", valueName: "FILE")) var key: String?
    @Flag(help: "Print the result as JSON.") var json = false

    func run() throws {
        if let key, access(key, R_OK) != 0 {
            throw CommandFailure(message: "cannot read public key '\(key)': \(String(cString: strerror(errno)))", status: ExitStatus.noPool)
        }
        var publicKey: [UInt8]?
        if let key {
            guard let found = try AuditLog.publicKey(file: key) else {
                throw CommandFailure(message: "'\(key)' is not a public key (64 hex digits, as seal.pub holds)", status: ExitStatus.usage)
            }
            publicKey = found
        }
        let (pool, path) = try AuditSource.open(poolArguments)
        let v = try pool?.verifyAuditLog(publicKey: publicKey) ?? AuditLog.verify(directory: AuditLog.directory(ofPool: path), publicKey: publicKey)
        if json {
            try printJSON(Summary(v))
        } else if v.problem == nil {
            print("audit log of \(path): \(v.records) record(s) in \(v.files) file(s)" + (v.lastSeq.map { ", #\(v.firstSeq ?? 0)–#\($0)" } ?? "")
                  + ", \(v.gaps) gap(s), \(v.checkpoints) signed checkpoint(s) verified"
                  + (v.prunedThrough.map { "; records #1–#\($0) were pruned (a signed checkpoint of #\($0) stands in for them)" } ?? ""))
        }
        if let problem = v.problem { throw PMLLError.auditLogDamaged(path: path, problem: problem) }
    }

    struct Summary: Encodable {
        let ok: Bool, files: Int, records: UInt64, gaps: Int, firstSeq: UInt64?, lastSeq: UInt64?, head: String?, checkpoints: Int
        let prunedThrough: UInt64?, problem: String?
        init(_ v: AuditVerification) {
            ok = v.problem == nil; files = v.files; records = v.records; gaps = v.gaps; firstSeq = v.firstSeq; lastSeq = v.lastSeq
            head = v.head; checkpoints = v.checkpoints; prunedThrough = v.prunedThrough; problem = v.problem
        }
    }
}

struct AuditSeal: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "seal",
        abstract: "Sign a checkpoint of the audit log (the pool's owner only).",
        discussion: """
            Drains the ring, verifies the chain and appends to POOL.audit/checkpoints.log the \
            chain's size and head hash, signed with Ed25519. The key pair is made on first use: \
            seal.key (mode 0600) and seal.pub. Keep a copy of seal.pub and of the latest \
            checkpoint elsewhere: truncation is provable only against a checkpoint kept out of reach.
            """
    )

    @OptionGroup var poolArguments: PoolArguments
    @Flag(help: "Print the checkpoint as JSON.") var json = false

    func run() throws {
        let pool = try poolArguments.open(create: false)
        let c = try pool.sealAuditLog()
        if json { try printJSON(c) } else { print("audit log of \(pool.path) sealed at record #\(c.size), head \(c.head), key \(c.key)") }
    }
}

struct AuditPrune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Remove the oldest audit files, keeping the newest N (the pool's owner only).",
        discussion: """
            Drains the ring and verifies the chain, then signs a checkpoint at every file \
            boundary it cuts and removes the files before the newest N. `verify` then starts at \
            the oldest file left, which continues a signed checkpoint: it proves that the records \
            kept follow the ones removed, not what the removed ones said. Keep removed files \
            (and seal.pub) elsewhere if they may be needed as evidence. Recorded as admin.prune.
            """
    )

    @OptionGroup var poolArguments: PoolArguments
    @Option(help: ArgumentHelp("Audit files to keep, newest first (at least 1).", valueName: "N")) var keep: Int
    @Flag(help: "Print what was removed as JSON.") var json = false

    func validate() throws {
        if keep < 1 { throw ValidationError("--keep must be at least 1 (the file being written)") }
    }

    func run() throws {
        let pool = try poolArguments.open(create: false)
        let pruned = try pool.pruneAuditLog(keepingFiles: keep)
        if json { try printJSON(pruned); return }
        if let first = pruned.files.first, let last = pruned.files.last, let through = pruned.prunedThrough {
            print("audit log of \(pool.path): removed \(pruned.files.count) file(s), \(first)–\(last) (records through #\(through)); verify now starts at #\(through + 1)")
        } else {
            print("audit log of \(pool.path): nothing to prune (\(keep) file(s) or fewer)")
        }
    }
}

/// Where `audit show` and `audit verify` read: the pool, opened (its ring drained into the files
/// first), or the files alone for a user who may read them but not open the pool (another
/// user's pool, or no write permission); records still in the ring are then not seen yet.
enum AuditSource {
    static func open(_ arguments: PoolArguments) throws -> (pool: Pool?, path: String) {
        do {
            let pool = try arguments.open(create: false)
            return (pool, pool.path)
        } catch {
            switch error {
            case .permissionDenied, .foreignOwner:
                let path = PoolPath.resolve(try arguments.path())
                guard access(AuditLog.directory(ofPool: path), R_OK | X_OK) == 0 else { throw error }
                return (nil, path)
            default: throw error
            }
        }
    }
}
