import Foundation
import CPMLL
import PMLL
@testable import PMLLCore
@testable import PMLLFileBatches
@testable import PMLLQueues
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Pure logic, in milliseconds, beside the real-process tests: the batch planner, the
/// journal's codec, the store's layout, the retry policy, lock-word transitions.
@Suite struct UnitTests {
    // MARK: BatchPlan

    /// A tree as `lookup` sees it: path → (is a directory, inode).
    func plan(_ ops: [FileBatch.Operation], tree: [String: (Bool, UInt64)]) throws(PMLLError) -> BatchPlan {
        try BatchPlan(FileBatch(ops)) { path in tree[path].map { ExistingEntry(isDirectory: $0.0, inode: $0.1) } }
    }

    @Test func planRecordsWhatExistedAndWhatStagingApplies() throws {
        let p = try plan([.write(path: "a", data: [1], mode: 0o644), .replace(path: "b", data: [2], mode: 0o644),
                          .replace(path: "a", data: [3], mode: 0o644), .delete(path: "c")],
                         tree: ["b": (false, 42), "c": (false, 7)])
        #expect(p.steps.map(\.op) == [.write, .replace, .replace, .delete])
        #expect(p.steps.map(\.existed) == [false, true, true, true])   // the second write of "a" finds the first
        #expect(p.early == [0, 1])                                    // "a" again is touched by step 0
        #expect(p.steps[1].oldInode == 42 && p.steps[0].oldInode == 0 && p.steps[2].oldInode == 0)
    }

    @Test func planCreatesOnlyMissingDirectoriesAndFollowsRenames() throws {
        let p = try plan([.mkdir(path: "lib/x/y", mode: 0o755), .rename(from: "lib/x", to: "lib/z"), .write(path: "lib/z/y/f", data: [], mode: 0o644)],
                         tree: ["lib": (true, 1)])
        #expect(p.steps[0].createdDirs == ["lib/x", "lib/x/y"])
        #expect(p.steps[1].to == "lib/z" && p.steps[1].existed && !p.steps[1].toExisted)
        #expect(p.steps[2].existed == false)
    }

