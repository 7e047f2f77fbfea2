import Foundation
import Testing

/// `pmll top`: batch screens with rates from real activity, and the interactive view on a
/// pseudo-terminal (Tests/Scripts/pty_top.py) quitting on q, on Ctrl-C and on SIGTERM with the
/// terminal restored; signals end it only after it has released the pool.
@Suite("pmll top", .serialized)
struct TopTests {
    static let ptyScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Scripts/pty_top.py").path

    @Test func batchScreensShowHoldersWaitersAndRates() throws {
        let scratch = Scratch()
        let pool = scratch.file("t.pool")
        #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "jobs", "--", "true"]).status == 0)
        let holder = try Child.worker("hold", "--pool", pool, "--lock", "held-lock", "--seconds", "30")
        defer { holder.kill(); holder.wait() }
        #expect(holder.waitForEvent("acquired") != nil)
        let waiter = try Child(Binaries.pmll, ["lock", "--pool", pool, "held-lock", "--", "true"])
        defer { waiter.kill(); waiter.wait() }
        try waitForWaiters(pool: pool, lock: "held-lock")
        let busy = try Child.worker("counter", "--pool", pool, "--lock", "busy-lock", "--file", scratch.file("c"), "--iterations", "100000000")
        defer { busy.kill(); busy.wait() }
        let started = Date().addingTimeInterval(20)
        while !(try run(Binaries.pmll, ["status", "--pool", pool]).stdout.contains("busy-lock")) && Date() < started { usleep(20_000) }
        let top = try run(Binaries.pmll, ["top", "--pool", pool, "--batch", "--iterations", "2", "--interval", "0.5"])
        #expect(top.status == 0, "\(top.stderr)")
        let screens = top.stdout.components(separatedBy: "pmll top — ")
        #expect(screens.count == 3, "\(top.stdout)")
        let second = screens.last ?? ""
        // Cells by the header's column positions (a holder cell holds a space: "PID COMMAND").
        let lines = second.split(separator: "\n").map(String.init)
        let header = try #require(lines.first { $0.hasPrefix("LOCK") })
        func cell(_ row: String, _ column: String) -> String {
            let names = ["LOCK", "STATE", "HOLDER", "WAITERS", "ACQ/S", "CONT/S", "TIMEOUT/S", "DEATHS", "AVG WAIT"]
            let starts = names.map { header.distance(from: header.startIndex, to: header.range(of: $0)!.lowerBound) }
            let i = names.firstIndex(of: column)!
            let from = starts[i], to = i + 1 < starts.count ? starts[i + 1] : row.count
            guard from < row.count else { return "" }
            return String(row.dropFirst(from).prefix(to - from)).trimmingCharacters(in: .whitespaces)
        }
        let held = try #require(lines.first { $0.hasPrefix("held-lock") })
        #expect(cell(held, "STATE") == "held" && cell(held, "HOLDER").hasPrefix("\(holder.pid) ") && cell(held, "WAITERS") == "1", "\(held)")
        let busyRow = try #require(lines.first { $0.hasPrefix("busy-lock") })
        #expect((Double(cell(busyRow, "ACQ/S")) ?? 0) > 100, "the busy lock's acquisitions per second: \(busyRow)")
        #expect(second.split(separator: "\n").first { $0.hasPrefix("busy-lock") } != nil && second.range(of: "busy-lock")!.lowerBound < second.range(of: "held-lock")!.lowerBound,
                "the busiest lock first")
        #expect(second.contains("jobs"))
        #expect(!top.stdout.contains("\u{1B}["), "no terminal control in batch mode")
    }

    /// SIGTERM, SIGHUP and SIGINT end top through its loop: the pool is released before it
    /// exits (status 128 + N, as before), so the next process to open the pool finds no dead
    /// process's slot to free. Ended in a handler (the code before), top left its slot taken,
    /// and that next open freed it and audited an `admin.reset`.
    @Test(arguments: [SIGTERM, SIGHUP, SIGINT])
    func aSignalEndsTopAfterItReleasedThePool(signal: Int32) throws {
        let scratch = Scratch()
        let pool = scratch.file("s.pool")
        #expect(try run(Binaries.pmll, ["lock", "--pool", pool, "some-lock", "--", "true"]).status == 0)
        let top = try Child(Binaries.pmll, ["top", "--pool", pool, "--batch", "--interval", "0.2"])
        defer { top.stopIfRunning() }
        let shown = Date().addingTimeInterval(20)
        while !top.stdout.contains("some-lock") && Date() < shown { usleep(10_000) }
        #expect(top.stdout.contains("some-lock"), "no screen: \(top.stderr)")
        top.kill(signal)
        #expect(top.wait() == 128 + signal)
        #expect(top.stderr.isEmpty, "\(top.stderr)")
        // The next process to attach, then the audit log: no slot was left to free.
        #expect(try run(Binaries.pmll, ["lock", "--pool", pool, "some-lock", "--", "true"]).status == 0)
        let audit = try run(Binaries.pmll, ["audit", "show", "--pool", pool])
        #expect(audit.status == 0)
        #expect(!audit.stdout.contains("admin.reset"), "\(audit.stdout)")
    }

    @Test(arguments: ["q", "ctrl-c", "sigterm"])
    func theInteractiveViewQuitsCleanly(key: String) throws {
        let scratch = Scratch()
        let pool = scratch.file("i.pool")
        #expect(try run(Binaries.pmll, ["lock", "--pool", pool, "some-lock", "--", "true"]).status == 0)
        let r = try run("/usr/bin/env", ["python3", Self.ptyScript, key, Binaries.pmll, "top", "--pool", pool, "--interval", "0.3"], timeout: 30)
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(json["exit"] as? Int == (key == "sigterm" ? 128 + Int(SIGTERM) : 0))
        #expect(json["screens"] as? Int ?? 0 >= 2)
        #expect(json["enteredAlternateScreen"] as? Bool == true)
        #expect(json["rawWhileRunning"] as? Bool == true)
        #expect(json["restored"] as? Bool == true, "\(json["text"] ?? "")")
        #expect(json["canonicalAfter"] as? Bool == true)
        #expect((json["text"] as? String ?? "").contains("some-lock"))
    }
}
