import Foundation
import Testing
import PMLL

/// `pmll flock` against util-linux flock(1)'s own test scenario (tests/ts/misc/flock) and its
/// exit statuses, with real processes on a real pool.
@Suite("pmll flock", .serialized)
struct FlockTests {
    @Test func utilLinuxScenario() throws {
        let scratch = Scratch()
        let env = ["PMLL_POOL": scratch.file("f.pool")]
        let file = scratch.file("lockfile")
        let start = Date()
        let holder = try Child(Binaries.pmll, ["flock", "--shared", file, "sleep", "3"], environment: env)
        defer { holder.killTree(); holder.wait() }
        try waitForReaders(pool: env["PMLL_POOL"]!, lock: file)
        #expect(try run(Binaries.pmll, ["flock", "--nonblock", "--conflict-exit-code", "123", file, "true"], environment: env).status == 123)
        #expect(try run(Binaries.pmll, ["flock", "--no-fork", "--nonblock", "--conflict-exit-code", "123", file, "true"], environment: env).status == 123)
        #expect(try run(Binaries.pmll, ["flock", "--shared", file, "true"], environment: env).status == 0)
        #expect(try run(Binaries.pmll, ["flock", "--nonblock", "--exclusive", "--conflict-exit-code", "123", file, "true"], environment: env).status == 123)
        let timed = try run(Binaries.pmll, ["flock", "--timeout", "5", "--conflict-exit-code", "5", file, "true"], environment: env)
        #expect(timed.status == 0, "\(timed.stderr)")
        let total = Date().timeIntervalSince(start)
        #expect(total >= 2.5 && total <= 5.5, "scenario took \(total) s")
    }

    @Test func optionsAndExitStatusesAsFlock() throws {
        let scratch = Scratch()
        let env = ["PMLL_POOL": scratch.file("o.pool")]
        let file = scratch.file("x")
        func flock(_ args: String...) throws -> (status: Int32, stdout: String, stderr: String) {
            try run(Binaries.pmll, ["flock"] + args, environment: env)
        }
        #expect(try flock(file, "-c", "exit 3").status == 3)
        #expect(try flock(file, "--command", "echo hi").stdout == "hi")
        #expect(try flock(file, "sh", "-c", "exit 7").status == 7)
        // A status of 128+N is not a death by signal; a COMMAND killed by one marks the lock.
        #expect(try flock(file, "sh", "-c", "exit 130").status == 130)
        #expect(try flock(file, "sh", "-c", "echo died=${PMLL_PREVIOUS_OWNER_DIED:-0}").stdout == "died=0")
        #expect(try flock(file, "sh", "-c", "kill -9 $$").status == 137)
        #expect(try flock(file, "sh", "-c", "echo died=${PMLL_PREVIOUS_OWNER_DIED:-0}").stdout == "died=1")
        #expect(try flock(file, "/nonexistent/cmd").status == 69)
        #expect(try flock().status == 64)
        #expect(try flock("-z", file, "true").status == 64)
        #expect(try flock("-E", "256", file, "true").status == 64)
        #expect(try flock("-w", "abc", file, "true").status == 64)
        #expect(try flock("-F", "-o", file, "true").status == 64)
        #expect(try flock(file).status == 64)
        let fdForm = try flock("9")
        #expect(fdForm.status == 64 && fdForm.stderr.hasPrefix("pmll: the file-descriptor form"))
        #expect(try flock(scratch.file("missing/dir/x"), "true").status == 66)
        let verbose = try flock("--verbose", file, "true")
        #expect(verbose.stdout.contains("getting lock took") && verbose.stdout.contains("executing true"))
        // Bundled short options with an attached value, long-option prefixes, --opt=value.
        #expect(try flock("-snw1", file, "true").status == 0)
        #expect(try flock("--nonbl", "--time=0.5", file, "true").status == 0)
        // ./x and the absolute path name the same lock; the file is created as flock does.
        let dir = scratch.file("d")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let holder = try Child(Binaries.pmll, ["flock", "\(dir)/y", "sleep", "30"], environment: env)
        defer { holder.killTree(); holder.wait() }
        try waitUntilHeld(pool: env["PMLL_POOL"]!, lock: "\(dir)/y")
        let relative = try run("/bin/sh", ["-c", "cd \(dir) && exec \(Binaries.pmll) flock -w 0.3 -E 9 ./y true"], environment: env)
        #expect(relative.status == 9)
        #expect(relative.stderr.contains("pid \(holder.pid)") || relative.stderr.contains("(sleep)"), "\(relative.stderr)")
        #expect(FileManager.default.fileExists(atPath: file))
    }

    /// COMMAND is our child; with --no-fork it is us, and its exit releases the lock
    /// without an owner-death report.
    @Test func noForkHoldsTheLockInTheExecdProgram() throws {
        let scratch = Scratch()
        let pool = scratch.file("n.pool")
        let env = ["PMLL_POOL": pool]
        let file = scratch.file("n")
        let execd = try Child(Binaries.pmll, ["flock", "-F", file, "sleep", "0.5"], environment: env)
        try waitUntilHeld(pool: pool, lock: file)
        let holder = try #require(try Pool.open(path: pool).existingLock(named: file)?.currentHolder)
        #expect(holder.pid == execd.pid)
        let next = try run(Binaries.pmll, ["flock", file, "sh", "-c", "echo died=${PMLL_PREVIOUS_OWNER_DIED:-0}"], environment: env)
        #expect(next.status == 0 && next.stdout == "died=0")
        #expect(execd.wait() == 0)
        let status = try #require(try Pool.open(path: pool).status().locks.first { $0.name == file })
        #expect(status.ownerDeaths == 0)
    }

    /// On top of flock: the previous holder's death is passed on.
    @Test func aDeadHolderIsReportedToTheNextCommand() throws {
        let scratch = Scratch()
        let env = ["PMLL_POOL": scratch.file("d.pool")]
        let file = scratch.file("d")
        let holder = try Child(Binaries.pmll, ["flock", file, "sleep", "30"], environment: env)
        try waitUntilHeld(pool: env["PMLL_POOL"]!, lock: file)
        holder.killTree()   // the sleep too: it would keep the output pipe open
        holder.wait()
        let next = try run(Binaries.pmll, ["flock", file, "sh", "-c", "echo died=$PMLL_PREVIOUS_OWNER_DIED"], environment: env)
        #expect(next.stdout == "died=1")
        #expect(next.stderr.contains("pmll: warning"))
    }
}

/// Waits until `lock` has at least one live shared holder.
func waitForReaders(pool: String, lock: String, timeout: Double = 20) throws {
    let end = Date().addingTimeInterval(timeout)
    while Date() < end {
        if let p = try? Pool.open(path: pool, options: { var o = PoolOptions(); o.create = false; return o }()),
           let handle = try? p.existingLock(named: lock), !handle.currentReaders.isEmpty {
            return
        }
        usleep(10_000)
    }
    Issue.record("lock \(lock) never had a reader")
}
