import Foundation
@testable import PMLLCore
import PMLL
import Testing

/// What a user can type at the `pmll` command: every odd argument gets a `pmll:` line and a
/// documented status, never a trap, never silent mangling (issue 16, "Arguments" and
/// "Messages that mislead").
@Suite("Arguments and messages", .serialized)
struct ArgumentTests {
    @Test func timeoutsOutOfRangeAreNoTrapAndNegativeOnesAreNamed() throws {
        let scratch = Scratch()
        let pool = scratch.file("t.pool")
        for huge in ["1e10", "1e300", "inf"] {
            #expect(try run(Binaries.pmll, ["lock", "--pool", pool, "--timeout", huge, "x", "--", "true"]).status == 0, "lock --timeout \(huge)")
            #expect(try run(Binaries.pmll, ["queue", "exec", "--pool", pool, "--timeout", huge, "q", "--", "true"]).status == 0, "queue exec --timeout \(huge)")
        }
        for bad in ["-1", "nan", "-0.5"] {
            let result = try run(Binaries.pmll, ["lock", "--pool", pool, "--timeout", bad, "x", "--", "true"])
            #expect(result.status == 64 && result.stderr.hasPrefix("pmll: --timeout must be 0 or more seconds"), "\(bad): \(result.stderr)")
        }
    }

    /// Bytes that are not UTF-8 would become U+FFFD: two names would be one lock, and a
    /// binary value would be stored changed. PMLL's own arguments are refused; COMMAND's
    /// arguments (file names) reach COMMAND byte for byte.
    @Test func invalidUTF8IsRefusedForNamesAndKeptForCommands() throws {
        let scratch = Scratch()
        let pool = scratch.file("u.pool")
        // Spawned through sh so that the raw bytes reach pmll's argv.
        let refused = try run("/bin/sh", ["-c", "\"$0\" lock --pool \"$1\" \"$(printf 'a\\377')\" -- true", Binaries.pmll, pool])
        #expect(refused.status == 64 && refused.stderr.hasPrefix("pmll: argument 4 is not valid UTF-8"), "\(refused.stderr)")
        let kept = try run("/bin/sh", ["-c", "\"$0\" lock --pool \"$1\" x -- sh -c 'printf %s \"$1\" | od -An -tx1' sh \"$(printf 'f\\376')\"", Binaries.pmll, pool])
        #expect(kept.status == 0 && kept.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "66 fe", "\(kept.stdout) \(kept.stderr)")
    }

    @Test func controlCharactersInNamesAreShownEscaped() throws {
        let scratch = Scratch()
        let pool = scratch.file("c.pool")
        #expect(try run(Binaries.pmll, ["lock", "--pool", pool, "evil\u{1B}[2Jname", "--", "true"]).status == 0)
        let status = try run(Binaries.pmll, ["status", "--pool", pool])
        #expect(!status.stdout.contains("\u{1B}"))
        #expect(status.stdout.contains("evil\\x1b[2Jname"))
    }

