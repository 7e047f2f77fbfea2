import Foundation
import Testing
import PMLL

/// Read-only attach and the access policy (Docs/Security.md), with a second Unix user
/// (`nobody`, through setpriv) where the rule is about users.
@Suite("Access control", .serialized)
struct AccessControlTests {
    static let asRoot = getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")
    /// nobody, with nogroup as its only group.
    static let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"]

    func asNobody(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try run("/usr/bin/setpriv", Self.nobody + [Binaries.pmll] + arguments)
    }

    /// A pool in a directory everyone may enter; its file belongs to root and group nogroup.
    func sharedPool(mode: mode_t) throws -> (Scratch, String) {
        let scratch = Scratch()
        chmod(scratch.path, 0o755)
        let path = scratch.file("shared.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", path, "--group-shared", "installed/zlib=1.3", "cache/a=1"]).status == 0)
        #expect(try run(Binaries.pmll, ["lock", "--pool", path, "--level", "package", "pkg/zlib", "--", "/bin/true"]).status == 0)
        #expect(chown(path, 0, 65534) == 0 && chmod(path, mode) == 0)
        // The audit files of a group-shared pool belong to the pool's group too.
        let audit = path + ".audit"
        #expect(chown(audit, 0, 65534) == 0)
        for name in try FileManager.default.contentsOfDirectory(atPath: audit) { #expect(chown(audit + "/" + name, 0, 65534) == 0) }
        return (scratch, path)
    }

    @Test(.enabled(if: asRoot))
    func aReaderSeesThePoolThroughAReadOnlyAttachAndChangesNoByte() throws {
        let (scratch, path) = try sharedPool(mode: 0o640)
        _ = scratch
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        let auditBefore = try Data(contentsOf: URL(fileURLWithPath: path + ".audit/000001.log"))
        var r = try asNobody(["status", "--pool", path])
        #expect(r.status == 0 && r.stdout.contains("(read-only view)") && r.stdout.contains("pkg/zlib"), "\(r)")
        r = try asNobody(["status", "--pool", path, "--json"])
        #expect(r.status == 0 && r.stdout.contains("\"readOnlyView\" : true"), "\(r)")
        r = try asNobody(["check", "--pool", path])
        #expect(r.status == 0 && r.stdout.hasSuffix("ok"), "\(r)")
        r = try asNobody(["state", "get", "--pool", path, "installed/zlib"])
        #expect(r.status == 0 && r.stdout == "1.3", "\(r)")
        r = try asNobody(["state", "list", "--pool", path])
        #expect(r.status == 0 && r.stdout == "cache/a=1\ninstalled/zlib=1.3", "\(r)")
        r = try asNobody(["audit", "verify", "--pool", path])
        #expect(r.status == 0, "\(r)")
        r = try asNobody(["policy", "show", "--pool", path])
        #expect(r.status == 0 && r.stdout.hasPrefix("no access policy"), "\(r)")
        // What writes is refused with the file's own reason.
        r = try asNobody(["lock", "--pool", path, "--level", "package", "pkg/zlib", "--", "/bin/true"])
        #expect(r.status == 77 && r.stderr.hasPrefix("pmll: permission denied"), "\(r)")
        r = try asNobody(["state", "set", "--pool", path, "a=2"])
        #expect(r.status == 77, "\(r)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before, "the pool file changed")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path + ".audit/000001.log")) == auditBefore, "the audit file changed")
    }

    @Test func aReadOnlyAttachRefusesEveryWriteWithATypedError() throws {
        let scratch = Scratch()
        let path = scratch.file("ro.pool")
        do {
            let pool = try Pool.open(path: path)
            try pool.transaction { tx in try tx.set("k", "v") }
            try pool.lock(named: "l", level: .package).withLock { _ in }
        }
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        var options = PoolOptions()
        options.readOnly = true
        do {
            let pool = try Pool.open(path: path, options: options)
            #expect(pool.isReadOnly)
            #expect(try pool.value(for: "k") == Array("v".utf8))
            #expect(try pool.transaction { tx in try tx.keys() } == ["k"])
            #expect(try pool.check().ok)
            #expect(pool.status().locks.map(\.name).contains("l"))
            let lock = try pool.lock(named: "l", level: .package)
            #expect(throws: PMLLError.readOnlyPool(path: path, operation: "take lock 'l' (package)")) { try lock.withLock { _ in } }
            #expect(throws: PMLLError.readOnlyPool(path: path, operation: "take lock 'l' (package) shared")) { try lock.withSharedLock { _ in } }
            #expect(throws: PMLLError.readOnlyPool(path: path, operation: "create lock 'new'")) { try pool.lock(named: "new", level: .package) }
            #expect(throws: PMLLError.readOnlyPool(path: path, operation: "commit a transaction")) { try pool.transaction { tx in try tx.set("k", "w") } }
            #expect(throws: PMLLError.readOnlyPool(path: path, operation: "use queue 'q'")) { try pool.queue(named: "q") }
            #expect(throws: PMLLError.readOnlyPool(path: path, operation: "change the access policy")) { try pool.setAccessPolicy(AccessPolicy()) }
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before, "a read-only attach wrote to the pool file")
        // Never creates.
        #expect(throws: PMLLError.poolNotFound(path: scratch.file("missing.pool"))) { try Pool.open(path: scratch.file("missing.pool"), options: options) }
    }

    /// A reader takes no lock (a read-only attach never does; a read-write participant's point
    /// reads are optimistic): it must still never see half of a commit, nor reads from two
    /// different states in one transaction.
    @Test(arguments: [true, false])
    func aReaderWithoutTheLockNeverSeesHalfACommit(readOnly: Bool) throws {
        // On tmpfs, where a commit has no barriers to wait for, so that commits are short and
        // many and the reader's attempts overlap their writes.
        let path = "/dev/shm/pmll-seq-\(getpid())-\(readOnly).pool"
        defer { unlink(path); try? FileManager.default.removeItem(atPath: path + ".audit") }
        let writer = try Pool.open(path: path)
        try writer.transaction { tx in for i in 0..<8 { try tx.set("acct/\(i)", "100") } }
        let child = try Child.worker("bank", "--pool", path, "--accounts", "8", "--seconds", "3", "--lockless")
        _ = child.waitForEvent("started")
        defer { child.kill(); _ = child.wait() }
        var options = PoolOptions()
        options.readOnly = readOnly
        let reader = try Pool.open(path: path, options: options)
        if !readOnly { reader.store.optimisticReadsOnly.store(true, ordering: .relaxed) }
        var reads = 0, states = Set<[String]>()
        let end = Date().addingTimeInterval(2)
        while Date() < end {
            // Retried until it gets through: the writer commits every few microseconds here.
            let patient = TransactionOptions(retry: RetryPolicy(maxRetries: 10_000, baseDelay: .microseconds(20), maxDelay: .milliseconds(2)))
            let balances = try reader.transaction(options: patient) { tx in try (0..<8).map { try tx.getString("acct/\($0)") ?? "?" } }
            let total = balances.reduce(0) { $0 + (Int($1) ?? -100_000) }
            #expect(total == 800, "inconsistent read: \(balances)")
            if total != 800 { break }
            states.insert(balances)
            reads += 1
        }
        #expect(reads > 50 && states.count > 10, "\(reads) reads saw \(states.count) states: the writer was not running")
    }

    @Test(.enabled(if: asRoot))
    func aSecondUserIsDeniedAndAllowedRuleByRule() throws {
        let (scratch, path) = try sharedPool(mode: 0o660)
        let tree = scratch.file("tree"), opt = scratch.file("opt")
        for dir in [tree, opt] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            #expect(chown(dir, 65534, 65534) == 0)
        }
        let policy = scratch.file("policy.json")
        try """
        {"rules": [
          {"name": "registry-admins", "action": "lock", "match": "registry*", "users": ["root"]},
          {"name": "packagers", "action": "lock", "match": "pkg/*", "level": "package", "groups": ["nogroup"]},
          {"name": "installed-by-root", "action": "state", "match": "installed/*", "users": [0]},
          {"name": "opt-tree", "action": "batch", "match": "\(opt)", "users": ["root"]},
          {"name": "recovery", "action": "recover", "users": ["root"]}
        ]}
        """.write(toFile: policy, atomically: true, encoding: .utf8)
        var r = try asNobody(["policy", "set", "--pool", path, policy])
        #expect(r.status == 77 && r.stderr.hasPrefix("pmll: permission denied by policy rule 'owner-only'"), "only the owner sets the first policy: \(r)")
        r = try run(Binaries.pmll, ["policy", "set", "--pool", path, policy])
        #expect(r.status == 0, "\(r)")
        r = try run(Binaries.pmll, ["policy", "show", "--pool", path])
        #expect(r.stdout.contains("registry-admins") && r.stdout.contains("nogroup"), "\(r.stdout)")

        /// `--pool PATH` after the subcommand's words (before a `--` and its COMMAND).
        func withPool(_ arguments: [String]) -> [String] {
            let words = arguments.prefix { !$0.hasPrefix("-") }.count
            return Array(arguments.prefix(min(words, 2))) + ["--pool", path] + Array(arguments.dropFirst(min(words, 2)))
        }
        func denied(_ arguments: [String], rule: String) throws {
            let r = try asNobody(withPool(arguments))
            #expect(r.status == 77, "\(arguments): \(r)")
            #expect(r.stderr.hasPrefix("pmll: permission denied by policy rule '\(rule)': uid 65534 may not "), "\(r.stderr)")
        }
        func allowed(_ arguments: [String], as root: Bool = false) throws {
            let r = root ? try run(Binaries.pmll, withPool(arguments)) : try asNobody(withPool(arguments))
            #expect(r.status == 0, "\(arguments): \(r)")
        }
        let batch = scratch.file("b.json")
        try #"[{"op": "write", "path": "f", "data": "x"}]"#.write(toFile: batch, atomically: true, encoding: .utf8)
        try denied(["lock", "--level", "registry", "registry-index", "--", "/bin/true"], rule: "registry-admins")
        try allowed(["lock", "--level", "registry", "registry-index", "--", "/bin/true"], as: true)
        try allowed(["lock", "--level", "registry", "mirror-list", "--", "/bin/true"])   // no rule
        try allowed(["lock", "--level", "package", "pkg/zlib", "--", "/bin/true"])      // by group
        r = try run(Binaries.pmll, ["lock", "--pool", path, "--level", "package", "pkg/zlib", "--", "/bin/true"])
        #expect(r.status == 77 && r.stderr.hasPrefix("pmll: permission denied by policy rule 'packagers': uid 0 may not"), "rules bind the owner too: \(r)")
        try denied(["state", "set", "installed/zlib=2"], rule: "installed-by-root")
        try allowed(["state", "set", "cache/zlib=2"])
        try denied(["batch", "apply", "--root", opt, "--atomic", batch], rule: "opt-tree")
        try allowed(["batch", "apply", "--root", tree, "--atomic", batch])
        try denied(["recover"], rule: "recovery")
        try denied(["policy", "clear"], rule: "owner-only")
        #expect(!FileManager.default.fileExists(atPath: opt + "/f"), "a denied batch wrote")
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", path, "installed/zlib"]).stdout == "1.3")

        // Every denial and the policy change are in the audit log.
        let log = try run(Binaries.pmll, ["audit", "show", "--pool", path]).stdout
        #expect(log.components(separatedBy: "access.denied").count - 1 == 7, "\(log)")
        #expect(log.contains("admin.policy ok: 5 access rule(s)"), "\(log)")
        #expect(try run(Binaries.pmll, ["audit", "verify", "--pool", path]).status == 0)
    }

    /// Rules bind every participant, including the owner's own, and a change reaches a
    /// participant that opened the pool before it (through the header's policy epoch).
    @Test func aPolicyChangeReachesEveryParticipantAndBindsTheOwnerToo() throws {
        let scratch = Scratch()
        let path = scratch.file("policy.pool")
        let admin = try Pool.open(path: path), other = try Pool.open(path: path)
        let lock = try other.lock(named: "registry/index", level: .registry)
        try lock.withLock { _ in }   // allowed, and the decision cached
        try other.transaction { tx in try tx.set("installed/zlib", "1") }
        try admin.setAccessPolicy(AccessPolicy(rules: [
            AccessRule(name: "registry-by-12345", action: .lock, match: "registry/*", users: [12345]),
            AccessRule(name: "installed-by-12345", action: .state, match: "installed/*", users: [12345]),
        ]))
        #expect(throws: PMLLError.accessDenied(operation: "uid \(geteuid()) may not take lock 'registry/index' (registry)", rule: "registry-by-12345")) {
            try lock.withLock { _ in }
        }
        #expect(throws: PMLLError.accessDenied(operation: "uid \(geteuid()) may not take lock 'registry/index' (registry) shared", rule: "registry-by-12345")) {
            try lock.withSharedLock { _ in }
        }
        #expect(throws: PMLLError.accessDenied(operation: "uid \(geteuid()) may not write state key 'installed/zlib'", rule: "installed-by-12345")) {
            try other.transaction { tx in try tx.set("installed/zlib", "2"); try tx.set("cache/x", "1") }
        }
        #expect(try other.value(for: "cache/x") == nil, "a denied transaction wrote part of itself")
        try other.transaction { tx in try tx.set("cache/x", "1") }       // not governed
        try other.lock(named: "other", level: .registry).withLock { _ in }
        // The owner may always change the policy back.
        #expect(throws: PMLLError.self) { try admin.setAccessPolicy(AccessPolicy(rules: [AccessRule(name: "", action: .lock)])) }
        try admin.setAccessPolicy(nil)
        try lock.withLock { _ in }
        #expect(try other.accessPolicy() == nil)
    }

    /// A writer killed between committing a policy and publishing it must not leave a process
    /// that opened the pool before with the old policy.
    @Test func aPolicyWriterKilledAfterItsCommitLeavesNoProcessWithTheOldPolicy() throws {
        let scratch = Scratch()
        let path = scratch.file("killed.pool"), policy = scratch.file("policy.json")
        let pool = try Pool.open(path: path)
        let lock = try pool.lock(named: "secret/x", level: .package)
        try lock.withLock { _ in }   // no policy yet, and the decision cached
        try #"{"rules": [{"name": "not-me", "action": "lock", "match": "secret/*", "users": [12345]}]}"#
            .write(toFile: policy, atomically: true, encoding: .utf8)
        let r = try run(Binaries.pmll, ["policy", "set", "--pool", path, policy], environment: ["PMLL_CRASH_AT": "policy.committed"])
        #expect(r.status == 137, "\(r)")
        #expect(throws: PMLLError.accessDenied(operation: "uid \(geteuid()) may not take lock 'secret/x' (package)", rule: "not-me")) {
            try lock.withLock { _ in }
        }
        // The next change publishes normally, and the decision is cached again.
        try pool.setAccessPolicy(nil)
        try lock.withLock { _ in }
        try lock.withLock { _ in }
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/minisign")))
    func thePolicyRequiresSignaturesForARootAndAKeyPrefix() throws {
        let keys = try SignatureTests.Keys()
        let scratch = keys.scratch
        let path = scratch.file("signed.pool"), tree = scratch.file("tree"), batch = scratch.file("b.json")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        let pool = try Pool.open(path: path)
        let publisher = try MinisignPublicKey(text: String(contentsOfFile: scratch.file("publisher.pub"), encoding: .utf8))
        try pool.setAccessPolicy(AccessPolicy(signatures: [
            SignatureRule(name: "signed-tree", action: .batch, match: tree, keys: [publisher.base64]),
            SignatureRule(name: "signed-index", action: .state, match: "index/*", keys: [publisher.base64]),
        ]))
        try #"[{"op": "write", "path": "f", "data": "x"}]"#.write(toFile: batch, atomically: true, encoding: .utf8)
        func apply(_ extra: [String] = []) throws -> (status: Int32, stdout: String, stderr: String) {
            try run(Binaries.pmll, ["batch", "apply", "--pool", path, "--root", tree, "--atomic"] + extra + [batch])
        }
        // Unsigned: refused, nothing written.
        var r = try apply()
        #expect(r.status == 77 && r.stderr.contains("no signature"), "\(r)")
        // Signed by a key the rule does not list, even when the command line trusts it.
        try keys.sign(batch, as: "stranger")
        r = try apply(["--trusted-key", scratch.file("stranger.pub")])
        #expect(r.status == 77 && r.stderr.contains("rule 'signed-tree'"), "\(r)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: tree).isEmpty)
        // Signed by the policy's key: accepted with no --trusted-key.
        try keys.sign(batch)
        r = try apply()
        #expect(r.status == 0, "\(r)")
        #expect(FileManager.default.fileExists(atPath: tree + "/f"))
        // The library: an unsigned batch for the root is refused before anything is written.
        #expect(throws: PMLLError.signatureRejected(subject: "file batch for root '\(tree)'", reason: "the policy (rule 'signed-tree') requires a minisign signature by one of its keys")) {
            try pool.apply(FileBatch([.write(path: "g", data: Array("y".utf8), mode: 0o644)]), root: tree)
        }
        #expect(!FileManager.default.fileExists(atPath: tree + "/g"))

        // State keys under index/ need a signed value; others do not.
        let value = scratch.file("value")
        try "v1".write(toFile: value, atomically: true, encoding: .utf8)
        try keys.sign(value)
        let signature = try MinisignSignature(text: String(contentsOfFile: value + ".minisig", encoding: .utf8))
        #expect(throws: PMLLError.signatureRejected(subject: "the value of key 'index/zlib'", reason: "the policy (rule 'signed-index') requires a minisign signature by one of its keys")) {
            try pool.transaction { tx in try tx.set("index/zlib", "v1") }
        }
        try pool.transaction { tx in try tx.set("index/zlib", Array("v1".utf8), signature: signature) }
        #expect(try pool.value(for: "index/zlib") == Array("v1".utf8))
        try pool.transaction { tx in try tx.set("cache/zlib", "anything") }
        r = try run(Binaries.pmll, ["state", "set", "--pool", path, "index/zlib=v2"])
        #expect(r.status == 77, "\(r)")
        #expect(try pool.value(for: "index/zlib") == Array("v1".utf8))
    }
}
