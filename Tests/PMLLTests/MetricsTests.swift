import Foundation
import Testing

/// `pmll metrics` and the swift-metrics reporting, checked by Prometheus's own text parser
/// (Python's prometheus_client, Tests/Scripts/check_prometheus.py), on pools with known
/// activity from real processes.
@Suite("Metrics", .serialized)
struct MetricsTests {
    static let checker = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Scripts/check_prometheus.py").path

    struct Exposition {
        let types: [String: String]
        let samples: [(name: String, labels: [String: String], value: Double)]

        func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
            samples.first { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }?.value
        }
    }

    /// Parses and validates `text`; records the checker's complaint as a failure.
    static func parse(_ text: String, helpOptional: Bool = false) throws -> Exposition {
        let scratch = Scratch()
        let file = scratch.file("metrics.prom")
        // Captured output comes back as lines without the last newline; files as written.
        try (text.hasSuffix("\n") ? text : text + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        let checked = try run("/bin/sh", ["-c", "python3 '\(checker)' \(helpOptional ? "--help-optional" : "") < '\(file)'"])
        guard checked.status == 0, let json = try JSONSerialization.jsonObject(with: Data(checked.stdout.utf8)) as? [String: Any] else {
            throw ExpositionInvalid(message: checked.stdout + checked.stderr)
        }
        let samples = (json["samples"] as? [[Any]] ?? []).map { s in
            (name: s[0] as! String, labels: s[1] as! [String: String], value: (s[2] as! NSNumber).doubleValue)
        }
        return Exposition(types: json["types"] as? [String: String] ?? [:], samples: samples)
    }

    struct ExpositionInvalid: Error, CustomStringConvertible {
        let message: String
        var description: String { "invalid exposition: \(message)" }
    }

    @Test func pmllMetricsIsValidAndAgreesWithStatus() throws {
        let scratch = Scratch()
        let pool = scratch.file("m.pool")
        func pmll(_ args: String...) throws -> (status: Int32, stdout: String, stderr: String) {
            try run(Binaries.pmll, Array(args.prefix(1)) + ["--pool", pool] + args.dropFirst())
        }
        #expect(try pmll("lock", "cache", "--", "true").status == 0)
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "pkg/zlib=installed", "pkg/curl=installed"]).status == 0)
        for _ in 0..<3 { #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "jobs", "--", "true"]).status == 0) }
        #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "jobs", "--", "false"]).status != 0)
        // One timeout against a real holder in another process.
        let holder = try Child.worker("hold", "--pool", pool, "--lock", "cache", "--seconds", "30")
        defer { holder.kill(); holder.wait() }
        #expect(holder.waitForEvent("acquired") != nil)
        #expect(try pmll("lock", "--timeout", "0", "cache", "--", "true").status == 75)

        let metrics = try pmll("metrics")
        #expect(metrics.status == 0, "\(metrics.stderr)")
        let e = try Self.parse(metrics.stdout)
        let lock = ["pool": pool, "lock": "cache", "level": "package"]
        #expect(e.types["pmll_lock_acquisitions"] == "counter")
        #expect(e.value("pmll_lock_acquisitions_total", lock) == 2)
        #expect(e.value("pmll_lock_timeouts_total", lock) == 1)
        #expect(e.value("pmll_lock_held", lock) == 1)
        let jobs = ["pool": pool, "queue": "jobs"]
        #expect(e.value("pmll_queue_completed_total", jobs) == 3)
        #expect(e.value("pmll_queue_failed_total", jobs) == 1)
        #expect(e.value("pmll_queue_depth", jobs) == 0)
        #expect(e.types["pmll_queue_run_seconds"] == "histogram")
        #expect(e.value("pmll_queue_run_seconds_count", jobs) == 4)
        #expect(e.value("pmll_queue_run_seconds_bucket", jobs.merging(["le": "+Inf"]) { $1 }) == 4)
        #expect(e.value("pmll_store_keys", ["pool": pool]) == 2)
        #expect(e.value("pmll_store_commits_total", ["pool": pool]) ?? 0 >= 1)
        #expect(e.value("pmll_pool_processes", ["pool": pool]) == 1, "the holder; pmll metrics does not count itself")
    }

    @Test func textfileIsWrittenAtomicallyForNodeExporter() throws {
        let scratch = Scratch()
        let pool = scratch.file("t.pool"), dir = scratch.file("textfiles")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(try run(Binaries.pmll, ["lock", "--pool", pool, "x", "--", "true"]).status == 0)
        let written = try run(Binaries.pmll, ["metrics", "--pool", pool, "--textfile", dir])
        #expect(written.status == 0 && written.stdout.isEmpty, "\(written.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["pmll.prom"], "no temporary file left")
        let e = try Self.parse(try String(contentsOfFile: dir + "/pmll.prom", encoding: .utf8))
        #expect(e.value("pmll_lock_acquisitions_total", ["lock": "x"]) == 1)
        let missing = try run(Binaries.pmll, ["metrics", "--pool", pool, "--textfile", scratch.file("nowhere")])
        #expect(missing.status == 66 && missing.stderr.hasPrefix("pmll: cannot create"), "\(missing.status) \(missing.stderr)")
        #expect(try run(Binaries.pmll, ["metrics", "--pool", scratch.file("none.pool")]).status == 66)
    }

    /// A program that bootstraps a swift-metrics backend (swift-prometheus) sees the library's
    /// own events: commits, conflicts, lock waits and timeouts, queue outcomes and retries.
    @Test func aSwiftMetricsBackendSeesTheLibrarysEvents() throws {
        let scratch = Scratch()
        let probe = try run(Binaries.worker, ["metrics-probe", "--pool", scratch.file("p.pool")])
        #expect(probe.status == 0, "\(probe.stderr)")
        let e = try Self.parse(probe.stdout, helpOptional: true)
        #expect(e.value("pmll_store_commits_total") == 5, "3 + the interfering one + the retried one")
        #expect(e.value("pmll_store_conflicts_total") == 1)
        #expect(e.value("pmll_lock_timeouts_total", ["lock": "probe"]) == 1)
        #expect(e.value("pmll_lock_contended_wait_seconds_count") == 1)
        #expect(e.value("pmll_lock_contended_wait_seconds_sum") ?? 0 > 0.05, "the waiter waited for a 100 ms hold")
        #expect(e.value("pmll_queue_completed_total", ["queue": "probe-q"]) == 2)
        #expect(e.value("pmll_queue_failed_total", ["queue": "probe-q"]) == 1)
        #expect(e.value("pmll_queue_retries_total", ["queue": "probe-q"]) == 1)
        #expect(e.types["pmll_store_commit_seconds"] == "histogram")
    }
}
