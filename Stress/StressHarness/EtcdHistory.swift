import ArgumentParser
import Foundation
import PMLLStressSupport

/// `pmll-stress etcd-history`: the Jepsen-style check of the etcd backend, randomised and as
/// long as asked. Worker processes increment one counter in etcd under a PMLL lock (read,
/// pause, fenced write through `pmll lock` and `pmll state set --fence`), logging every
/// acknowledged write with its fencing token, while a seeded nemesis kills and restarts the
/// leader or a follower, pauses a member, pauses the lock's holder past its lease, or kills
/// the holder. Afterwards the history must show, taken in token order: values increasing with
/// the tokens (an equal or smaller value at a higher token is a lost update: two holders read
/// the same value, or a stale holder wrote after its successor), no token twice, and the final
/// value at least the largest acknowledged one (no acknowledged write lost). Docs/Etcd.md "Tests and benchmarks".
struct EtcdHistory: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "etcd-history",
        abstract: "Increment a counter under an etcd lock while a nemesis kills, restarts and pauses members and holders; check the history.",
        discussion: "Needs etcd ≥ 3.5 (Stress/bootstrap installs it; or $PMLL_ETCD) and the pmll executable beside this one. Exit status: 0 the history is sound; 1 a violation, a hang or too few acknowledged writes to judge; 64 usage.")

    @Option(help: "Seconds of faults (workers then finish their current section).") var duration = 60.0
    @Option(help: "Worker processes.") var workers = 4
    @Option(help: "Lease TTL of the workers' pool, in seconds (minimum 2).") var ttl = 2
    @Option(help: "Seconds between faults (each waits a random 0.5 to 2 times this).") var faultInterval = 3.0
    @Option(help: "Seed of the nemesis's choices.") var seed: UInt64 = UInt64(Date().timeIntervalSince1970)
    @Option(help: "Fault kinds to choose from, comma-separated: \(Nemesis.kinds.joined(separator: ",")) (default: all).")
    var faults: String = Nemesis.kinds.joined(separator: ",")
    @Option(help: "Seconds each section waits between its read and its write.") var think = 0.02
    @Flag(help: "Control run: write without the fence (as bare etcd locks do). Expect lost updates when a holder is paused past its lease: this shows what the checker catches and what fencing prevents.")
    var unfenced = false
    @Flag(help: "Print the summary as JSON.") var json = false

    func validate() throws {
        guard duration > 0, duration <= 86_400 else { throw ValidationError("--duration must be more than 0 and at most 86400 seconds") }
        guard (1...32).contains(workers) else { throw ValidationError("--workers must be from 1 to 32") }
        guard (2...60).contains(ttl) else { throw ValidationError("--ttl must be from 2 to 60 seconds") }
        guard faultInterval > 0, faultInterval <= 3600 else { throw ValidationError("--fault-interval must be more than 0 and at most 3600 seconds") }
        guard think >= 0, think <= 60 else { throw ValidationError("--think must be from 0 to 60 seconds") }
        let chosen = faults.split(separator: ",").map(String.init)
        guard !chosen.isEmpty, chosen.allSatisfy(Nemesis.kinds.contains) else {
            throw ValidationError("--faults must name some of \(Nemesis.kinds.joined(separator: ","))")
        }
    }

    struct Summary: Codable {
        var seed: UInt64
        var seconds: Double
        var workers: Int
        var sections = 0
        var acknowledged = 0
        var faults: [String: Int] = [:]
        var finalValue = 0
        /// Acknowledgements logged after one of a later token (their section was paused or
        /// slow between commit and log): not a violation, the history is judged in token order.
        var loggedLate = 0
        var violations: [String] = []
    }

    func run() throws {
        let pmll = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("pmll").path
        guard FileManager.default.isExecutableFile(atPath: pmll) else { throw HarnessError("no pmll executable beside pmll-stress (\(pmll))") }
        let cluster: EtcdCluster
        do { cluster = try EtcdCluster(members: 3) } catch { throw HarnessError("\(error)") }
        defer { cluster.stop() }
        let directory = cluster.directory
        let acks = directory + "/acks", tries = directory + "/tries", stop = directory + "/stop"
        let environment = ProcessInfo.processInfo.environment.merging(
            ["PMLL_POOL": cluster.address("history", ttl: ttl), "PMLL": pmll], uniquingKeysWith: { $1 })
        // One section: read, think, write fenced by the token; log only what was acknowledged.
        // A failed read other than "no value" (exit 1) skips the section: it must not be taken
        // for 0.
        let section = """
            echo x >> \(tries); v=$("$PMLL" state get n 2>/dev/null); rc=$?; if [ $rc = 1 ]; then v=0; elif [ $rc != 0 ]; then exit 0; fi; sleep \(think); \
            "$PMLL" state set \(unfenced ? "" : "--fence counter=$PMLL_FENCING_TOKEN") n $((v+1)) 2>/dev/null && echo "$PMLL_FENCING_TOKEN $((v+1))" >> \(acks)
            """
        let loop = "while [ ! -f \(stop) ]; do \"$PMLL\" lock --timeout 30 counter -- sh -c '\(section)' 2>/dev/null; done; exit 0"
        var processes: [Process] = []
        defer { for p in processes where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        for _ in 0..<workers {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", loop]
            p.environment = environment
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            processes.append(p)
        }

        var summary = Summary(seed: seed, seconds: duration, workers: workers)
        var nemesis = Nemesis(cluster: cluster, pmll: pmll, environment: environment, ttl: ttl, kinds: faults.split(separator: ",").map(String.init),
                              rng: SplitMix(seed: seed))
        let end = Date().addingTimeInterval(duration)
        while Date() < end {
            let pause = faultInterval * Double.random(in: 0.5...2, using: &nemesis.rng)
            usleep(UInt32(min(pause, max(0, end.timeIntervalSinceNow)) * 1e6))
            guard Date() < end else { break }
            let (kind, detail) = nemesis.strike()
            summary.faults[kind, default: 0] += 1
            if !json { print("\(String(format: "%6.1f", duration - end.timeIntervalSinceNow)) s  \(detail)") }
        }
        nemesis.healAll()
        _ = FileManager.default.createFile(atPath: stop, contents: nil)
        let deadline = Date().addingTimeInterval(120)
        for p in processes {
            while p.isRunning && Date() < deadline { usleep(50_000) }
            if p.isRunning { summary.violations.append("worker \(p.processIdentifier) did not finish within 120 s of the end (hung)") }
        }

        let lines = ((try? String(contentsOfFile: acks, encoding: .utf8)) ?? "").split(separator: "\n")
        let history = lines.compactMap { line -> (token: Int64, value: Int)? in
            let f = line.split(separator: " ")
            guard f.count == 2, let t = Int64(f[0]), let v = Int(f[1]) else { return nil }
            return (t, v)
        }
        summary.acknowledged = history.count
        summary.sections = ((try? String(contentsOfFile: tries, encoding: .utf8)) ?? "").split(separator: "\n").count
        // In token order, not in the log's order: a holder paused after its commit and before
        // its `echo` logs late (a 600 s run met one). Each write is a read-modify-write, so
        // values give the commits' order; with tokens in that order the values must rise. An
        // equal or smaller value at a higher token is a lost update (two holders read the same
        // value), and a repeated token means one acquisition wrote twice.
        summary.loggedLate = zip(history, history.dropFirst()).filter { $1.token < $0.token }.count
        let byToken = history.sorted { $0.token < $1.token }
        for (a, b) in zip(byToken, byToken.dropFirst()) {
            if b.token == a.token { summary.violations.append("token \(b.token) acknowledged twice") }
            if b.value <= a.value { summary.violations.append("lost update: value \(b.value) (token \(b.token)) acknowledged after value \(a.value) (token \(a.token))") }
        }
        let final = Process()
        final.executableURL = URL(fileURLWithPath: pmll)
        final.arguments = ["state", "get", "n"]
        final.environment = environment
        let out = Pipe()
        final.standardOutput = out
        final.standardError = FileHandle.nullDevice
        try final.run()
        let text = out.fileHandleForReading.readDataToEndOfFile()
        final.waitUntilExit()
        summary.finalValue = Int(String(decoding: text, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        if let largest = history.map(\.value).max(), summary.finalValue < largest {
            summary.violations.append("acknowledged write lost: final value \(summary.finalValue), largest acknowledged \(largest)")
        }
        if history.count < max(5, Int(duration / 10)) {
            summary.violations.append("only \(history.count) acknowledged writes in \(duration) s: too few to judge (the cluster made no progress?)")
        }

        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(summary), as: UTF8.self))
        } else {
            print("seed \(seed), \(workers) workers, \(duration) s: \(summary.sections) sections, \(summary.acknowledged) acknowledged writes (\(summary.loggedLate) logged late), final value \(summary.finalValue)")
            print("faults: " + summary.faults.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
            print(summary.violations.isEmpty ? "history sound: values rise with the tokens, no token twice, nothing acknowledged lost"
                                             : "VIOLATIONS:\n" + summary.violations.joined(separator: "\n"))
        }
        if !summary.violations.isEmpty {
            // Kept for a post-mortem (the cluster's directory goes with it).
            let kept = NSTemporaryDirectory() + "pmll-etcd-history-\(seed).acks"
            try? FileManager.default.removeItem(atPath: kept)
            try? FileManager.default.copyItem(atPath: acks, toPath: kept)
            FileHandle.standardError.write(Data("pmll-stress: the acknowledged writes are kept in \(kept)\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// The faults: at most one member down or paused at a time (a majority stays, so the cluster
/// can progress); holders paused past their lease or killed.
struct Nemesis {
    let cluster: EtcdCluster
    let pmll: String
    let environment: [String: String]
    let ttl: Int
    let chosen: [String]
    var rng: SplitMix
    /// A member killed or paused by the last fault, brought back by the next one.
    private var down: (member: Int, paused: Bool)?

    static let kinds = ["kill-leader", "kill-follower", "pause-member", "pause-holder", "kill-holder", "none"]

    init(cluster: EtcdCluster, pmll: String, environment: [String: String], ttl: Int, kinds: [String], rng: SplitMix) {
        self.cluster = cluster
        self.pmll = pmll
        self.environment = environment
        self.ttl = ttl
        chosen = kinds
        self.rng = rng
    }

    /// One fault: its kind (for the counts) and what exactly was done.
    mutating func strike() -> (kind: String, detail: String) {
        healAll()
        switch chosen.randomElement(using: &rng) ?? "none" {
        case "kill-leader":
            guard let leader = cluster.leader() else { return ("none", "no leader to kill") }
            cluster.kill(member: leader)
            down = (leader, false)
            return ("kill-leader", "kill leader m\(leader) (restarted at the next fault)")
        case "kill-follower":
            let leader = cluster.leader()
            let follower = (0..<cluster.members.count).filter { $0 != leader }.randomElement(using: &rng) ?? 0
            cluster.kill(member: follower)
            down = (follower, false)
            return ("kill-follower", "kill follower m\(follower) (restarted at the next fault)")
        case "pause-member":
            let member = Int.random(in: 0..<cluster.members.count, using: &rng)
            cluster.kill(member: member, signal: SIGSTOP)
            down = (member, true)
            return ("pause-member", "pause member m\(member) (resumed at the next fault)")
        case "pause-holder":
            // The holder and what it runs (the section and its pmll calls), as a process
            // that stalls (swapping, a VM paused): it resumes believing it holds the lock.
            guard let pid = holder() else { return ("none", "no holder to pause") }
            let seconds = Double(ttl) + Double.random(in: 1.5...3, using: &rng)
            let stopped = ProcessTree.freeze(pid)
            usleep(UInt32(seconds * 1e6))
            for p in stopped { kill(p, SIGCONT) }
            if getpgid(pid) == pid { kill(-pid, SIGCONT) }   // freeze stopped its process group too
            return ("pause-holder", "pause holder pid \(pid) and \(stopped.count - 1) child process(es) for \(String(format: "%.1f", seconds)) s (past its \(ttl) s lease)")
        case "kill-holder":
            guard let pid = holder() else { return ("none", "no holder to kill") }
            kill(pid, SIGKILL)
            return ("kill-holder", "SIGKILL holder pid \(pid)")
        default:
            return ("none", "no fault")
        }
    }

    mutating func healAll() {
        guard let (member, paused) = down else { return }
        if paused {
            cluster.kill(member: member, signal: SIGCONT)
        } else {
            try? cluster.restart(member: member)
        }
        down = nil
        // Let it rejoin before the next fault may take another member.
        let end = Date().addingTimeInterval(10)
        while !EtcdCluster.answers(cluster.members[member].url, tls: cluster.tls) && Date() < end { usleep(100_000) }
    }

    /// The pid of the lock's exclusive holder, from `pmll status --json` through the members up.
    private func holder() -> Int32? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: pmll)
        p.arguments = ["status", "--json"]
        p.environment = environment
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        struct Status: Decodable {
            struct Lock: Decodable { struct Holder: Decodable { var pid: Int32 }; var name: String; var holder: Holder? }
            var locks: [Lock]
        }
        return (try? JSONDecoder().decode(Status.self, from: data))?.locks.first { $0.name == "counter" }?.holder?.pid
    }
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
