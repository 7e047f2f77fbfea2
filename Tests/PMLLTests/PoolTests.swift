import CPMLL
import Foundation
import PMLL
import Testing

@Suite("Pool file", .serialized)
struct PoolTests {
    @Test func createsWithMode0600AndReopens() throws {
        let scratch = Scratch()
        let path = scratch.file("a.pool")
        do {
            let pool = try Pool.open(path: path)
            #expect(pool.openReport.created)
            #expect(pool.openReport.volatileReset == .created)
        }
        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect(st.st_size == 16 << 20)
        // Reopened by a process that spawns nothing: this test process runs other suites'
        // children, which may share its descriptors between fork and exec.
        let again = try Child.worker("hold", "--pool", path, "--seconds", "0")
        let event = try #require(again.waitForEvent("acquired"))
        #expect(event["created"] as? Bool == false)
        #expect(event["reset"] as? String == "no-other-process")
        again.wait()
        // Nothing is left behind by creation.
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path) == ["a.pool"])
    }

    /// A close frees the process slot and closes the descriptor either way; with
    /// `unmapsAtClose` off (the CLI's `lock` and `flock`, which exit next) the mapping is left
    /// to the process's exit.
    @Test func aCloseLeavesTheMappingToExitOnlyWhenAsked() throws {
        let scratch = Scratch()
        func mapped(_ path: String) throws -> Bool {
            try String(contentsOfFile: "/proc/self/maps", encoding: .utf8).contains(path)
        }
        for unmaps in [true, false] {
            let path = scratch.file("m-\(unmaps).pool")
            var options = PoolOptions()
            options.unmapsAtClose = unmaps
            do {
                let pool = try Pool.open(path: path, options: options)
                #expect(try mapped(path))
                #expect(pool.status().processes.count == 1)
            }
            #expect(try mapped(path) == !unmaps)
            // The slot was freed at the close (a read-only attach resets nothing and sees
            // the table as the close left it).
            var reading = PoolOptions()
            reading.readOnly = true
            #expect(try Pool.open(path: path, options: reading).status().processes.isEmpty)
        }
    }

    @Test func groupSharedPoolIs0660() throws {
        let scratch = Scratch()
        var options = PoolOptions()
        options.groupShared = true
        _ = try Pool.open(path: scratch.file("g.pool"), options: options)
        var st = stat()
        stat(scratch.file("g.pool"), &st)
        #expect(st.st_mode & 0o777 == 0o660)
    }

    @Test func openingNeverResizes() throws {
        let scratch = Scratch()
        var small = PoolOptions()
        small.size = 4 << 20
        _ = try Pool.open(path: scratch.file("s.pool"), options: small)
        var big = PoolOptions()
        big.size = 64 << 20
        let pool = try Pool.open(path: scratch.file("s.pool"), options: big)
        #expect(pool.status().sizeBytes == 4 << 20)
        var st = stat()
        stat(scratch.file("s.pool"), &st)
        #expect(st.st_size == 4 << 20)
    }

    @Test func concurrentCreationHasExactlyOneCreator() throws {
        let scratch = Scratch()
        let path = scratch.file("race.pool")
        let children = try (0..<8).map { _ in try Child.worker("hold", "--pool", path, "--seconds", "0.2") }
        var created = 0
        for child in children {
            let event = try #require(child.waitForEvent("acquired"))
            if event["created"] as? Bool == true { created += 1 }
            #expect(child.wait() == 0)
        }
        #expect(created == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path) == ["race.pool"])
    }

    @Test func defaultPathFollowsEnvironment() throws {
        let scratch = Scratch()
        let env = ["XDG_STATE_HOME": scratch.path, "PMLL_POOL": ""]
        let result = try run(Binaries.pmll, ["lock", "d", "--", "true"], environment: env)
        #expect(result.status == 0)
        #expect(FileManager.default.fileExists(atPath: scratch.path + "/pmll/default.pool"))
        let explicit = try run(Binaries.pmll, ["lock", "d", "--", "true"], environment: ["PMLL_POOL": scratch.file("env.pool")])
        #expect(explicit.status == 0)
        #expect(FileManager.default.fileExists(atPath: scratch.file("env.pool")))
    }

    // MARK: bad files: typed errors, and the file is never written

    @Test func rejectsAFileThatIsNotAPool() throws {
        let scratch = Scratch()
        let path = scratch.file("text")
        try Data(repeating: 0x41, count: 10_000).write(to: URL(fileURLWithPath: path))
        expectUntouched(path) {
            #expect(throws: PMLLError.notAPool(path: path)) { try Pool.open(path: path) }
        }
        let empty = scratch.file("empty")
        #expect(FileManager.default.createFile(atPath: empty, contents: Data()))
        #expect(throws: PMLLError.notAPool(path: empty)) { try Pool.open(path: empty) }
        let cli = try run(Binaries.pmll, ["status", "--pool", path])
        #expect(cli.status == 65)
        #expect(cli.stderr.hasPrefix("pmll: "))
    }

    @Test func rejectsTruncatedAndCorruptPools() throws {
        let scratch = Scratch()
        let path = scratch.file("p.pool")
        _ = try Pool.open(path: path)
        let original = try #require(FileManager.default.contents(atPath: path))

        for length in [100, 4095, 8 << 20] {
            try original.prefix(length).write(to: URL(fileURLWithPath: path))
            expectUntouched(path) {
                #expect(throws: PMLLError.self) { try Pool.open(path: path) }
                do { _ = try Pool.open(path: path) } catch let error as PMLLError {
                    guard case .corruptPool = error else { Issue.record("truncated to \(length): \(error)"); return }
                } catch { Issue.record("\(error)") }
            }
        }
        var flipped = original
        flipped[100] ^= 0xFF
        try flipped.write(to: URL(fileURLWithPath: path))
        expectUntouched(path) {
            #expect(throws: PMLLError.corruptPool(path: path, reason: "header checksum mismatch")) { try Pool.open(path: path) }
        }
        #expect(try run(Binaries.pmll, ["status", "--pool", path]).status == 65)
    }

    @Test func rejectsUnknownFormatVersion() throws {
        let scratch = Scratch()
        let path = scratch.file("v.pool")
        _ = try Pool.open(path: path)
        var bytes = try #require(FileManager.default.contents(atPath: path))
        bytes.withUnsafeMutableBytes { raw in
            let header = raw.baseAddress!.assumingMemoryBound(to: pmll_header_t.self)
            header.pointee.format_version = 99
            header.pointee.header_checksum = UInt64(pmll_crc32c(0, header, Int(PMLL_HEADER_CHECKED_BYTES)))
        }
        try bytes.write(to: URL(fileURLWithPath: path))
        expectUntouched(path) {
            #expect(throws: PMLLError.unsupportedFormatVersion(path: path, found: 99, supported: 1)) { try Pool.open(path: path) }
        }
    }

    /// The header records the layout signature of the build that created the pool; a pool of
    /// another layout, or of the other byte order, is refused (exit 65 at the CLI) and left as
    /// it is. A pool from before signatures (0) is still opened.
    @Test func rejectsAPoolOfAnotherLayoutOrByteOrder() throws {
        let scratch = Scratch()
        let path = scratch.file("l.pool")
        do {
            let pool = try Pool.open(path: path)
            #expect(pool.openReport.created)
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path))[120..<128].contains { $0 != 0 })   // recorded at creation
        try editHeader(path) { $0.pointee.layout_signature ^= 0x10 }
        expectUntouched(path) {
            #expect(throws: PMLLError.self) { try Pool.open(path: path) }
        }
        let cli = try run(Binaries.pmll, ["status", "--pool", path])
        #expect(cli.status == 65)
        #expect(cli.stderr.hasPrefix("pmll: pool '\(path)' is incompatible with this pmll: written by a build whose pool layout differs"), "\(cli.stderr)")
        // 0 on a store of 256-byte slots is damage (every pre-signature build wrote 128-byte
        // slots); on a store of 128-byte slots it is such a pool, and opens.
        try editHeader(path) { $0.pointee.layout_signature = 0x0 }
        #expect(throws: PMLLError.corruptPool(path: path, reason: "state store version \(PMLL_STORE_VERSION) disagrees with the header's layout signature")) {
            try Pool.open(path: path)
        }
        let narrow = scratch.file("narrow.pool")
        var options = PoolOptions()
        options.storeVersion = PMLL_STORE_VERSION_NARROW
        _ = try Pool.open(path: narrow, options: options)
        try editHeader(narrow) { $0.pointee.layout_signature = 0x0 }
        _ = try Pool.open(path: narrow)
        try editHeader(path) { $0.pointee.byte_order = 0x0403_0201 }
        #expect(throws: PMLLError.incompatibleLayout(path: path, reason: "it was written on a machine of the other byte order")) { try Pool.open(path: path) }
    }

    @Test func rejectsAPoolOwnedByAnotherUser() throws {
        let scratch = Scratch()
        let path = scratch.file("o.pool")
        _ = try Pool.open(path: path)
        #expect(chown(path, 12345, 12345) == 0)
        expectUntouched(path) {
            #expect(throws: PMLLError.foreignOwner(path: path, ownerUID: 12345)) { try Pool.open(path: path) }
        }
        // Writing commands are refused; reading ones fall back to a read-only view.
        #expect(try run(Binaries.pmll, ["lock", "--pool", path, "x", "--", "/bin/true"]).status == 77)
        try expectUntouched(path) {
            let status = try run(Binaries.pmll, ["status", "--pool", path])
            #expect(status.status == 0 && status.stdout.contains("(read-only view)"), "\(status)")
        }
    }

    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")))
    func permissionDeniedForAnotherUser() throws {
        let scratch = Scratch()
        chmod(scratch.path, 0o755)
        let path = scratch.file("perm.pool")
        _ = try Pool.open(path: path)
        let result = try run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", Binaries.pmll, "status", "--pool", path])
        #expect(result.status == 77, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("pmll: permission denied"))
    }

    /// libpmem is loaded only to map a pool on DAX (or when $PMLL_MAP asks for it): a pool on
    /// an ordinary file system is mapped with mmap and made durable with msync, and the
    /// libpmem path still works when forced.
    @Test func libpmemIsLoadedOnlyWhereItMatters() throws {
        let scratch = Scratch()
        let path = scratch.file("map.pool")
        let probe = ["lock", "--pool", path, "x", "--", "/bin/sh", "-c", "grep -c libpmem /proc/$PPID/maps || true"]
        var r = try run(Binaries.pmll, probe)
        #expect(r.status == 0 && r.stdout == "0", "libpmem loaded for a pool on an ordinary file system: \(r)")
        r = try run(Binaries.pmll, probe, environment: ["PMLL_MAP": "libpmem"])
        #expect(r.status == 0 && (Int(r.stdout) ?? 0) > 0, "PMLL_MAP=libpmem did not map through libpmem: \(r)")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", path, "k=v"], environment: ["PMLL_MAP": "libpmem"]).status == 0)
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", path, "k"]).stdout == "v")
        #expect(try run(Binaries.pmll, ["check", "--pool", path], environment: ["PMLL_MAP": "libpmem"]).status == 0)
        r = try run(Binaries.pmll, ["status", "--pool", path], environment: ["PMLL_MAP": "dax-please"])
        #expect(r.status == 64 && r.stderr.hasPrefix("pmll: invalid pool options: PMLL_MAP must be auto, libpmem or mmap"), "\(r)")
    }

    @Test func rejectsBadPathsAndOptions() throws {
        #expect(throws: PMLLError.self) { try Pool.open(path: "") }
        #expect(throws: PMLLError.invalidPoolPath(path: "/nonexistent-dir/x.pool", reason: "directory '/nonexistent-dir' does not exist")) {
            try Pool.open(path: "/nonexistent-dir/x.pool")
        }
        var options = PoolOptions()
        options.create = false
        #expect(throws: PMLLError.poolNotFound(path: "/tmp/definitely-missing.pool")) {
            try Pool.open(path: "/tmp/definitely-missing.pool", options: options)
        }
        options = PoolOptions()
        options.processCapacity = 5000
        #expect(throws: PMLLError.self) { try Pool.open(path: "/tmp/x.pool", options: options) }
        let scratch = Scratch()
        #expect(throws: PMLLError.self) { try Pool.open(path: scratch.path) }   // a directory
    }

    // MARK: volatile state

    @Test func noResetWhileAnotherProcessIsAttached() throws {
        let scratch = Scratch()
        let path = scratch.file("r.pool")
        let holder = try Child.worker("hold", "--pool", path, "--lock", "r")
        _ = try #require(holder.waitForEvent("acquired"))
        // Another process is attached: no reset.
        let attached = try Pool.open(path: path)
        #expect(attached.openReport.volatileReset == nil)
        holder.kill()
        holder.wait()
        // Still attached ourselves: the dead holder is taken over by the protocol, not a reset.
        let lock = try attached.lock(named: "r", level: .package)
        let death = try lock.withLock(timeout: .seconds(5)) { $0.previousOwnerDeath }
        #expect(death?.pid == holder.pid)
    }

    @Test func rebootResetKeepsOwnerDeathForTheNextHolder() throws {
        let scratch = Scratch()
        let path = scratch.file("boot.pool")
        let holder = try Child.worker("hold", "--pool", path, "--lock", "b")
        _ = try #require(holder.waitForEvent("acquired"))
        holder.kill()
        holder.wait()
        let bootFile = scratch.file("boot_id")
        try "00000000-1111-2222-3333-444444444444\n".write(toFile: bootFile, atomically: true, encoding: .utf8)
        let after = try Child.worker("hold", "--pool", path, "--lock", "b", "--seconds", "0", environment: ["PMLL_BOOT_ID_FILE": bootFile])
        let event = try #require(after.waitForEvent("acquired"))
        #expect(event["reset"] as? String == "reboot")
        #expect(event["ownerDied"] as? Bool == true)
        #expect(event["deadPid"] as? Int == Int(holder.pid))
        #expect(after.wait() == 0)
        // Same boot id again, nobody attached: reset for "no other process", lock clean now.
        let third = try Child.worker("hold", "--pool", path, "--lock", "b", "--seconds", "0", environment: ["PMLL_BOOT_ID_FILE": bootFile])
        let e3 = try #require(third.waitForEvent("acquired"))
        #expect(e3["reset"] as? String == "no-other-process")
        #expect(e3["ownerDied"] as? Bool == false)
        third.wait()
    }

    @Test func processTableFull() throws {
        let scratch = Scratch()
        var options = PoolOptions()
        options.processCapacity = 2
        let a = try Pool.open(path: scratch.file("f.pool"), options: options)
        let b = try Pool.open(path: scratch.file("f.pool"), options: options)
        #expect(throws: PMLLError.poolFull(table: "process", capacity: 2)) { try Pool.open(path: scratch.file("f.pool"), options: options) }
        _ = (a, b)
    }

    /// A creator killed before its rename leaves `.NAME.PID.RAND.creating` behind. A young one
    /// may belong to a creator at work and stays; once it is a minute old and its creator is
    /// gone, the next process that creates or resets the pool removes it. A live PID's stays.
    @Test func temporariesOfKilledCreatorsAreRemoved() throws {
        let scratch = Scratch()
        let pool = scratch.file("p.pool")
        let leftovers = { (try? FileManager.default.contentsOfDirectory(atPath: scratch.path))?.filter { $0.hasSuffix(".creating") }.sorted() ?? [] }
        let victim = try run(Binaries.pmll, ["state", "set", "--pool", pool, "k=v"], environment: ["PMLL_CRASH_AT": "pool.created"])
        #expect(victim.status == 128 + SIGKILL)
        let left = leftovers()
        try #require(left.count == 1 && left[0].hasPrefix(".p.pool."))
        // A creator of our own PID (alive), aged too: must stay.
        let live = ".p.pool.\(getpid()).7.creating"
        #expect(FileManager.default.createFile(atPath: scratch.file(live), contents: Data()))
        let old = [timeval(tv_sec: time(nil) - 120, tv_usec: 0), timeval(tv_sec: time(nil) - 120, tv_usec: 0)]
        #expect(utimes(scratch.file(live), old) == 0)

        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "k=v"]).status == 0)   // creates the pool
        #expect(leftovers() == [left[0], live].sorted(), "a young temporary was removed")
        #expect(utimes(scratch.file(left[0]), old) == 0)
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", pool, "k"]).status == 0)     // resets the volatile state
        #expect(leftovers() == [live])

        // A directory that has not changed since a listing found nothing is not listed again:
        // a temporary slipped in with the directory's mtime put back stays; once the
        // directory changes, the next reset finds it.
        #expect(unlink(scratch.file(live)) == 0)
        sleep(3)                                                      // quiet for 2 s: the memo is kept
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", pool, "k"]).status == 0)
        var quiet = stat()
        #expect(stat(scratch.path, &quiet) == 0)
        let hidden = ".p.pool.2147483646.9.creating"                  // beyond any pid_max: no such process
        #expect(FileManager.default.createFile(atPath: scratch.file(hidden), contents: Data()))
        #expect(utimes(scratch.file(hidden), old) == 0)
        var times = [quiet.st_atim, quiet.st_mtim]
        #expect(utimensat(AT_FDCWD, scratch.path, &times, 0) == 0)
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", pool, "k"]).status == 0)
        #expect(leftovers() == [hidden], "the quiet directory was listed again")
        #expect(FileManager.default.createFile(atPath: scratch.file("other"), contents: Data()))
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", pool, "k"]).status == 0)
        #expect(leftovers() == [])
    }
}
