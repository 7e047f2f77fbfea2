import Foundation
import Testing

/// The fuzz targets' committed corpus, replayed through the plain build of `pmll-fuzz`, plus
/// random mutations of it (a smoke test of the same entry points; the coverage-guided run is
/// Stress/fuzz, which Stress/run-tests runs for about a minute after this suite).
@Suite("Fuzz corpus replay", .serialized)
struct FuzzReplayTests {
    static let corpus = LayerTests.root + "/Stress/Fuzz/corpus"

    @Test(arguments: [("batch-json", 20_000), ("journal", 20_000), ("pool", 400)])
    func corpusAndMutationsGiveNoFinding(target: String, mutations: Int) throws {
        let result = try run(Binaries.fuzz, [target, Self.corpus + "/" + target, "--random", "\(mutations)", "--seed", "\(UInt64.random(in: 1...1_000_000))"], timeout: 120)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("no finding"))
        let inputs = try FileManager.default.contentsOfDirectory(atPath: Self.corpus + "/" + target)
        #expect(inputs.count >= 2, "the committed corpus of \(target) is missing")
    }
}
