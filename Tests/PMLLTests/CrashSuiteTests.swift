import Foundation
import Testing

/// The crash-injection suite as part of the test run: every crash point and every hit of it
/// under the process-crash model, a power-failure image per case, recovery killed in half
/// the cases; and its self-test, which removes one barrier and must be caught.
@Suite("Crash-injection suite", .serialized)
struct CrashSuiteTests {
    var crash: String { Binaries.directory + "/pmll-crash" }

    @Test func everyCrashPointUnderBothFaultModelsKeepsTheInvariants() throws {
        let result = try run(crash, ["--model", "both", "--power-samples", "1"], timeout: 600)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        #expect(result.stdout.contains("0 with violations"))
        for point in ["lock.acquired", "queue.running", "tx.applying", "tx.committed", "growth.filled", "growth.committed"] {
            #expect(result.stdout.contains(point), "crash point \(point) never reached")
        }
    }

    @Test(arguments: ["tx.log", "queue.record", "growth.fill"])
    func aMissingPersistIsCaughtByThePowerFailureModel(site: String) throws {
        let result = try run(crash, ["--model", "power", "--power-samples", "1", "--drop-persist", site], timeout: 600)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        #expect(result.stdout.contains("self-test: dropping persist site '\(site)' was caught"))
    }
}