    @Test func planRefusesMissingTargetsAndDirectories() throws {
        #expect(throws: PMLLError.invalidBatch(index: 0, reason: "'a' does not exist (replace needs an existing file)")) {
            try plan([.replace(path: "a", data: [], mode: 0o644)], tree: [:])
        }
        #expect(throws: PMLLError.invalidBatch(index: 1, reason: "'d' does not exist")) {
            try plan([.write(path: "x", data: [], mode: 0o644), .delete(path: "d")], tree: [:])
        }
        #expect(throws: PMLLError.self) { try plan([.write(path: "dir", data: [], mode: 0o644)], tree: ["dir": (true, 3)]) }
        #expect(throws: PMLLError.self) { try plan([.mkdir(path: "m", mode: 0o755), .delete(path: "m")], tree: [:]) }
        #expect(throws: PMLLError.self) { try plan([.rename(from: "f", to: "dir")], tree: ["f": (false, 1), "dir": (true, 2)]) }
        // mkdir over a file (there before, or written earlier in the batch) is refused, not
        // skipped as if the directory existed (issue 16).
        #expect(throws: PMLLError.invalidBatch(index: 0, reason: "'f' exists and is not a directory (mkdir 'f/sub')")) {
            try plan([.mkdir(path: "f/sub", mode: 0o755)], tree: ["f": (false, 1)])
        }
        #expect(throws: PMLLError.invalidBatch(index: 1, reason: "'w' exists and is not a directory (mkdir 'w')")) {
            try plan([.write(path: "w", data: [], mode: 0o644), .mkdir(path: "w", mode: 0o755)], tree: [:])
        }
        #expect(try plan([.mkdir(path: "d", mode: 0o755), .mkdir(path: "d/e", mode: 0o755)], tree: ["d": (true, 2)]).steps[1].createdDirs == ["d/e"])
    }

    // MARK: BatchJournal

    @Test func journalRoundTripsAndRejectsDamage() {
        var steps = [BatchStep(op: .write, path: "a/b", to: nil, existed: true, toExisted: false, createdDirs: []),
                     BatchStep(op: .rename, path: "x", to: "y/z", existed: true, toExisted: true, createdDirs: []),
                     BatchStep(op: .mkdir, path: "d/e", to: nil, existed: false, toExisted: false, createdDirs: ["d", "d/e"])]
        steps[0].oldInode = 1 << 40
        let journal = BatchJournal(id: "abc", root: "/opt/cpm", owner: OwnerToken(rawValue: 0x1234), phase: .committed, steps: steps)
        let bytes = journal.encoded()
        #expect(BatchJournal(decoding: bytes) == journal)
        #expect(BatchJournal(decoding: Array(bytes.dropLast())) == nil)           // truncated
        #expect(BatchJournal(decoding: [0x51] + bytes.dropFirst()) == nil)         // wrong magic
        #expect(BatchJournal(decoding: bytes + [0]) == nil)                       // trailing garbage
        #expect(BatchJournal(decoding: []) == nil)
    }

    // MARK: StoreLayout

    @Test(arguments: [(16, 1, 1 << 20), (4096, 16, 8 << 20), (100_000, 256, 64 << 20)])
    func storeLayoutSectionsAreOrderedAlignedAndInsideTheHeap(keys: Int, logs: Int, heapSize: Int) {
        let heap = 4096..<(4096 + heapSize)
        let l = StoreLayout(heap: heap, keyCapacity: keys, logSlots: logs)
        #expect(l.index.lowerBound == heap.lowerBound + StoreLayout.superSize)
        #expect(l.index.upperBound == l.logs.lowerBound && l.logs.upperBound == l.bitmap.lowerBound && l.bitmap.upperBound == l.blocks.lowerBound)
        #expect(l.blocks.upperBound <= heap.upperBound)
        #expect(l.index.count >= keys * Int(PMLL_KEY_SLOT_WIDE))
        #expect(l.bitmap.count * 8 >= l.blockCount)
        #expect([l.index.lowerBound, l.logs.lowerBound, l.bitmap.lowerBound, l.blocks.lowerBound].allSatisfy { $0 % 4096 == 0 })
    }

    // MARK: RetryPolicy

    @Test func retryDelaysStayUnderTheirExponentialCap() {
        let policy = RetryPolicy(maxRetries: 10, baseDelay: .milliseconds(10), maxDelay: .milliseconds(300))
        for retry in 1...40 {
            let cap = min(300, 10 << min(retry - 1, 30))
            for _ in 0..<50 { #expect(policy.delay(beforeRetry: retry) <= .milliseconds(cap)) }
        }
        #expect(RetryPolicy(baseDelay: .zero).delay(beforeRetry: 5) == .zero)
        #expect(RetryPolicy(baseDelay: .seconds(1 << 40), maxDelay: .seconds(2)).delay(beforeRetry: 40) <= .seconds(2))
    }

    // MARK: SpinBackoff

    /// Rounds double to 256 pauses; spinning stops at the budget and never passes the deadline;
    /// no budget (the waiter thread) or a deadline already past (a try) means no spinning at all.
    @Test func spinningBacksOffAndStopsAtItsBudget() {
        #expect((0..<11).map(SpinBackoff.pauses(inRound:)) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256])
        let now = Clock.monotonicNanoseconds
        var none = SpinBackoff(start: now, budget: 0, deadline: .max)
        let noneSpun = none.pause()
        #expect(!noneSpun && none.rounds == 0)
        var tryOnly = SpinBackoff(start: now, budget: 1_000_000, deadline: now)
        let trySpun = tryOnly.pause()
        #expect(!trySpun && tryOnly.rounds == 0)
        let budget: Int64 = 300_000
        let start = Clock.monotonicNanoseconds
        var spin = SpinBackoff(start: start, budget: budget, deadline: .max)
        while spin.pause() {}
        #expect(Clock.monotonicNanoseconds - start >= budget)
        let again = spin.pause()
        #expect(!again)   // spent stays spent
        var long = SpinBackoff(start: Clock.monotonicNanoseconds, budget: 10_000_000_000, deadline: .max)
        var spun = 0
        while spun < 10 && long.pause() { spun += 1 }
        #expect(spun == 10 && long.rounds == 10)   // (no preemption lasts 10 s)
        let shortDeadline = Clock.monotonicNanoseconds + 50_000
        var capped = SpinBackoff(start: Clock.monotonicNanoseconds, budget: 10_000_000_000, deadline: shortDeadline)
        while capped.pause() {}
        #expect(Clock.monotonicNanoseconds >= shortDeadline)
        #expect(Clock.monotonicNanoseconds - shortDeadline < 1_000_000_000)   // the deadline, not the 10 s budget
    }

    // MARK: IOThreadPool

    final class Tally: @unchecked Sendable {
        let lock = Mutex<[Int]>([])
        func add(_ i: Int) { lock.withLock { $0.append(i) } }
        var sorted: [Int] { lock.withLock { $0.sorted() } }
    }

    /// Every index runs once, on the pool's threads and the caller; a job started from inside
    /// another job's body completes (the caller works on its own job); `start` returns before
    /// the work is done and its join waits for all of it.
    @Test func ioThreadPoolRunsEveryIndexOnceAndNestsWithoutDeadlock() {
        let pool = IOThreadPool(width: 4)
        for count in [0, 1, 2, 17, 1000] {
            let tally = Tally()
            pool.run(count) { tally.add($0) }
            #expect(tally.sorted == Array(0..<count))
        }
        let nested = Tally()
        pool.run(8) { outer in pool.run(8) { inner in nested.add(outer * 8 + inner) } }
        #expect(nested.sorted == Array(0..<64))
        let started = Tally()
        let join = pool.start(50) { i in usleep(1000); started.add(i) }
        join()
        #expect(started.sorted == Array(0..<50))
    }

    // MARK: lock word

    @Test func uncontendedLockWordTransitions() {
        var entry = pmll_lock_entry_t()
        let a = OwnerToken(slot: SlotIndex(3), generation: 5).rawValue, b = OwnerToken(slot: SlotIndex(4), generation: 1).rawValue
        #expect(pmll_lock_try_fast(&entry, a) != 0 && entry.word == a)
        #expect(pmll_lock_try_fast(&entry, b) == 0)                     // held: no barging
        #expect(pmll_lock_release_fast(&entry, b) == 0 && entry.word == a)   // only the holder releases
        entry.word |= PMLL_WORD_WAITERS
        #expect(pmll_lock_release_fast(&entry, a) == 0)                 // waiters: the slow path must wake them
        entry.word = a
        #expect(pmll_lock_release_fast(&entry, a) != 0 && entry.word == 0)
        #expect(OwnerToken(rawValue: a).slot == SlotIndex(3) && OwnerToken(rawValue: a).generation == 5)
        #expect(OwnerToken.owner(ofWord: a | PMLL_WORD_WAITERS | PMLL_WORD_DIED) == OwnerToken(rawValue: a))
        #expect(OwnerToken.owner(ofWord: PMLL_WORD_WAITERS) == nil)
        #expect(a & ~PMLL_OWNER_MASK == 0)
    }

    // MARK: wake-on-demand words (queue turns, group commit)

    /// A bump with nobody announced makes no wake call; after an announcement it makes one and
    /// clears the mark; an announcement over a value that moved fails, so the sleeper looks
    /// again. (That an announced sleeper is really woken is `QueueTests`' part:
    /// `turnsAreHandedOnByTheFinisherNotByPolling` fails on a missed wake.)
    @Test func wakeWordsWakeOnlyAnnouncedSleepers() {
        var word: UInt32 = 0
        #expect(pmll_wakeword_bump(&word) == 0 && word == 1)

        var expected: UInt32 = 0
        let stale = word
        #expect(pmll_wakeword_bump(&word) == 0)
        #expect(pmll_wakeword_announce_sleeper(&word, stale, &expected) == 0)   // it moved: look again

        let seen = word
        #expect(pmll_wakeword_announce_sleeper(&word, seen, &expected) != 0 && expected == seen | PMLL_WAKEWORD_SLEEPERS)
        #expect(word == expected)
        #expect(pmll_wakeword_announce_sleeper(&word, word, &expected) != 0 && expected == seen | PMLL_WAKEWORD_SLEEPERS)   // a second sleeper
        #expect(pmll_wakeword_bump(&word) == 1)
        #expect(word == seen &+ 1 && word & PMLL_WAKEWORD_SLEEPERS == 0)
        #expect(pmll_wakeword_bump(&word) == 0)   // the mark went with the wake

        word = ~PMLL_WAKEWORD_SLEEPERS   // the count wraps without setting the mark
        #expect(pmll_wakeword_bump(&word) == 0 && word == 0)
    }

    // MARK: Access policy

    @Test func accessRulesGovernTheirObjectsAndAdmitTheirUsers() {
        let policy = AccessPolicy(rules: [
            AccessRule(name: "registry", action: .lock, match: "registry*", level: .registry, users: [1000]),
            AccessRule(name: "registry-group", action: .lock, match: "registry*", groups: [50]),
            AccessRule(name: "writers", action: .lock, match: "pkg/*", mode: .exclusive, users: [1000]),
            AccessRule(name: "installed", action: .state, match: "installed/*", users: [0]),
            AccessRule(name: "opt", action: .batch, match: "/opt/cpm/", users: [0]),
            AccessRule(name: "recovery", action: .recover, users: [0]),
        ])
        let alice = AccessIdentity(uid: 1000, groups: [1000]), bob = AccessIdentity(uid: 1001, groups: [1001, 50]),
            carol = AccessIdentity(uid: 1002, groups: [1002])
        func denied(_ request: AccessRequest, _ who: AccessIdentity) -> String? { policy.denyingRule(request, caller: who)?.name }
        // Any matching rule admits; the first matching rule is named.
        #expect(denied(.lock(name: "registry/index", level: .registry, shared: false), alice) == nil)
        #expect(denied(.lock(name: "registry/index", level: .registry, shared: false), bob) == nil)       // by group
        #expect(denied(.lock(name: "registry/index", level: .registry, shared: false), carol) == "registry")
        #expect(denied(.lock(name: "registry/index", level: .package, shared: false), carol) == "registry-group")  // level narrows
        #expect(denied(.lock(name: "mirror", level: .registry, shared: false), carol) == nil)              // no rule: allowed
        #expect(denied(.lock(name: "pkg/zlib", level: .package, shared: false), carol) == "writers")
        #expect(denied(.lock(name: "pkg/zlib", level: .package, shared: true), carol) == nil)               // mode narrows
        #expect(denied(.stateWrite(key: "installed/zlib"), alice) == "installed")
        #expect(denied(.stateWrite(key: "cache/zlib"), alice) == nil)
        #expect(denied(.batch(root: "/opt/cpm"), alice) == "opt")
        #expect(denied(.batch(root: "/opt/cpm/lib"), alice) == "opt")
        #expect(denied(.batch(root: "/opt/cpmx"), alice) == nil)                                           // a directory, not a prefix
        #expect(denied(.recover, alice) == "recovery")
        #expect(AccessPolicy().denyingRule(.recover, caller: carol) == nil)
    }

    @Test func signatureRulesAndPolicyProblems() {
        let policy = AccessPolicy(signatures: [
            SignatureRule(name: "signed-opt", action: .batch, match: "/opt/cpm", keys: ["K"]),
            SignatureRule(name: "signed-index", action: .state, match: "index/*", keys: ["K"]),
        ])
        #expect(policy.signatureRule(for: .batch(root: "/opt/cpm/x"))?.name == "signed-opt")
        #expect(policy.signatureRule(for: .batch(root: "/srv"))?.name == nil)
        #expect(policy.signatureRule(for: .stateWrite(key: "index/zlib"))?.name == "signed-index")
        #expect(policy.signatureRule(for: .stateWrite(key: "cache/zlib"))?.name == nil)
        #expect(policy.problems().isEmpty)
        let bad = AccessPolicy(rules: [
            AccessRule(name: "", action: .lock, users: [1]),
            AccessRule(name: "a", action: .state, level: .package, users: [1]),
            AccessRule(name: "a", action: .batch, match: "relative", users: [1]),
            AccessRule(name: "nobody", action: .recover, match: "x"),
        ], signatures: [SignatureRule(name: "s", action: .lock, keys: [])])
        let problems = bad.problems()
        for expected in ["rule 1 has no name", "level applies to lock rules only", "rule name 'a' used twice",
                         "a batch root must be an absolute path", "names no user or group", "match nothing",
                         "lists no public key", "only batch and state writes carry signatures"] {
            #expect(problems.contains { $0.contains(expected) }, "missing: \(expected) in \(problems)")
        }
    }

    // MARK: Audit line

    /// The drain formats record lines in C (auditline.c); AuditLine.body (Swift) writes the
    /// gap records and defines the format. Both must write the same bytes, escapes included,
    /// and a version 2 ring's binary numbers (the mark and 8 bytes) in decimal.
    @Test func theDrainsLineFormatMatchesAuditLineByteForByte() throws {
        func number(_ v: UInt64) -> [UInt8] { [0xFF] + withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        // (slot text, the object it stands for, binary numbers)
        let cases: [([UInt8], String, Int32)] = [
            (Array("queue 'q' ticket 7 kind 'install'".utf8), "queue 'q' ticket 7 kind 'install'", 0),
            (Array("quote \" backslash \\ newline \n cr \r tab \t".utf8), "quote \" backslash \\ newline \n cr \r tab \t", 0),
            (Array("control \u{01}\u{1f} end".utf8), "control \u{01}\u{1f} end", 0),
            (Array("utf-8 é ✓ 𝄞".utf8), "utf-8 é ✓ 𝄞", 0),
            ([], "", 0),
            (Array("ticket ".utf8) + number(7) + Array(" at ".utf8) + number(UInt64.max) + Array(", \"é\" ".utf8) + number(0), "ticket 7 at \(UInt64.max), \"é\" 0", 1),
            (number(1_764_000_000_123_456_789) + number(10), "176400000012345678910", 1),
            (Array("quote \" tab \t".utf8), "quote \" tab \t", 1),
        ]
        // Long runs, with what needs care at every offset of an 8-byte word (the format copies
        // plain bytes eight at a time).
        var long: [([UInt8], String, Int32)] = []
        for offset in 0..<9 {
            let plain = String(repeating: "p", count: offset) + "é✓\u{7f}"
            let object = plain + "\"" + plain + "\\" + plain + "\u{1f}" + plain + "\n" + String(repeating: "x", count: 17)
            long.append((Array(object.utf8), object, 0))
            long.append((Array(plain.utf8) + number(UInt64(offset) * 1_000_003) + Array(plain.utf8), plain + String(UInt64(offset) * 1_000_003) + plain, 1))
        }
        let slot = UnsafeMutablePointer<pmll_audit_slot_t>.allocate(capacity: 1)
        defer { slot.deallocate() }
        var previous = (0..<32).map { UInt8($0 * 7 & 0xff) }
        for (i, (text, object, numbers)) in (cases + long).enumerated() {
            UnsafeMutableRawPointer(slot).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<pmll_audit_slot_t>.size)
            let command = i == 1 ? "cp\"m\\d" : "pmll"
            slot.pointee.time_ns = i == 2 ? -1_234_567 : 1_764_000_000_123_456_789
            slot.pointee.pid = i == 3 ? -5 : 4242
            slot.pointee.uid = UInt32.max - UInt32(i)
            withUnsafeMutableBytes(of: &slot.pointee.comm) { $0.copyBytes(from: Array(command.utf8)) }
            withUnsafeMutableBytes(of: &slot.pointee.text) { $0.copyBytes(from: text) }
            slot.pointee.text_length = UInt32(text.count)
            let event: StaticString = "queue.submit", outcome: StaticString = "failed"
            var hash = [UInt8](repeating: 0, count: 32)
            var line = [UInt8](repeating: 0, count: Int(PMLL_AUDIT_LINE_MAX))
            let length = line.withUnsafeMutableBytes { l in
                hash.withUnsafeMutableBufferPointer { h in
                    previous.withUnsafeBufferPointer { p in
                        event.withUTF8Buffer { e in
                            outcome.withUTF8Buffer { o in
                                pmll_audit_format_line(l.baseAddress!.assumingMemoryBound(to: CChar.self), slot, UInt64(1000 + i),
                                                       UnsafeRawPointer(e.baseAddress!).assumingMemoryBound(to: CChar.self), e.count,
                                                       UnsafeRawPointer(o.baseAddress!).assumingMemoryBound(to: CChar.self), o.count,
                                                       p.baseAddress!, h.baseAddress!, numbers)
                            }
                        }
                    }
                }
            }
            let body = AuditLine.body(AuditLine.Fields(seq: UInt64(1000 + i), timeNanoseconds: slot.pointee.time_ns, pid: slot.pointee.pid,
                                                      uid: slot.pointee.uid, command: command, event: "queue.submit", object: object, outcome: "failed"))
            let expectedHash = AuditLine.chain(previous: previous, body: body)
            #expect(hash == expectedHash, "record \(i): hash")
            #expect(Array(line[..<length]) == body + AuditLine.hashTail(expectedHash), "record \(i): \(String(decoding: line[..<length], as: UTF8.self))")
            let plain = line.withUnsafeMutableBytes { pmll_audit_object_text($0.baseAddress!.assumingMemoryBound(to: CChar.self), slot, numbers) }
            #expect(Array(line[..<plain]) == Array(object.utf8), "record \(i): the object, unescaped")
            previous = hash
        }
        // A mark without its 8 bytes (a writer killed while writing them) is a byte like others;
        // in a version 1 ring (text only), a mark is never a number.
        for (text, numbers) in [(Array("cut ".utf8) + [0xFF, 1, 2], Int32(1)), (number(5), 0)] {
            withUnsafeMutableBytes(of: &slot.pointee.text) { $0.copyBytes(from: text) }
            slot.pointee.text_length = UInt32(text.count)
            var out = [UInt8](repeating: 0, count: Int(PMLL_AUDIT_LINE_MAX))
            let n = out.withUnsafeMutableBytes { pmll_audit_object_text($0.baseAddress!.assumingMemoryBound(to: CChar.self), slot, numbers) }
            #expect(Array(out[..<n]) == text)
        }
    }

    /// A record's object is written piece by piece with moves sized to each piece (one to
    /// three bytes, four to seven, eight to sixteen, more): every size, a number of every
    /// length, and a piece cut at the slot's end, before the character the limit falls in.
    @Test func anObjectIsWrittenExactlyWhateverThePiecesSizes() {
        let capacity = 64
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity + 16, alignment: 8)
        defer { raw.deallocate() }
        let area = UnsafeMutableRawBufferPointer(rebasing: raw[..<capacity])
        func written(_ fill: (inout AuditText) -> Void) -> [UInt8] {
            raw.initializeMemory(as: UInt8.self, repeating: 0xEE)
            var text = AuditText(area)
            fill(&text)
            let length = text.finish()
            #expect(raw[capacity...].allSatisfy { $0 == 0xEE }, "nothing written past the slot")
            return Array(raw[..<length])
        }
        let source = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)
        for size in 0...source.count {
            for offset in [0, 1, 7] {   // where the piece starts in the slot
                let piece = Array(source.prefix(size))
                let out = written { text in
                    text.add(String("ABCDEFG".prefix(offset)))
                    piece.withUnsafeBytes { text.add($0) }
                    text.add("|")
                }
                #expect(out == Array("ABCDEFG".prefix(offset).utf8) + piece + [UInt8(ascii: "|")], "size \(size) at \(offset)")
            }
        }
        var powers: [UInt64] = [1]
        while powers.last! <= UInt64.max / 10 { powers.append(powers.last! * 10) }
        let values: [UInt64] = [0, 1234, 1 << 32, UInt64.max] + powers + powers.map { $0 - 1 } + powers.map { $0 + 1 }
        for value in values {
            #expect(written { $0.add("n="); $0.add(value) } == Array("n=\(value)".utf8))
        }
        let name = String(repeating: "é", count: 40)   // 80 bytes of two-byte characters
        let cut = written { $0.add("x"); $0.add(name) }
        #expect(cut == Array(("x" + String(repeating: "é", count: 31)).utf8), "cut before the character the limit falls in")
        #expect(written { $0.add(String(repeating: "y", count: 60)); $0.add(UInt64.max) } == Array((String(repeating: "y", count: 60) + "1844").utf8))
        let kind: (CChar, CChar, CChar, CChar) = (107, 105, 110, 0)   // "kin", NUL-terminated in a fixed field
        #expect(withUnsafeBytes(of: kind) { field in written { $0.add(cString: field.baseAddress!, capacity: 4) } } == Array("kin".utf8))
    }

    /// In a version 2 ring a number is the mark and its 8 bytes (the drain writes the digits);
    /// where 9 bytes no longer fit, the digits that do; a cut at the slot's end never goes back
    /// into a number's bytes (which can look like UTF-8 continuation bytes); a mark in a field
    /// read from the pool is not taken for a number.
    @Test func aVersionTwoRingsRecordHoldsNumbersAsBinary() {
        let capacity = 40
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 8)
        defer { raw.deallocate() }
        func written(_ fill: (inout AuditText) -> Void) -> [UInt8] {
            var text = AuditText(raw, binaryNumbers: true)
            fill(&text)
            return Array(raw[..<text.finish()])
        }
        func number(_ v: UInt64) -> [UInt8] { [0xFF] + withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        let ends = UInt64(0xBFBF_BFBF_BFBF_BF80)   // every byte a continuation byte
        #expect(written { $0.add("t="); $0.add(UInt64(42)); $0.add(" at "); $0.add(ends) } == Array("t=".utf8) + number(42) + Array(" at ".utf8) + number(ends))
        #expect(written { $0.add(String(repeating: "y", count: 31)); $0.add(ends); $0.add("é") } == Array(String(repeating: "y", count: 31).utf8) + number(ends),
                "nothing of the number cut, nothing after it that did not fit")
        #expect(written { $0.add(String(repeating: "y", count: 33)); $0.add(UInt64.max) } == Array((String(repeating: "y", count: 33) + "1844674").utf8))
        let kind: (UInt8, UInt8, UInt8, UInt8) = (107, 0xFF, 110, 0)
        #expect(withUnsafeBytes(of: kind) { field in written { $0.add(cString: field.baseAddress!, capacity: 4) } } == Array("k\u{FFFD}n".utf8))
    }

    /// Drains of many long records: a drain writes its lines 64 KiB at a time from one buffer
    /// (AuditLineBuffer) and rotates files mid-drain; every record arrives once, in order,
    /// byte for byte, and the chain verifies.
    @Test func longDrainsWriteEveryRecordOnceAcrossStepsAndFiles() throws {
        let scratch = Scratch()
        var options = PoolOptions()
        options.auditFileBytes = 300_000   // about 400 lines a file: a dozen files, rotated mid-drain
        let pool = try Pool.open(path: scratch.file("long.pool"), options: options)
        let count = 5_000
        for i in 0..<count {
            pool.audit(.commit) { $0.add("long "); $0.add(UInt64(i)); $0.add(" " + String(repeating: "\u{e9}x\\\"", count: 80)) }
        }
        let verified = try pool.verifyAuditLog()
        #expect(verified.problem == nil, "\(verified)")
        #expect(verified.files >= 5, "\(verified)")
        let records = try pool.auditRecords().filter { $0.object.hasPrefix("long ") }
        #expect(records.map(\.object) == (0..<count).map { "long \($0) " + String(repeating: "\u{e9}x\\\"", count: 80) })
    }

    /// The drainer thread naps between drains only while records come fast: once they stop it
    /// sleeps until kicked (woken by its 100 ms timeout, about 5 times in half a second; a nap
    /// that never ended would wake it about 2,500 times).
    @Test func theDrainerThreadSleepsOnceRecordsStop() throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("idle.pool"))
        for i in 0..<50_000 { pool.audit(.commit) { $0.add("burst "); $0.add(UInt64(i)) } }
        usleep(300_000)   // the last records drained, the last nap over
        // This pool's own thread: other tests' pools run threads of the same name, which may
        // end at any moment (a CI run read one that had just exited).
        let drainer = try #require(pool.auditDrainer.threadID, "the drainer thread runs")
        let comm = try String(contentsOfFile: "/proc/self/task/\(drainer)/comm", encoding: .utf8)
        #expect(comm.hasPrefix(AuditDrainer.threadName), "named as top -H shows it: \(comm)")
        func switches() throws -> Int {
            let status = try String(contentsOfFile: "/proc/self/task/\(drainer)/status", encoding: .utf8)
            let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("voluntary_ctxt_switches:") })
            return try #require(Int(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)))
        }
        let before = try switches()
        usleep(500_000)
        let woken = try switches() - before
        #expect(woken <= 25, "the drainer thread woke \(woken) times in 0.5 s with nothing to drain")
        #expect(pool.auditRing!.backlog == 0)
    }

    /// An append predicts the next number and the slot's state and swaps first: a wrong
    /// prediction must still take exactly the next number, and never a slot given up as a gap.
    @Test func anAppendWithAWrongPredictionTakesTheRightNumberAndSlot() throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("guess.pool"))
        let ring = try #require(pool.auditRing)
        let first = ring.nextSeq
        for (i, guess) in [first, 0, 1, first + 5, first + 100_000].enumerated() {
            let seq = try #require(ring.reserve(guess: guess), "guess \(guess)")
            #expect(seq == first + UInt64(i), "guess \(guess)")
            #expect(ring.write(seq, token: pool.token, pid: 1, uid: 0, comm: [], event: .commit, outcome: .ok) { $0.add("x") })
            #expect(ring.isComplete(seq))
        }
        // A number the drainer already gave up as a gap is not written: the caller takes another.
        let seq = try #require(ring.reserve())
        pmll_store64(pmll_audit_slot_state(ring.slot(seq)), seq << 2 | UInt64(PMLL_AUDIT_GAP))
        #expect(!ring.write(seq, token: pool.token, pid: 1, uid: 0, comm: [], event: .commit, outcome: .ok) { $0.add("x") })
        #expect(!ring.isComplete(seq))
    }

    /// A record leaves its checksum out only where no power failure can tear it (a version 3
    /// ring in a pool on tmpfs); on a disk, or in a version 2 ring (which a build reading only
    /// version 2 may drain), it carries one, and a record torn after completion is refused.
    @Test func aRecordLeavesItsChecksumOutOnlyOnTmpfs() throws {
        func append(_ pool: Pool, _ text: String) throws -> (AuditRing, UInt64) {
            let ring = try #require(pool.auditRing)
            let seq = try #require(ring.reserve())
            #expect(ring.write(seq, token: pool.token, pid: 1, uid: 0, comm: [], event: .commit, outcome: .ok) { $0.add(text) })
            return (ring, seq)
        }
        func tear(_ ring: AuditRing, _ seq: UInt64) {
            withUnsafeMutableBytes(of: &ring.slot(seq).pointee.text) { $0[1] ^= 0x20 }
        }
        let memory = Scratch(in: "/dev/shm"), disk = Scratch(in: "/var/tmp")
        do {
            let pool = try Pool.open(path: memory.file("m.pool"))
            let (ring, seq) = try append(pool, "in memory")
            #expect(ring.writesUnchecked && ring.slot(seq).pointee.text_length == 9 | PMLL_AUDIT_UNCHECKED)
            #expect(ring.isComplete(seq))
            try pool.auditDrain(until: 0)
            #expect(try pool.auditRecords().contains { $0.object == "in memory" })
            #expect(try pool.verifyAuditLog().problem == nil)
        }
        do {
            let pool = try Pool.open(path: disk.file("d.pool"))
            let (ring, seq) = try append(pool, "on a disk")
            #expect(!ring.writesUnchecked && ring.slot(seq).pointee.text_length == 9)
            #expect(ring.isComplete(seq))
            tear(ring, seq)
            #expect(!ring.isComplete(seq), "a torn record on a disk is found by its checksum")
            tear(ring, seq)   // put back: the pool drains it as it closes
        }
        // A version 2 ring in memory: checksums, and a record without one is not taken.
        let path = memory.file("v2.pool")
        do {
            let pool = try Pool.open(path: path)
            let h = try #require(pool.auditRing).header
            h.pointee.version = PMLL_AUDIT_VERSION_BINARY_NUMBERS
            h.pointee.checksum = pmll_crc32c(0, h, 20)
        }
        let pool = try Pool.open(path: path)
        let (ring, seq) = try append(pool, "version 2")
        #expect(!ring.readsUnchecked && !ring.writesUnchecked && ring.binaryNumbers)
        #expect(ring.slot(seq).pointee.text_length == 9 && ring.isComplete(seq))
        ring.slot(seq).pointee.text_length |= PMLL_AUDIT_UNCHECKED
        #expect(!ring.isComplete(seq))
    }

    /// A pool whose ring an earlier build made (version 1) keeps getting text only, numbers in
    /// digits, so that such a build draining it writes the same lines; a ring of a later format
    /// is left alone, with a message that says so.
    @Test func aRingFromAnEarlierBuildKeepsItsRecordsTextOnly() throws {
        let scratch = Scratch()
        let path = scratch.file("v1.pool")
        func setVersion(_ version: UInt32) throws {
            let pool = try Pool.open(path: path)
            let h = try #require(pool.auditRing).header
            h.pointee.version = version
            h.pointee.checksum = pmll_crc32c(0, h, 20)
        }
        try setVersion(PMLL_AUDIT_VERSION_TEXT_ONLY)
        do {
            let pool = try Pool.open(path: path)
            let ring = try #require(pool.auditRing)
            #expect(!ring.binaryNumbers)
            let seq = try #require(ring.reserve())
            #expect(ring.write(seq, token: pool.token, pid: 1, uid: 0, comm: [], event: .commit, outcome: .ok) { $0.add("n="); $0.add(UInt64(1234)) })
            let s = ring.slot(seq)
            #expect(withUnsafeBytes(of: s.pointee.text) { Array($0.prefix(Int(s.pointee.text_length))) } == Array("n=1234".utf8))
            try pool.auditDrain(until: 0)
            let directory = AuditLine.directory(ofPool: path)
            let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".log") }.sorted()
            let log = try String(contentsOfFile: directory + "/" + files.last!, encoding: .utf8)
            #expect(log.contains(#""object":"n=1234""#), "\(log)")
        }
        // A later build's ring: this process appends nothing to it (its records would not be
        // the later format's), says why, and the pool stays usable.
        try setVersion(PMLL_AUDIT_VERSION + 1)
        let pool = try Pool.open(path: path)
        #expect(pool.auditRing == nil)
        #expect { try AuditRing(memory: pool.memory, path: path) } throws: { "\($0)".contains("audit ring has format version \(PMLL_AUDIT_VERSION + 1), newer than this build reads") }
    }

    /// The look for processes on a former file of a pool's path: it finds one (this process maps
    /// a file that was then deleted and replaced at the path, and holds its SESSION byte as an
    /// attached process does); it is skipped while the directory's fingerprint, or the pool
    /// file's, is its memo's; a memo is stored only once its time has settled (50 ms on the local
    /// file system of the scratch directory); a file renamed into the directory changes the
    /// directory's fingerprint, and a file renamed away and back changes its own.
    @Test func aFormerPoolFileIsLookedForUntilAPathIsKnownUnchanged() throws {
        let scratch = Scratch()
        let path = scratch.file("p.pool")
        #expect(FileManager.default.createFile(atPath: path, contents: Data(repeating: 1, count: 4096)))
        let fd = open(path, O_RDWR)
        #expect(fd >= 0)
        defer { close(fd) }
        #expect(pmll_ofd_lock(fd, PMLL_LOCKBYTE_SESSION, PMLL_RANGE_SHARED, 0) == 0)
        #expect(pmll_other_pool_open(0) == 1)
        let mapped = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)!
        #expect(unlink(path) == 0)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(repeating: 2, count: 4096)))
        var directory = stat(), file = stat()
        #expect(stat(scratch.path, &directory) == 0 && stat(path, &file) == 0)
        let late = max(FormerPoolFile.nanoseconds(directory.st_mtim), FormerPoolFile.nanoseconds(file.st_ctim)) + 3_000_000_000
        let early = late - 2_990_000_000
        let directoryPrint = FormerPoolFile.fingerprint(directory.st_dev, directory.st_ino, directory.st_mtim)
        let filePrint = FormerPoolFile.fingerprint(file.st_dev, file.st_ino, file.st_ctim)
        var directoryMemo: UInt64 = 0, fileMemo: UInt64 = 0
        #expect(throws: PMLLError.self) {
            try FormerPoolFile.refuseIfReplaced(path: path, file: file, directoryMemo: &directoryMemo, fileMemo: &fileMemo, now: late)
        }
        #expect(directoryMemo == 0 && fileMemo == 0)
        do throws(PMLLError) {
            try FormerPoolFile.refuseIfStillMapped(path: path)
            Issue.record("not found")
        } catch {
            guard case let .poolDeletedWhileOpen(_, pid, _) = error else { Issue.record("\(error)"); return }
            #expect(pid == getpid())
        }
        // Known unchanged, by either memo: not looked for (a memo is what a look that found nothing leaves).
        directoryMemo = directoryPrint
        try FormerPoolFile.refuseIfReplaced(path: path, file: file, directoryMemo: &directoryMemo, fileMemo: &fileMemo, now: late)
        directoryMemo = 0
        fileMemo = filePrint
        try FormerPoolFile.refuseIfReplaced(path: path, file: file, directoryMemo: &directoryMemo, fileMemo: &fileMemo, now: late)
        munmap(mapped, 4096)
        // Nothing maps it now: a look finds nothing; the memos are kept only for settled times.
        fileMemo = 0
        try FormerPoolFile.refuseIfReplaced(path: path, file: file, directoryMemo: &directoryMemo, fileMemo: &fileMemo, now: early)
        #expect(directoryMemo == 0 && fileMemo == 0)
        try FormerPoolFile.refuseIfReplaced(path: path, file: file, directoryMemo: &directoryMemo, fileMemo: &fileMemo, now: late)
        #expect(directoryMemo == directoryPrint && fileMemo == filePrint)
        // Past the settling time, as a stored memo would be: the file moved away and back.
        Thread.sleep(forTimeInterval: 0.06)
        let aside = scratch.file("aside")
        #expect(rename(path, aside) == 0 && rename(aside, path) == 0)
        var back = stat()
        #expect(stat(path, &back) == 0 && back.st_ino == file.st_ino)
        #expect(FormerPoolFile.fingerprint(back.st_dev, back.st_ino, back.st_ctim) != fileMemo)
        let other = scratch.file("other")
        #expect(FileManager.default.createFile(atPath: other, contents: Data()))
        #expect(rename(other, path) == 0)
        var moved = stat()
        #expect(stat(scratch.path, &moved) == 0)
        #expect(FormerPoolFile.fingerprint(moved.st_dev, moved.st_ino, moved.st_mtim) != directoryMemo)
    }

    /// /proc/locks lines: only an OFD lock on the INIT or SESSION byte of another inode counts
    /// (the inode is the third part of MAJ:MIN:INODE; a waiter's line has "->").
    @Test func procLocksLinesNameOtherPoolsOnly() {
        let session = String(PMLL_LOCKBYTE_SESSION), initByte = String(PMLL_LOCKBYTE_INIT)
        #expect(pmll_locks_line_is_other_pool("1: OFDLCK ADVISORY  READ -1 fe:00:16319022 \(session) \(session)", 7) == 1)
        #expect(pmll_locks_line_is_other_pool("1: OFDLCK ADVISORY  READ -1 fe:00:16319022 \(session) \(session)", 16319022) == 0)
        #expect(pmll_locks_line_is_other_pool("2: -> OFDLCK ADVISORY  WRITE -1 00:1a:99 \(initByte) \(initByte)", 7) == 1)
        #expect(pmll_locks_line_is_other_pool("3: OFDLCK ADVISORY  WRITE -1 fe:00:16319022 1099511631872 1099511631872", 7) == 0)   // a liveness byte
        #expect(pmll_locks_line_is_other_pool("4: POSIX  ADVISORY  READ 1234 fe:00:55 \(session) \(session)", 7) == 0)
        #expect(pmll_locks_line_is_other_pool("5: FLOCK  ADVISORY  WRITE 1234 fe:00:55 0 EOF", 7) == 0)
    }

    /// A takeover prepared while waiting for one owner describes only that owner's death: a
    /// death record with another pid or command (its slot moved on: "?"), another owner or
    /// another cause gets the text made from the record instead.
    @Test func aPreparedTakeoverDescribesOnlyItsOwnersDeath() throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("p.pool"))
        let entry = pool.memory.lock(try pool.lock(named: "x", level: .package).index)
        let prepared = try #require(pool.prepareTakeover(entry, owner: pool.token.rawValue, shared: false))
        LockDeath.record(entry, owner: pool.token, memory: pool.memory, detectedAt: 1)
        let made = Pool.takeoverText(entry, death: LockDeath.read(entry), shared: false)
        #expect(made.hasPrefix("lock 'x' (package) taken over: previous holder pid \(getpid()) ("))
        #expect(prepared.text(for: entry) == made)
        entry.pointee.dead_pid += 1
        #expect(prepared.text(for: entry) == nil)
        entry.pointee.dead_pid -= 1
        writeFixedCString("?", into: &entry.pointee.dead_comm)
        #expect(prepared.text(for: entry) == nil)
        LockDeath.record(entry, owner: pool.token, memory: pool.memory, detectedAt: 1, cause: LockDeath.causeInconsistent)
        #expect(prepared.text(for: entry) == nil)
        LockDeath.record(entry, owner: OwnerToken(rawValue: pool.token.rawValue ^ 1), memory: pool.memory, detectedAt: 1)
        #expect(prepared.text(for: entry) == nil)
        LockDeath.record(entry, owner: pool.token, memory: pool.memory, detectedAt: 2)
        #expect(prepared.text(for: entry) == made)
    }

    /// Mapping the ring for writing (a waiter's preparation) maps the pages of the slots the
    /// next records will use, from the next number on and around the end, and not the rest of
    /// a large ring: asked of /proc/self/pagemap, page by page.
    @Test func aWaiterMapsTheRingPagesItsNextRecordsWillUse() throws {
        let pagemap = open("/proc/self/pagemap", O_RDONLY)
        try #require(pagemap >= 0)
        defer { close(pagemap) }
        func mapped(_ slot: UnsafeMutablePointer<pmll_audit_slot_t>) -> Bool {
            var entry: UInt64 = 0
            let offset = off_t(UInt(bitPattern: slot) / UInt(PoolLayout.page) * 8)
            return pread(pagemap, &entry, 8, offset) == 8 && entry & (1 << 63) != 0
        }
        let scratch = Scratch(in: "/dev/shm")
        var options = PoolOptions()
        options.auditRingSlots = 8192   // 4 MiB of slots
        let pool = try Pool.open(path: scratch.file("r.pool"), options: options)
        let ring = try #require(pool.auditRing)
        // An empty ring whose next record takes the tenth slot before the end. (Slot 0 shares
        // its page with the ring's header, mapped already.)
        let start = UInt64(4 * 8192 - 10)
        pmll_store64_release(pmll_audit_next_seq(ring.header), start)
        pmll_store64_release(&ring.header.pointee.drained, start)
        let probes = [8182, 8191, 16, 53, 60, 2037, 2100, 4096].map { ($0, ring.slots + $0) }
        #expect(probes.filter { mapped($0.1) }.map(\.0) == [], "mapped before")
        ring.mapForWriting(records: 64)   // slots 8182...8191 and 0...53 (page-rounded: to 55)
        #expect(probes.filter { mapped($0.1) }.map(\.0) == [8182, 8191, 16, 53], "after 64 records")
        ring.mapForWriting()              // 2,048 records: 8182...8191 and 0...2037
        #expect(probes.filter { mapped($0.1) }.map(\.0) == [8182, 8191, 16, 53, 60, 2037], "after 2,048 records")
    }
}
