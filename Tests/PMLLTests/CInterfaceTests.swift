import Foundation
import Testing

/// The C interface as a C program meets it: built with the pkg-config line against the
/// installed prefix (Stress/run-tests installs it and sets PMLL_C_PREFIX), run without
/// LD_LIBRARY_PATH, next to Swift processes and `pmll` commands on the same pool.
@Suite("C interface", .serialized)
struct CInterfaceTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// The installed prefix, or a failure saying how to get one.
    static func prefix() throws -> String {
        guard let prefix = ProcessInfo.processInfo.environment["PMLL_C_PREFIX"], !prefix.isEmpty else {
            throw CInterfaceSetup(message: "PMLL_C_PREFIX is not set: run the suite through Stress/run-tests, or Stress/install-c-library PREFIX and set PMLL_C_PREFIX=PREFIX")
        }
        return prefix
    }

    static var environment: [String: String] {
        get throws { ["PKG_CONFIG_PATH": try prefix() + "/lib/pkgconfig", "LD_LIBRARY_PATH": ""] }
    }

    static var compiler: String {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/cc") ? "/usr/bin/cc" : "/opt/swift/usr/bin/clang"
    }

    /// `cc SOURCE $(pkg-config --cflags --libs pmll)`, as a user types it.
    static func build(_ source: String, into output: String, extra: String = "-std=c11 -Wall -Wextra -Werror -O2 -pthread") throws {
        let line = "\(compiler) \(extra) -o '\(output)' '\(source)' $(pkg-config --cflags --libs pmll)"
        let built = try run("/bin/sh", ["-c", line], environment: try environment)
        guard built.status == 0 else { throw CInterfaceSetup(message: "\(line) failed (\(built.status)): \(built.stderr)") }
    }

    /// The test program, built once per test process.
    static let program: Result<String, CInterfaceSetup> = {
        let output = NSTemporaryDirectory() + "pmll_c_test-\(getpid())"
        do {
            try build(repository + "/Tests/C/pmll_c_test.c", into: output)
            return .success(output)
        } catch let error as CInterfaceSetup {
            return .failure(error)
        } catch {
            return .failure(CInterfaceSetup(message: "\(error)"))
        }
    }()

    func c(_ arguments: String..., timeout: Double = 120) throws -> (status: Int32, stdout: String, stderr: String) {
        try run(try Self.program.get(), arguments, environment: try Self.environment, timeout: timeout)
    }

    @Test func theHeaderCompilesAsStrictC11AndAsCxx() throws {
        let header = try Self.prefix() + "/include/pmll.h"
        let cCheck = try run("/bin/sh", ["-c", "echo '#include <pmll.h>' | \(Self.compiler) -std=c11 -Wall -Wextra -Wpedantic -Werror -fsyntax-only -x c -I'\(try Self.prefix())/include' -"])
        #expect(cCheck.status == 0, "\(cCheck.stderr)")
        let cxx = FileManager.default.isExecutableFile(atPath: "/usr/bin/c++") ? "/usr/bin/c++" : "/opt/swift/usr/bin/clang++"
        let cxxCheck = try run("/bin/sh", ["-c", "echo '#include <pmll.h>\nint main() { PMLL_Lock l; return pmll_lock_try_acquire(&l) == CPM_RESULT_LOCK_TIMEOUT; }' | \(cxx) -std=c++17 -Wall -Wextra -Werror -fsyntax-only -x c++ -I'\(try Self.prefix())/include' -"])
        #expect(cxxCheck.status == 0, "\(cxxCheck.stderr)")
        #expect(FileManager.default.fileExists(atPath: header))
    }

    /// Exactly the functions pmll.h declares are exported: no Swift or helper symbols.
    @Test func theLibraryExportsExactlyTheHeadersFunctions() throws {
        let prefix = try Self.prefix()
        let header = try String(contentsOfFile: prefix + "/include/pmll.h", encoding: .utf8)
        let declared = Set(header.split(separator: "\n").compactMap { line -> String? in
            guard !line.hasPrefix(" "), !line.hasPrefix("#"), !line.hasPrefix("typedef"), let paren = line.firstIndex(of: "(") else { return nil }
            let name = line[..<paren].split(whereSeparator: { $0 == " " || $0 == "*" }).last.map(String.init)
            return name.flatMap { $0.hasPrefix("pmll_") || $0.hasPrefix("pmem_") || $0.hasPrefix("promise_") ? $0 : nil }
        })
        #expect(declared.count >= 45, "parsed \(declared.count) declarations from pmll.h")
        let nm = try run("/usr/bin/nm", ["-D", "--defined-only", prefix + "/lib/libpmll.so"])
        #expect(nm.status == 0, "\(nm.stderr)")
        let exported = Set(nm.stdout.split(separator: "\n").compactMap { line -> String? in
            let parts = line.split(separator: " ")
            guard parts.count == 3, parts[1].first!.isUppercase, parts[1] != "A" else { return nil }
            return String(parts[2].split(separator: "@").first!)
        })
        #expect(exported == declared, "exported but not declared: \(exported.subtracting(declared).sorted()); declared but not exported: \(declared.subtracting(exported).sorted())")
        let readelf = try run("/usr/bin/readelf", ["-d", prefix + "/lib/libpmll.so"])
        #expect(readelf.stdout.contains("libpmll.so.0") && readelf.stdout.contains("RUNPATH"), "\(readelf.stdout)")
    }

    /// C processes with threads, a Swift process and `pmll lock` commands increment one
    /// counter under one lock: every increment counts.
    @Test func cSwiftAndCLIShareOneLockWithoutALostUpdate() throws {
        let scratch = Scratch()
        let pool = scratch.file("c.pool"), counter = scratch.file("counter")
        let program = try Self.program.get()
        let env = try Self.environment
        let cs = try (0..<2).map { _ in try Child(program, ["counter", pool, "shared-counter", counter, "4", "1500"], environment: env) }
        let swift = try Child.worker("counter", "--pool", pool, "--lock", "shared-counter", "--file", counter, "--iterations", "1000", "--threads", "2")
        var cli = 0
        for _ in 0..<30 {
            let r = try run(Binaries.pmll, ["lock", "--pool", pool, "shared-counter", "--", program, "increment", counter], environment: env)
            #expect(r.status == 0, "\(r.stderr)")
            cli += 1
        }
        for child in cs { #expect(child.wait(timeout: 120) == 0, "\(child.stderr)") }
        #expect(swift.wait(timeout: 120) == 0, "\(swift.stderr)")
        #expect(readU64(counter, field: 0) == UInt64(2 * 4 * 1500 + 2 * 1000 + cli))
    }

    /// glibc's tst-robust8: a child with 9 threads takes, time-takes with an expired deadline,
    /// try-takes and releases random locks of 100, then dies holding some; the parent gets all
    /// 100, and exactly the ones the child held report the death (5 rounds).
    @Test func robust8Scenario() throws {
        let scratch = Scratch()
        let r = try c("robust8", scratch.file("r8.pool"), "5")
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("ok robust8"))
    }

    @Test func transactionsCommitAbortAndConflict() throws {
        let scratch = Scratch()
        let pool = scratch.file("tx.pool")
        let r = try c("tx", pool)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        // What C committed, the command line reads.
        let get = try run(Binaries.pmll, ["state", "get", "--pool", pool, "pkg/zlib/status"])
        #expect(get.stdout == "removed", "\(get.stderr)")
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", pool, "pkg/zlib/deps"]).status != 0)
    }

    @Test func everyMisuseIsACodeAndAPmllLine() throws {
        let scratch = Scratch()
        let r = try c("errors", scratch.path)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    }

    /// A C holder killed with SIGKILL: `pmll lock` takes the lock over and is told.
    @Test func aKilledCHolderIsReportedToTheCommandLine() throws {
        let scratch = Scratch()
        let pool = scratch.file("k.pool")
        let holder = try Child(try Self.program.get(), ["hold", pool, "cache", "3600"], environment: try Self.environment)
        defer { holder.kill(); holder.wait() }
        let deadline = Date().addingTimeInterval(20)
        while !holder.stdout.contains("acquired") && Date() < deadline { usleep(10_000) }
        #expect(holder.stdout.contains("acquired died=0"))
        #expect(try run(Binaries.pmll, ["lock", "--pool", pool, "--timeout", "0", "cache", "--", "true"]).status == 75)
        holder.kill()
        holder.wait()
        let taken = try run(Binaries.pmll, ["lock", "--pool", pool, "--timeout", "10", "cache", "--", "sh", "-c", "echo died=$PMLL_PREVIOUS_OWNER_DIED"])
        #expect(taken.status == 0, "\(taken.stderr)")
        #expect(taken.stdout == "died=1")
        #expect(taken.stderr.contains("pid \(holder.pid)"), "\(taken.stderr)")

        // A try-acquire takes over a dead owner too, and is told who it was.
        let second = try Child(try Self.program.get(), ["hold", pool, "cache", "3600"], environment: try Self.environment)
        defer { second.kill(); second.wait() }
        while !second.stdout.contains("acquired") && Date() < deadline.addingTimeInterval(20) { usleep(10_000) }
        #expect(try c("try", pool, "cache").stdout == "busy")
        second.kill()
        second.wait()
        let tried = try c("try", pool, "cache")
        #expect(tried.stdout.hasPrefix("taken died=1 pid=\(second.pid) command=pmll_c_test"), "\(tried.stdout) \(tried.stderr)")
    }

    /// A C process killed inside a queue operation: another C process's recovery callback gets
    /// it exactly once, and the queue runs again.
    @Test func recoveryHandsADeadProcesssOperationToTheCallback() throws {
        let scratch = Scratch()
        let pool = scratch.file("r.pool")
        let hung = try Child(try Self.program.get(), ["queue-hang", pool], environment: try Self.environment)
        let deadline = Date().addingTimeInterval(20)
        while !hung.stdout.contains("running") && Date() < deadline { usleep(10_000) }
        #expect(hung.stdout == "running")
        hung.kill()
        hung.wait()
        let r = try c("queue-recover", pool)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("recovering queue=downloads ticket=0 pid=\(hung.pid) attempts=1"), "\(r.stdout)")
    }

    /// CPM's start-up: pmll_init_global_system on $PMLL_POOL, NULL contexts, the default file
    /// queue, a non-persistent queue, shutdown.
    @Test func theGlobalSystemAndTheDefaultPool() throws {
        let scratch = Scratch()
        let r = try run(try Self.program.get(), ["global"], environment: try Self.environment.merging(["PMLL_POOL": scratch.file("g.pool")]) { $1 })
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    }

    /// A C process reads the operator's configuration as `pmll` does: with `audit.queue_steps`
    /// in $PMLL_CONFIG its queue operation leaves its submit and start records (without it, one
    /// record); a bad file fails pmll_init with the file named.
    @Test func theConfigurationAppliesToCProcesses() throws {
        let scratch = Scratch()
        func config(_ name: String, _ text: String) throws -> String {
            let path = scratch.file(name)
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        func global(_ pool: String, _ configuration: String) throws -> (status: Int32, stdout: String, stderr: String) {
            try run(try Self.program.get(), ["global"], environment: try Self.environment.merging(["PMLL_POOL": pool, "PMLL_CONFIG": configuration]) { $1 })
        }
        func events(_ pool: String) throws -> [String] { try AuditTests.events(pool).compactMap { $0["event"] as? String } }
        let plain = scratch.file("plain.pool"), stepped = scratch.file("steps.pool")
        let a = try global(plain, try config("empty.json", "{}"))
        #expect(a.status == 0, "\(a.stdout)\n\(a.stderr)")
        let b = try global(stepped, try config("steps.json", #"{"audit": {"queue_steps": true}}"#))
        #expect(b.status == 0, "\(b.stdout)\n\(b.stderr)")
        let one = try events(plain), all = try events(stepped)
        #expect(one.contains("queue.complete") && !one.contains("queue.submit") && !one.contains("queue.start"), "\(one)")
        #expect(all.contains("queue.complete") && all.contains("queue.submit") && all.contains("queue.start"), "\(all)")
        let bad = try config("bad.json", #"{"audit": {"queue_steps": 7}}"#)
        let c = try global(scratch.file("bad.pool"), bad)
        #expect(c.status != 0 && c.stderr.contains(bad) && c.stderr.contains("queue_steps"), "\(c.stdout)\n\(c.stderr)")
        #expect(!FileManager.default.fileExists(atPath: scratch.file("bad.pool")), "nothing created with a bad configuration")
    }

    /// The design's snippets, run by two processes at once: a lock with 5000 ms, queue
    /// operations that never interleave across processes (each logs a start and an end with a
    /// pause between), promise_then, a failing operation (retries, error_fn, rejection), a
    /// batch and a batch path that leaves its root, statistics, aborted and committed
    /// pmem_writes.
    @Test func theDesignSnippetsRunByTwoProcesses() throws {
        let scratch = Scratch()
        let pool = scratch.file("seed.pool"), log = scratch.file("log"), dir = scratch.file("trees")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let program = try Self.program.get()
        let children = try (0..<2).map { _ in try Child(program, ["seed", pool, dir, log, "12"], environment: try Self.environment) }
        for child in children {
            #expect(child.wait(timeout: 120) == 0, "\(child.stdout)\n\(child.stderr)")
            #expect(child.stdout.contains("ok seed"))
        }
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(lines.count == 2 * 2 * 12)
        for pair in stride(from: 0, to: lines.count - 1, by: 2) {
            let start = lines[pair].split(separator: " "), end = lines[pair + 1].split(separator: " ")
            #expect(start.first == "start" && end.first == "end" && start.dropFirst() == end.dropFirst(), "interleaved at line \(pair): \(lines[pair]) / \(lines[pair + 1])")
        }
        // Each process's operations ran in the order it submitted them.
        for child in children {
            let mine = lines.filter { $0.hasPrefix("start \(child.pid) ") }.map { Int($0.split(separator: " ")[2])! }
            #expect(mine == Array(0..<12))
        }
        for child in children {
            #expect(try String(contentsOfFile: dir + "/\(child.pid)/file2.txt", encoding: .utf8) == "two")
        }
        let show = try run(Binaries.pmll, ["queue", "show", "--pool", pool, "package_cache", "--json"])
        #expect(show.status == 0 && show.stdout.contains("c-operation"), "\(show.stderr)")
    }

    /// A C process committing pmem_writes, killed at random moments: the object is never torn,
    /// agrees with the key written in the same transaction, and keeps every acknowledged commit.
    @Test func pmemWritesSurviveSIGKILL() throws {
        let scratch = Scratch()
        let pool = scratch.file("o.pool"), ack = scratch.file("ack")
        let program = try Self.program.get(), env = try Self.environment
        var rng = SystemRandomNumberGenerator()
        for round in 0..<12 {
            let writer = try Child(program, ["objects", pool, ack, "1000000"], environment: env)
            usleep(UInt32.random(in: 20_000...120_000, using: &rng))
            writer.kill()
            _ = writer.wait()
            let check = try run(program, ["objects-check", pool, ack], environment: env)
            #expect(check.status == 0, "round \(round): \(check.stdout)")
        }
        let acked = (try? String(contentsOfFile: ack, encoding: .utf8))?.split(separator: "\n").count ?? 0
        #expect(acked > 12, "only \(acked) commits in 12 rounds: the writer barely ran")
    }

    /// The same C workload under the crash suite: every crash point it reaches, both fault
    /// models; and the suite's self-test (a dropped undo-log barrier must show).
    @Test func pmemWritesUnderTheCrashSuite() throws {
        let program = try Self.program.get()
        let crash = try run(Binaries.directory + "/pmll-crash", ["c-objects", "--program", program, "--model", "both", "--power-samples", "2"], timeout: 300)
        #expect(crash.status == 0, "\(crash.stdout)")
        #expect(crash.stdout.contains("tx.applying") && crash.stdout.contains("power"), "\(crash.stdout)")
        let selfTest = try run(Binaries.directory + "/pmll-crash", ["c-objects", "--program", program, "--model", "power", "--drop-persist", "tx.log"], timeout: 300)
        #expect(selfTest.status == 0 && selfTest.stdout.contains("was caught"), "\(selfTest.stdout)")
    }

    /// Docs/C-API.md's example builds with the documented line and runs twice on one pool.
    @Test func theDocumentedExampleBuildsAndRuns() throws {
        let scratch = Scratch()
        let exe = scratch.file("cache_lock")
        try Self.build(Self.repository + "/Docs/examples/cache_lock.c", into: exe, extra: "")
        for _ in 0..<2 {
            let r = try run(exe, [scratch.file("cpm.pool")], environment: try Self.environment)
            #expect(r.status == 0 && r.stdout == "zlib installed", "\(r.stdout)\n\(r.stderr)")
        }
        #expect(try run(Binaries.pmll, ["state", "get", "--pool", scratch.file("cpm.pool"), "pkg/zlib/version"]).stdout == "1.3.1")
    }
}

struct CInterfaceSetup: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
