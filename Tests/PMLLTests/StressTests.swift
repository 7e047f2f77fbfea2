import Foundation
import Testing

/// The stress harness as part of the test run: 4 processes for 20 s with random SIGKILLs;
/// every invariant must hold and nothing may hang.
@Suite("Stress", .serialized)
struct StressTests {
    @Test func shortStressRunWithKillsKeepsEveryInvariant() throws {
        let scratch = Scratch()
        let result = try run(Binaries.directory + "/pmll-stress",
                             ["--processes", "4", "--duration", "20", "--kill-rate", "1", "--seed", "2026", "--pool", scratch.file("stress.pool"), "--json"],
                             timeout: 300)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect((summary["violations"] as? [String])?.isEmpty == true)
        #expect(summary["hang"] == nil)
        #expect((summary["kills"] as? Int ?? 0) >= 5)
        #expect((summary["ownerDeathsDetected"] as? Int ?? 0) >= 1)
        let operations = try #require(summary["operations"] as? [String: Int])
        #expect(operations.values.allSatisfy { $0 > 100 }, "\(operations)")
    }

    @Test func badArgumentsAreUsageErrors() throws {
        let result = try run(Binaries.directory + "/pmll-stress", ["--processes", "0"])
        #expect(result.status == 64)
        let mix = try run(Binaries.directory + "/pmll-stress", ["--mix", "lock=x"])
        #expect(mix.status == 64)
    }
}