    @Test func binaryValuesComeFromFilesOrStandardInput() throws {
        let scratch = Scratch()
        let pool = scratch.file("v.pool"), file = scratch.file("value.bin")
        let bytes = (0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 0xF0) }
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", pool, "--value-file", "bin=\(file)", "text=t"]).status == 0)
        #expect(try Pool.open(path: pool).value(for: "bin") == bytes)
        let piped = try run("/bin/sh", ["-c", "printf 'x\\377y' | \"$0\" state set --pool \"$1\" --value-file b2=-", Binaries.pmll, pool])
        #expect(piped.status == 0)
        #expect(try Pool.open(path: pool).value(for: "b2") == [0x78, 0xFF, 0x79])
        let big = try run("/bin/sh", ["-c", "head -c 67108865 /dev/zero | \"$0\" state set --pool \"$1\" --value-file big=-", Binaries.pmll, pool])
        #expect(big.status == 64 && big.stderr == "pmll: value of 'big' is 67108865 bytes, over the limit of 67108864\n")
        let missing = try run(Binaries.pmll, ["state", "set", "--pool", pool, "--value-file", "m=\(scratch.file("nope"))"])
        #expect(missing.status == 66 && missing.stderr.hasPrefix("pmll: cannot read value file"))
    }

    @Test func mkdirOverAFileIsRefused() throws {
        let scratch = Scratch()
        let root = scratch.file("root")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try Data("file".utf8).write(to: URL(fileURLWithPath: root + "/f"))
        let batch = scratch.file("b.json")
        try Data(#"[{"op": "mkdir", "path": "f"}]"#.utf8).write(to: URL(fileURLWithPath: batch))
        let result = try run(Binaries.pmll, ["batch", "apply", "--pool", scratch.file("b.pool"), "--root", root, batch])
        #expect(result.status == 1 && result.stdout.contains("entry 0: invalid batch entry 0: 'f' exists and is not a directory"), "\(result.stdout)")
        let atomic = try run(Binaries.pmll, ["batch", "apply", "--atomic", "--pool", scratch.file("b.pool"), "--root", root, batch])
        #expect(atomic.status == 64 && atomic.stderr.contains("'f' exists and is not a directory"), "\(atomic.stderr)")
        #expect(try String(contentsOfFile: root + "/f", encoding: .utf8) == "file")
    }

    @Test func messagesNameTheRealCause() throws {
        let scratch = Scratch()
        let link = scratch.file("link.pool")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: scratch.file("missing-target.pool"))
        let dangling = try run(Binaries.pmll, ["state", "set", "--pool", link, "a=1"])
        #expect(dangling.status == 66 && dangling.stderr.contains("a symbolic link to '\(scratch.file("missing-target.pool"))', which does not exist"), "\(dangling.stderr)")
        #expect(SystemCall.fileError(.readOnlyFileSystem, path: "/ro/p", operation: "open")
                == .invalidPoolPath(path: "/ro/p", reason: "on a read-only file system"))
        let pool = scratch.file("big.pool")
        // 600 keys once were too many for one undo log; the log now grows with the transaction.
        let many = try run(Binaries.pmll, ["state", "set", "--pool", pool] + (0..<600).map { "k\($0)=v" })
        #expect(many.status == 0, "\(many.stderr)")
        #expect(try Pool.open(path: pool).value(for: "k599") == Array("v".utf8))
    }

    /// Random command lines from the CLI's own vocabulary and odd values (process-level
    /// fuzzing of argument parsing): every invocation ends by itself, never by a signal, and
    /// every failure says why on one `pmll:` line (or is a documented COMMAND status).
    @Test func randomCommandLinesNeverCrashAndAlwaysSayWhy() throws {
        let scratch = Scratch()
        let pool = scratch.file("a.pool"), root = scratch.file("root")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let batch = scratch.file("b.json")
        try Data(#"[{"op":"write","path":"f","data":"x"}]"#.utf8).write(to: URL(fileURLWithPath: batch))
        let subcommands: [[String]] = [["lock"], ["queue", "exec"], ["queue", "show"], ["recover"], ["state", "get"], ["state", "set"],
                                       ["state", "delete"], ["state", "list"], ["batch", "apply"], ["check"], ["status"], ["bogus"], []]
        let options = ["--pool", "--timeout", "--level", "--json", "--if", "--if-absent", "--value-file", "--root", "--atomic",
                       "--exec-handler", "--acknowledge", "--help", "-h", "--", "--bogus"]
        let values = ["x", "pkg/a", "k=v", "=v", "k=", "", "-1", "1e999", "nan", "0", "0.001", "inf", "package", "network", "bogus-level",
                      String(repeating: "n", count: 300), "ünï/🚀", "a\u{1}b", "\(batch)", "\(root)", "true", "sh", "-c", "exit 3"]
        var rng = SystemRandomNumberGenerator()
        for n in 0..<150 {
            var argv = subcommands.randomElement(using: &rng)!
            for _ in 0..<Int.random(in: 0...6, using: &rng) {
                argv.append(Bool.random(using: &rng) ? options.randomElement(using: &rng)! : values.randomElement(using: &rng)!)
            }
            if argv.first == "lock" || argv.first == "queue" { argv += ["--timeout", "2"] }
            if !argv.contains("--pool") { argv += ["--pool", pool] }
            // Everything after the first `--` is COMMAND: make it one that exists (a second
            // `--` left COMMAND as a random value, and 127 "cannot run" is its documented status).
            if let at = argv.firstIndex(of: "--") { argv = Array(argv[...at]) + ["true"] }
            // In the scratch folder: `batch apply` without --root writes below ".", and from the
            // package's folder that left a stray file in the checkout.
            let result = try run(Binaries.pmll, argv, environment: ["PMLL_POOL": pool], directory: scratch.path, timeout: 30)
            let line = "#\(n): pmll \(argv.map { $0.debugDescription }.joined(separator: " "))"
            #expect(result.status < 126, "\(line) ended with \(result.status): \(result.stderr)")
            if result.status != 0 && result.status != 1 {
                #expect(result.stderr.split(separator: "\n").contains { $0.hasPrefix("pmll: ") }, "\(line): \(result.status) without a pmll: line: \(result.stderr)")
            }
        }
    }
}
