#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import FoundationEssentials
import PMLL

struct StateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "state",
        abstract: "Read and change the pool's persistent state store (one transaction per command).",
        discussion: """
            Keys are 1-255 bytes of UTF-8 without NUL; values at most 64 MiB. `set` takes \
            KEY=VALUE pairs (split at the first '=') that commit together or not at all. \
            `get` exits 1 when the key has no value. Each command is one serializable \
            transaction: `set` and `delete` with --if KEY=VALUE or --if-absent KEY write only if \
            those hold at the moment of the commit (else exit 1, nothing written), and a \
            command that keeps conflicting with other writers exits 75.

            \(ExitStatus.summary)
            """,
        subcommands: [StateGet.self, StateSet.self, StateDelete.self, StateList.self]
    )
}

/// A value as JSON shows it: text when it is UTF-8, else base64.
struct StateEntry: Codable {
    let key: String
    let value: String?
    let base64: String?

    init(key: String, value: [UInt8]) {
        self.key = key
        if let text = String(validating: value, as: UTF8.self) {
            (self.value, self.base64) = (text, nil)
        } else {
            (self.value, self.base64) = (nil, Data(value).base64EncodedString())
        }
    }
}

struct StateGet: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "get", abstract: "Print the value of KEY.")
    @OptionGroup var poolArguments: PoolArguments
    @Flag(help: "Print {\"key\", \"value\" or \"base64\"} as JSON.") var json = false
    @Argument var key: String

    func run() throws {
        let pool = try poolArguments.openForReading()
        // Written from where it lies in the pool: a value of many MiB is never copied.
        let found = try pool.withValue(for: key) { bytes -> Bool in
            guard let bytes else { return false }
            if json { try printJSON(StateEntry(key: key, value: Array(bytes))) } else { FileIO.writeAll(1, bytes) }
            return true
        }
        guard found else { throw CommandFailure(message: "no value for key '\(key)'", status: 1) }
    }
}

/// Compare-and-set for scripts: conditions read in the command's own serializable
/// transaction, so they still hold when its writes commit.
struct StateConditions: ParsableArguments {
    @Option(name: .customLong("if"), help: ArgumentHelp("Write only if KEY has VALUE now (repeatable).", valueName: "KEY=VALUE"))
    var equal: [String] = []
    @Option(name: .customLong("if-absent"), help: ArgumentHelp("Write only if KEY has no value now (repeatable).", valueName: "KEY"))
    var absent: [String] = []

    func validate() throws {
        for pair in equal where !pair.contains("=") { throw ValidationError("--if '\(pair)' is not KEY=VALUE") }
    }

    func check(_ tx: borrowing Transaction) throws {
        for pair in equal {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0]), expected = Array(parts[1].utf8)
            let found = try tx.get(key)
            guard found == expected else {
                let now = found.map { "'" + String(decoding: $0, as: UTF8.self) + "'" } ?? "absent"
                throw CommandFailure(message: "condition failed: '\(key)' is \(now), not '\(parts[1])'; nothing written", status: 1)
            }
        }
        for key in absent where try tx.get(key) != nil {
            throw CommandFailure(message: "condition failed: '\(key)' has a value; nothing written", status: 1)
        }
    }
}

struct StateSet: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "set", abstract: "Set KEY=VALUE pairs in one transaction.")
    @OptionGroup var poolArguments: PoolArguments
    @OptionGroup var conditions: StateConditions
    @Option(name: .customLong("value-file"), help: ArgumentHelp("Set KEY to the bytes of FILE ('-': standard input), any bytes (repeatable).", valueName: "KEY=FILE"))
    var valueFiles: [String] = []
    @Argument(help: "KEY=VALUE pairs (VALUE as UTF-8 text).") var pairs: [String] = []

    func validate() throws {
        guard !pairs.isEmpty || !valueFiles.isEmpty else { throw ValidationError("give at least one KEY=VALUE or --value-file KEY=FILE") }
        for pair in pairs where !pair.contains("=") { throw ValidationError("'\(pair)' is not KEY=VALUE") }
        for pair in valueFiles where !pair.contains("=") { throw ValidationError("--value-file '\(pair)' is not KEY=FILE") }
        guard valueFiles.filter({ $0.hasSuffix("=-") }).count <= 1 else { throw ValidationError("standard input can give only one value") }
    }

    func run() throws {
        // Read every file before the transaction: its body may run more than once.
        let fileValues: [(String, [UInt8])] = try valueFiles.map { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let file = String(parts[1])
            guard let bytes = file == "-" ? FileIO.readAll(0) : FileIO.contents(of: file) else {
                throw CommandFailure(message: "cannot read value file '\(file)': \(String(cString: strerror(errno)))", status: ExitStatus.noPool)
            }
            return (String(parts[0]), bytes)
        }
        let pool = try poolArguments.open()
        try pool.transaction { tx in
            try conditions.check(tx)
            for pair in pairs {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                try tx.set(String(parts[0]), String(parts[1]))
            }
            for (key, bytes) in fileValues { try tx.set(key, bytes) }
        }
    }
}

struct StateDelete: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete KEYs in one transaction.")
    @OptionGroup var poolArguments: PoolArguments
    @OptionGroup var conditions: StateConditions
    @Argument var keys: [String]

    func run() throws {
        let pool = try poolArguments.open(create: false)
        try pool.transaction { tx in
            try conditions.check(tx)
            for key in keys { try tx.delete(key) }
        }
    }
}

struct StateList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List keys (with PREFIX) and their values.")
    @OptionGroup var poolArguments: PoolArguments
    @Flag(help: "Print a JSON array of {\"key\", \"value\" or \"base64\"}.") var json = false
    @Argument var prefix: String = ""

    func run() throws {
        let pool = try poolArguments.openForReading()
        let entries = try pool.transaction { tx in
            try tx.keys(prefix: prefix).map { StateEntry(key: $0, value: try tx.get($0) ?? []) }
        }
        if json { try printJSON(entries); return }
        for e in entries { print("\(e.key)=\(e.value ?? "base64:" + (e.base64 ?? ""))") }
    }
}

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Verify the whole pool (headers, tables, records, logs, free space).",
        discussion: "Exits 0 if the pool is sound, 65 with one line per problem otherwise.\n\n\(ExitStatus.summary)"
    )
    @OptionGroup var poolArguments: PoolArguments
    @Flag var json = false

    func run() throws {
        let pool = try poolArguments.openForReading()
        let report = try pool.check()
        if json {
            try printJSON(report)
        } else {
            print("check \(pool.path): \(report.locksChecked) locks, \(report.queueRecordsChecked) queue records, \(report.keysChecked) keys, \(report.blocksUsed) blocks in use (\(report.blocksReferenced) referenced)")
            for problem in report.problems { print("problem: \(problem)") }
            print(report.ok ? "ok" : "\(report.problems.count) problem(s)")
        }
        if !report.ok { throw ExitCode(ExitStatus.badPool) }
    }
}
