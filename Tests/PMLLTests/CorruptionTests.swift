import CPMLL
import Foundation
import PMLL
@testable import PMLLLocks
@testable import PMLLCore
import Testing

/// Values read from the mapping are not trusted: a damaged field gives a typed error or a
/// clamped figure, never a signal (issue 16, "Fields read from the pool are trusted").
@Suite("Corrupted fields", .serialized)
struct CorruptionTests {
    struct Field {
        let name: String
        let offset: Int
        let value: UInt64
        let bytes: Int
    }

    /// A pool with a queue that ran operations and a lock that was held, and the file
    /// offsets of the fields the cases damage.
    func populatedPool(_ scratch: Scratch) throws -> (path: String, queue: Int, lock: Int) {
        let path = scratch.file("c.pool")
        for _ in 0..<3 { #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", path, "q", "--", "true"]).status == 0) }
        #expect(try run(Binaries.pmll, ["lock", "--pool", path, "held", "--", "true"]).status == 0)
        let pool = try Pool.open(path: path)
        let queue = pool.memory.layout.queueTable.lowerBound
        let lockIndex = try #require(try pool.existingLock(named: "held")).index
        return (path, queue, pool.memory.layout.lockTable.lowerBound + Int(lockIndex.rawValue) * MemoryLayout<pmll_lock_entry_t>.size)
    }

    func write(_ path: String, _ fields: [Field]) throws {
        let fd = open(path, O_RDWR)
        defer { close(fd) }
        for f in fields {
            var v = f.value
            #expect(pwrite(fd, &v, f.bytes, off_t(f.offset)) == f.bytes)
        }
    }

    static let cases: [String] = ["queue name length", "queue statistics near 2^64", "queue tickets near 2^64", "lock held since bit 63"]

    @Test(arguments: cases)
    func aDamagedFieldNeverKillsACommand(damage: String) throws {
        let scratch = Scratch()
        let (path, queue, lock) = try populatedPool(scratch)
        func q<T>(_ key: KeyPath<pmll_queue_head_t, T>) -> Int { queue + MemoryLayout<pmll_queue_head_t>.offset(of: key)! }
        func l<T>(_ key: KeyPath<pmll_lock_entry_t, T>) -> Int { lock + MemoryLayout<pmll_lock_entry_t>.offset(of: key)! }
        switch damage {
        case "queue name length":
            try write(path, [Field(name: "name_length", offset: q(\.name_length), value: 100_000, bytes: 4)])
        case "queue statistics near 2^64":
            try write(path, [Field(name: "completed", offset: q(\.completed), value: .max - 1, bytes: 8),
                             Field(name: "failed", offset: q(\.failed), value: 5, bytes: 8),
                             Field(name: "total_wait_ns", offset: q(\.total_wait_ns), value: .max, bytes: 8)])
        case "queue tickets near 2^64":
            try write(path, [Field(name: "next_ticket", offset: q(\.next_ticket), value: .max - 1, bytes: 8)])
        default:
            // Held by a token whose process is gone, hold stamp with bit 63 set, stamped for
            // the current hold (epoch = acquisitions) so that status reads it as is.
            let acquisitions = readU64(path, field: l(\.acquisitions) / 8)
            try write(path, [Field(name: "word", offset: l(\.word), value: UInt64(1 << 10 | 1), bytes: 4),
                             Field(name: "held_since_ns", offset: l(\.held_since_ns), value: 1 << 63 | 12345, bytes: 8),
                             Field(name: "held_epoch", offset: l(\.held_epoch), value: acquisitions, bytes: 8)])
        }
        let commands: [[String]] = [
            ["status", "--pool", path], ["status", "--json", "--pool", path], ["check", "--pool", path],
            ["queue", "show", "--pool", path, "q"], ["recover", "--pool", path],
            ["queue", "exec", "--pool", path, "--timeout", "5", "q", "--", "true"], ["state", "list", "--pool", path],
            ["lock", "--pool", path, "--timeout", "5", "held", "--", "true"],
        ]
        for command in commands {
            let result = try run(Binaries.pmll, command, timeout: 30)
            #expect(result.status < 128, "\(damage): pmll \(command.joined(separator: " ")) died of signal \(result.status - 128): \(result.stderr)")
            if command[0] == "check" {
                // check reports on stdout, one line per problem, and exits 65.
                #expect(result.status == 0 || (result.status == 65 && result.stdout.contains("problem: ")), "\(damage): check: \(result.stdout)")
                if damage == "queue tickets near 2^64" { #expect(result.stdout.contains("has impossible tickets")) }
                if damage == "queue name length" { #expect(result.stdout.contains("queue head 0 fails its checksum")) }
            } else if command == ["status", "--pool", path] && damage == "queue name length" {
                // Named, not hidden.
                #expect(result.stdout.contains("queue head 0 is damaged: its queue is not shown"), "\(result.stdout)")
            } else if result.status != 0 {
                #expect(result.stderr.hasPrefix("pmll: "), "\(damage): \(command): \(result.stderr)")
            }
        }
    }

    func allocatedBytes(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_blocks) * 512 : -1
    }

    /// A pool truncated while a holder and a waiter use it: both end with a `pmll:` line and
    /// status 65, not death by SIGBUS (issue 16, "The mapping can fault").
    @Test func aPoolTruncatedUnderItsUsersIsReportedNotASignal() throws {
        let scratch = Scratch()
        let path = scratch.file("t.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", path, "a=1"]).status == 0)
        let holder = try Child(Binaries.pmll, ["lock", "--pool", path, "l", "--", "sleep", "1"])
        try waitUntilHeld(pool: path, lock: "l")
        let waiter = try Child(Binaries.pmll, ["lock", "--pool", path, "l", "--", "true"])
        try waitForWaiters(pool: path, lock: "l")
        #expect(truncate(path, 4096) == 0)
        for child in [holder, waiter] {
            #expect(child.wait() == 65)
            #expect(child.stderr.hasPrefix("pmll: pool '\(path)' lost its storage while in use"), "\(child.stderr)")
        }
        let after = try run(Binaries.pmll, ["status", "--pool", path])
        #expect(after.status == 65 && after.stderr.contains("truncated"))
    }

