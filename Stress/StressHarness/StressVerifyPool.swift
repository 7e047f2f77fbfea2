import ArgumentParser
import Foundation
import PMLL

/// `pmll-stress verify-pool --pool P`: the invariants of a stress run that live in the pool
/// alone (not in the run's side files), checked on any copy of it, such as a restored backup:
/// recovery leaves no abandoned operation, the accounts still sum to their initial total,
/// and the pool checks clean. Exit 0, or 1 with one line per violation.
struct StressVerifyPool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "verify-pool", abstract: "Check a stress pool's own invariants (a restored backup, say).")

    @Option(help: "Pool file.") var pool: String

    func run() async throws {
        var options = PoolOptions()
        options.create = false
        let pool = try Pool.open(path: pool, options: options)
        _ = try await pool.recover(handlers: ["stress": { _ in }])
        var violations: [String] = []
        if !(try pool.abandonedOperations()).isEmpty { violations.append("abandoned queue operations remain after recovery") }
        violations += try Self.accountViolations(pool)
        violations += try pool.check().problems.map { "check: \($0)" }
        for violation in violations { print("violation: \(violation)") }
        if !violations.isEmpty { throw ExitCode(1) }
        print("ok: accounts total \(StressFiles.accounts * StressFiles.initialBalance), check clean")
    }

    /// The transfers between accounts keep their total.
    static func accountViolations(_ pool: Pool) throws -> [String] {
        var total = 0
        for i in 0..<StressFiles.accounts {
            total += Int(String(decoding: try pool.value(for: "stress/acct/\(i)") ?? [], as: UTF8.self)) ?? 0
        }
        let expected = StressFiles.accounts * StressFiles.initialBalance
        return total == expected ? [] : ["accounts total \(total), not \(expected)"]
    }
}
