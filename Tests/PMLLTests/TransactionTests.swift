import CPMLL
import Foundation
import PMLL
import Testing

@Suite("Transactions", .serialized)
struct TransactionTests {
    @Test func commitsReadsItsOwnWritesAndAbortsOnThrow() throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("t.pool"))
        try pool.transaction { tx in
            try tx.set("pkg/zlib/status", "installed")
            try tx.set("pkg/zlib/files", String(repeating: "/usr/lib/libz.so\n", count: 200))   // an extent
            #expect(try tx.getString("pkg/zlib/status") == "installed")
            #expect(try tx.keys(prefix: "pkg/zlib/") == ["pkg/zlib/files", "pkg/zlib/status"])
        }
        #expect(try pool.value(for: "pkg/zlib/status") == Array("installed".utf8))
        struct Abort: Error {}
        #expect(throws: Abort.self) {
            try pool.transaction { tx in
                try tx.set("pkg/zlib/status", "removing")
                try tx.delete("pkg/zlib/files")
                throw Abort()
            }
        }
        #expect(try pool.value(for: "pkg/zlib/status") == Array("installed".utf8))
        #expect(try pool.value(for: "pkg/zlib/files")?.count == 17 * 200)
        try pool.transaction { tx in try tx.delete("pkg/zlib/files") }
        #expect(try pool.value(for: "pkg/zlib/files") == nil)
        // Another process sees the committed state.
        let reader = try Pool.open(path: scratch.file("t.pool"))
        #expect(try reader.value(for: "pkg/zlib/status") == Array("installed".utf8))
    }

    /// A transaction's own writes, few (searched in order) and many (indexed past eight): the
    /// last write of a key wins, keeps the key's first place, and a removal reads as absent;
    /// the commit writes each key once, with its last value.
    @Test(arguments: [4, 40])
    func aTransactionReadsItsLastWriteOfEachKey(keys: Int) throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("w.pool"))
        try pool.transaction { tx in try tx.set("gone", "here") }
        try pool.transaction { tx in
            for round in 0..<3 {
                for k in 0..<keys { try tx.set("k\(k)", "\(round)-\(k)") }
            }
            try tx.delete("k1")
            try tx.delete("gone")
            try tx.set("k2", "last")
            #expect(try tx.getString("k0") == "2-0")
            #expect(try tx.get("k1") == nil)
            #expect(try tx.get("gone") == nil)
            #expect(try tx.getString("k2") == "last")
            #expect(try tx.getString("k\(keys - 1)") == "2-\(keys - 1)")
            #expect(try tx.keys(prefix: "k").count == keys - 1)
        }
        #expect(try pool.value(for: "k0") == Array("2-0".utf8))
        #expect(try pool.value(for: "k1") == nil)
        #expect(try pool.value(for: "gone") == nil)
        #expect(try pool.value(for: "k2") == Array("last".utf8))
        #expect(try pool.value(for: "k\(keys - 1)") == Array("2-\(keys - 1)".utf8))
        #expect(try pool.check().problems.isEmpty)
    }

    @Test func badInputAndNesting() throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("b.pool"))
        #expect(throws: PMLLError.nestedTransaction) {
            try pool.transaction { _ in try pool.transaction { _ in } }
        }
        #expect(throws: PMLLError.self) { try pool.transaction { tx in try tx.set("", "x") } }
        #expect(throws: PMLLError.self) { try pool.transaction { tx in try tx.set(String(repeating: "k", count: 256), "x") } }
        #expect(throws: PMLLError.self) { try pool.transaction { tx in try tx.set("a\u{0}b", "x") } }
        #expect(throws: PMLLError.valueTooLarge(key: "big", bytes: (64 << 20) + 1, limit: 64 << 20)) {
            try pool.transaction { tx in try tx.set("big", [UInt8](repeating: 7, count: (64 << 20) + 1)) }
        }
        // Odd but valid keys, and a value of 64 KiB (the limit before the store grew).
        let odd = ["ünïcödé/🚀", "with space", "a=b=c", "\t\ttabs", String(repeating: "é", count: 127)]
        let big = (0..<65536).map { UInt8($0 % 253) }
        try pool.transaction { tx in
            for (i, key) in odd.enumerated() { try tx.set(key, "v\(i)") }
            try tx.set("big", big)
        }
        for (i, key) in odd.enumerated() { #expect(try pool.value(for: key) == Array("v\(i)".utf8)) }
        #expect(try pool.value(for: "big") == big)
    }

    @Test func fullPoolIsReportedAndNothingLeaks() throws {
        let scratch = Scratch()
        var options = PoolOptions()
        options.keyCapacity = 16
        options.queueCapacity = 1
        options.size = (1536 << 10) + 528_384   // + the audit ring of 1,024 slots
        options.sizeLimit = options.size         // no growth
        let path = scratch.file("f.pool")
        let pool = try Pool.open(path: path, options: options)
        let start = try pool.storeUsage()
        let grownIndex = options.size + 64 * Int(PMLL_KEY_SLOT_WIDE)   // 17 keys need 64 slots at a load of one half
        #expect(throws: PMLLError.sizeLimitReached(path: path, limit: options.size, needed: grownIndex)) {
            try pool.transaction { tx in for i in 0..<17 { try tx.set("k\(i)", "v") } }
        }
        #expect(try pool.storeUsage() == start)   // the failed commit changed nothing
        let value = [UInt8](repeating: 1, count: 60_000)
        let enough = start.blockCount * start.blockSize / value.count + 1
        try #require(enough <= 15, "pool too big for this test: \(start)")
        // An extent of 235 blocks: a page of bitmap, 60,160 bytes of blocks in pages, a page spare.
        #expect(throws: PMLLError.sizeLimitReached(path: path, limit: options.size, needed: options.size + 4096 + 61_440 + 4096)) {
            try pool.transaction { tx in for i in 0..<enough { try tx.set("big\(i)", value) } }
        }
        #expect(try pool.storeUsage() == start)
        // Overwrites and deletes give every block back.
        for round in 0..<50 { try pool.transaction { tx in try tx.set("k", [UInt8](repeating: UInt8(round), count: 1000 + round)) } }
        try pool.transaction { tx in try tx.delete("k") }
        #expect(try pool.storeUsage() == start)
        #expect(try pool.check().ok)
    }

    @Test func checksumCorruptionIsATypedErrorNamingTheRecord() throws {
        let scratch = Scratch()
        let path = scratch.file("c.pool")
        let marker = Array("MARKER-0123456789-".utf8)
        do {
            let pool = try Pool.open(path: path)
            try pool.transaction { tx in
                try tx.set("pkg/openssl/files", marker + [UInt8](repeating: 0x5A, count: 300))
                try tx.set("pkg/other", "fine")
            }
        }
        var bytes = try #require(FileManager.default.contents(atPath: path))
        let at = try #require(bytes.firstRange(of: marker)).lowerBound
        bytes[at + 5] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: path))
        let pool = try Pool.open(path: path)
        #expect(throws: PMLLError.corruptRecord(key: "pkg/openssl/files", reason: "checksum mismatch")) {
            try pool.value(for: "pkg/openssl/files")
        }
        #expect(try pool.value(for: "pkg/other") == Array("fine".utf8))
        #expect(try pool.check().problems == ["record 'pkg/openssl/files' is corrupt: checksum mismatch"])
    }

    /// A process killed at each step of its commit: before the commit point everything is
    /// rolled back, after it everything is there; a rollback killed midway is redone.
    @Test(arguments: [("tx.undo-logged", false), ("tx.applied", false), ("tx.committed", true)])
    func killedInsideACommit(point: String, committed: Bool) throws {
        let scratch = Scratch()
        let pool = scratch.file("k.pool")
        #expect(try Child.worker("tx-set", "--pool", pool, "a=old", "b=old").wait() == 0)
        let victim = try Child.worker("tx-set", "--pool", pool, "a=new", "b=" + String(repeating: "n", count: 500), "c=new",
                                      environment: ["PMLL_CRASH_AT": point])
        #expect(victim.wait() == 128 + SIGKILL)
        if !committed {
            // A reader killed in the middle of rolling back leaves it to the next one.
            let reader = try Child.worker("tx-set", "--pool", pool, "a", environment: ["PMLL_CRASH_AT": "tx.rolled-back"])
            #expect(reader.wait() == 128 + SIGKILL)
        }
        let p = try Pool.open(path: pool)
        let expected = committed ? ["new", String(repeating: "n", count: 500), "new"] : ["old", "old", nil]
        #expect(try ["a", "b", "c"].map { try p.value(for: $0).map { String(decoding: $0, as: UTF8.self) } } == expected)
    }

    /// Bank transfers and package records from several processes, with random SIGKILLs:
    /// the total is constant and every package's status agrees with its file list. Lockless:
    /// the transfers take no account locks, and serializable transactions alone keep the total.
    @Test(arguments: [false, true])
    func invariantsHoldAcrossRandomKills(lockless: Bool) throws {
        let scratch = Scratch()
        let path = scratch.file("bank.pool")
        let accounts = 8
        do {
            let pool = try Pool.open(path: path)
            try pool.transaction { tx in for i in 0..<accounts { try tx.set("acct/\(i)", "1000") } }
        }
        let arguments = ["bank", "--pool", path, "--accounts", "\(accounts)", "--seconds", "30"] + (lockless ? ["--lockless"] : [])
        var workers = try (0..<3).map { _ in try Child(Binaries.worker, arguments) }
        for w in workers { _ = try #require(w.waitForEvent("started")) }
        for _ in 0..<15 {
            usleep(UInt32.random(in: 20_000...120_000))
            let victim = workers.remove(at: Int.random(in: 0..<workers.count))
            victim.kill(); victim.wait()
            workers.append(try Child(Binaries.worker, arguments))
        }
        for w in workers { w.kill(); w.wait() }
        let pool = try Pool.open(path: path)
        let total = try (0..<accounts).map { Int(String(decoding: try pool.value(for: "acct/\($0)")!, as: UTF8.self))! }.reduce(0, +)
        #expect(total == accounts * 1000)
        for p in 0..<3 {
            guard let status = try pool.value(for: "pkg/\(p)/status") else { continue }
            let files = try #require(try pool.value(for: "pkg/\(p)/files"))
            let version = String(decoding: status, as: UTF8.self).split(separator: "-").last!
            #expect(String(decoding: files, as: UTF8.self).hasSuffix("-\(version)"), "package \(p): status and files disagree")
        }
        let check = try pool.check()
        #expect(check.ok, "\(check.problems)")
        #expect(check.blocksUsed == check.blocksReferenced && check.keysChecked >= accounts)
    }
}