    /// A sparse copy of a pool gets its blocks allocated when it is opened; on a file system
    /// without room for them it is refused with "no space" (exit 73) instead of faulting later.
    @Test func sparsePoolsAreAllocatedOrRefused() throws {
        let scratch = Scratch()
        let path = scratch.file("p.pool"), sparse = scratch.file("sparse.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", path, "a=1"]).status == 0)
        #expect(try run("/bin/cp", ["--sparse=always", path, sparse]).status == 0)
        let size = 16 << 20
        guard allocatedBytes(sparse) < size else {
            Issue.record("cp --sparse=always made no hole here: nothing to test")
            return
        }
        #expect(try run(Binaries.pmll, ["status", "--pool", sparse]).status == 0)
        #expect(allocatedBytes(sparse) >= size)
        #expect(try Pool.open(path: sparse).value(for: "a") == Array("1".utf8))

        // A file system that is too small (needs root to mount; skipped without).
        let small = scratch.file("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        guard try run("/bin/mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", small]).status == 0 else { return }
        defer { _ = try? run("/bin/umount", [small]) }
        #expect(try run("/bin/cp", ["--sparse=always", path, small + "/p.pool"]).status == 0)
        let full = try run(Binaries.pmll, ["status", "--pool", small + "/p.pool"])
        #expect(full.status == 73 && full.stderr.hasPrefix("pmll: no space for pool"), "\(full.stderr)")
        let check = try run(Binaries.pmll, ["check", "--pool", small + "/p.pool"])
        #expect(check.status == 73)
    }

    /// A key whose slot is damaged (state flipped to empty, or its index page zeroed) used to
    /// vanish with `check` saying ok; the census sees it. A pool without a census (written
    /// before it) gets one at its next commit.
    @Test func aVanishedKeyIsSeenByCheck() throws {
        let scratch = Scratch()
        let path = scratch.file("k.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", path, "pkg/a=1", "pkg/b=2", "pkg/c=3"]).status == 0)
        let (index, census) = try {
            let pool = try Pool.open(path: path)
            let heap = pool.memory.layout.heap.lowerBound
            return (heap + StoreLayout.superSize, heap + Int(PMLL_CENSUS_OFFSET))
        }()
        var bytes = try #require(FileManager.default.contents(atPath: path))
        let key = try #require(bytes.firstRange(of: Array("pkg/b2".utf8))).lowerBound
        let slot = key - Int(PMLL_KEY_SLOT_HEAD)
        #expect(slot >= index)

        // An older pool: no census, check cannot tell; the next commit counts and keeps it.
        var old = bytes
        old.replaceSubrange(census..<(census + 32), with: [UInt8](repeating: 0, count: 32))
        try old.write(to: URL(fileURLWithPath: path))
        #expect(try run(Binaries.pmll, ["check", "--pool", path]).status == 0)
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", path, "pkg/d=4"]).status == 0)
        #expect(readU64(path, field: census / 8) == PMLL_CENSUS_MAGIC && readU64(path, field: census / 8 + 1) == 4)
        #expect(try run(Binaries.pmll, ["check", "--pool", path]).status == 0)

        // The slot's state flipped to EMPTY: the key is gone from get and list, not from check.
        bytes = try #require(FileManager.default.contents(atPath: path))
        bytes.replaceSubrange(slot..<(slot + 4), with: [0, 0, 0, 0])
        try bytes.write(to: URL(fileURLWithPath: path))
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", path, "pkg/b"]).status == 1)
        let check = try run(Binaries.pmll, ["check", "--pool", path])
        #expect(check.status == 65 && check.stdout.contains("the store's census counts 4 keys but 3 key slots are in use"), "\(check.stdout)")

        // The whole index page zeroed.
        let page = (slot - index) / 4096 * 4096 + index
        bytes.replaceSubrange(page..<(page + 4096), with: [UInt8](repeating: 0, count: 4096))
        try bytes.write(to: URL(fileURLWithPath: path))
        #expect(try run(Binaries.pmll, ["check", "--pool", path]).stdout.contains("key slots are in use: a key slot was damaged"))
    }

    /// A flipped byte in a lock's name no longer renames it silently: status marks the row,
    /// check names the entry.
    @Test func aDamagedLockNameIsMarked() throws {
        let scratch = Scratch()
        let path = scratch.file("n.pool")
        #expect(try run(Binaries.pmll, ["lock", "--pool", path, "mylockname", "--", "true"]).status == 0)
        var bytes = try #require(FileManager.default.contents(atPath: path))
        let at = try #require(bytes.firstRange(of: Array("mylockname".utf8))).lowerBound
        bytes[at + 2] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: path))
        let status = try run(Binaries.pmll, ["status", "--pool", path])
        #expect(status.stdout.contains("mymockname") && status.stdout.contains("(damaged: see pmll check)"))
        let check = try run(Binaries.pmll, ["check", "--pool", path])
        #expect(check.status == 65 && check.stdout.contains("('mymockname') fails its checksum"))
    }

    /// Randomly corrupted copies of a populated pool (PMLL_CORRUPTION_COPIES, default 40;
    /// Docs/Reliability.md has a run of 500): every command on every copy ends by itself with
    /// a status, never a signal; and where `check` says the copy is sound, every value reads
    /// back unchanged (or the read fails): no changed value with exit 0.
    @Test func randomlyCorruptedCopiesNeverCrashACommandNorLie() throws {
        let scratch = Scratch()
        let original = scratch.file("original.pool")
        let large = scratch.file("large.bin")
        let largeValue = (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try Data(largeValue).write(to: URL(fileURLWithPath: large))
        let values = (0..<8).map { ("pkg/\($0)/status", "installed-\($0)") }
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", original, "--value-file", "pkg/large=\(large)"] + values.map { "\($0.0)=\($0.1)" }).status == 0)
        for _ in 0..<3 { #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", original, "q", "--", "true"]).status == 0) }
        #expect(try run(Binaries.pmll, ["lock", "--pool", original, "--level", "filesystem", "fs/l", "--", "true"]).status == 0)
        let expected = Dictionary(uniqueKeysWithValues: values.map { ($0.0, Array($0.1.utf8)) } + [("pkg/large", largeValue)])

        // Where the bytes that matter are: header and tables, the store's superblock, index,
        // logs and bitmap, and the value blocks in use.
        let regions: [Range<Int>] = try {
            let pool = try Pool.open(path: original)
            let layout = pool.memory.layout
            let blocks = try pool.storeUsage()
            let blockStart = layout.heap.upperBound - blocks.blockCount * blocks.blockSize
            return [0..<layout.heap.lowerBound, layout.heap.lowerBound..<(layout.heap.lowerBound + 4096 + 4096 * 128),
                    blockStart..<(blockStart + (blocks.blocksUsed + 4) * blocks.blockSize)]
        }()
        let bytes = try #require(FileManager.default.contents(atPath: original))
        let copies = Int(ProcessInfo.processInfo.environment["PMLL_CORRUPTION_COPIES"] ?? "") ?? 40
        var rng = SystemRandomNumberGenerator()
        var soundCopies = 0
        for copy in 0..<copies {
            var damaged = bytes
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                let region = regions.randomElement(using: &rng)!
                let at = Int.random(in: region, using: &rng)
                damaged[at] = Bool.random(using: &rng) ? UInt8.random(in: 0...255, using: &rng) : damaged[at] ^ (1 << UInt8.random(in: 0...7, using: &rng))
            }
            let path = scratch.file("copy.pool")
            try damaged.write(to: URL(fileURLWithPath: path))
            let commands: [[String]] = [["check"], ["status"], ["status", "--json"], ["queue", "show", "q"], ["state", "list"],
                                        ["lock", "--timeout", "2", "fs/l", "--", "true"], ["recover"]]
            var checkOK = false
            for command in commands {
                let result = try run(Binaries.pmll, Array(command.prefix(command[0] == "queue" || command[0] == "state" ? 2 : 1)) + ["--pool", path] + Array(command.dropFirst(command[0] == "queue" || command[0] == "state" ? 2 : 1)), timeout: 30)
                #expect(result.status < 128, "copy \(copy): pmll \(command.joined(separator: " ")) died of signal \(result.status - 128): \(result.stderr)")
                if command == ["check"] { checkOK = result.status == 0 }
            }
            guard checkOK else { continue }
            soundCopies += 1
            for (key, value) in expected {
                // --json: binary values come back as base64, whole.
                let get = try run(Binaries.pmll, ["state", "get", "--json", "--pool", path, key], timeout: 30)
                #expect(get.status < 128, "copy \(copy): state get died of a signal")
                if get.status == 0 {
                    let entry = try JSONSerialization.jsonObject(with: Data(get.stdout.utf8)) as? [String: String]
                    let read = entry?["value"].map { Array($0.utf8) } ?? entry?["base64"].flatMap { Data(base64Encoded: $0) }.map { Array($0) }
                    #expect(read == value, "copy \(copy): check says ok and '\(key)' reads back changed")
                }
            }
        }
        // Some copies are damaged only where it does not matter; most are not.
        #expect(soundCopies < copies, "no corruption was ever detected: the test corrupts nothing")
    }
}
